//! scModelForge configs: the guide's examples, every error kind, overrides and round trips.

use std::path::Path;

use configs::scmodelforge::*;
use configs::{ConfigErrors, ConfigRoot, ScModelForgeConfig, Sources, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scmodelforge");

fn load(text: &str) -> Result<ScModelForgeConfig, ConfigErrors> {
    Sources::from_str(text, "test.yaml")?.load_as()
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(c) => panic!("expected errors, loaded {c:?}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).expect("fixture")
}

const MINIMAL: &str = "data:\n  paths: [a.h5ad]\n";

#[test]
fn complete_guide_example_loads_with_its_values() {
    let c = load(&fixture("complete.yaml")).unwrap();
    assert_eq!(
        c.data.paths,
        vec!["data/pbmc_10k.h5ad", "data/heart_5k.h5ad"]
    );
    assert_eq!(c.data.num_workers, 8);
    assert_eq!(c.data.preprocessing.target_sum, Some(10000.0));
    assert_eq!(c.data.preprocessing.hvg_selection, None);
    assert_eq!(c.data.census.filters, None);
    assert_eq!(c.tokenizer.embedding_path, None);
    assert_eq!(c.model.ffn_dim, Some(2048));
    assert_eq!(c.model.vocab_size, None);
    assert_eq!(c.training.precision, Precision::Bf16Mixed);
    assert_eq!(c.training.optimizer.lr, 1e-4);
    assert_eq!(c.training.num_gpus, Some(4));
    assert_eq!(c.eval.benchmarks.len(), 3);
    let f = c.finetune.expect("finetune section");
    assert_eq!(f.backbone_lr, Some(1e-5));
    assert_eq!(f.head_lr, Some(1e-3));
    assert_eq!(f.head.hidden_dim, Some(256));
    assert!(f.lora.enabled);
    assert_eq!(f.lora.bias, LoraBias::None);
}

#[test]
fn every_guide_fragment_validates_merged_over_the_complete_example() {
    let dir = Path::new(FIXTURES).join("fragments");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 15, "fragments missing: {names:?}");
    let base = fixture("complete.yaml");
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut sources = Sources::from_str(&base, "complete.yaml").unwrap();
        let name = path.display().to_string();
        sources.merge_str(&text, &name).unwrap();
        if let Err(e) = sources.load_as::<ScModelForgeConfig>() {
            panic!("{name} does not validate over the complete example:\n{e}");
        }
    }
}

#[test]
fn the_guides_workflow_configs_validate_on_their_own() {
    for name in [
        "11_complete_yaml_example.yaml",
        "12_1_minimal_config_pretraining.yaml",
        "13_2_custom_model_architecture.yaml",
        "14_3_fine_tuning_config.yaml",
        "15_4_cellxgene_census_config.yaml",
    ] {
        if let Err(e) = load(&fixture(&format!("fragments/{name}"))) {
            panic!("{name}:\n{e}");
        }
    }
}

#[test]
fn a_file_overrides_only_what_it_names() {
    let c = load("data:\n  paths: [a.h5ad]\nmodel:\n  hidden_dim: 768\n  num_heads: 12\n").unwrap();
    let d = ScModelForgeConfig::default();
    assert_eq!(c.model.hidden_dim, 768);
    assert_eq!(c.model.num_layers, d.model.num_layers);
    assert_eq!(c.training, d.training);
    assert_eq!(c.tokenizer, d.tokenizer);
    assert_eq!(c.finetune, None, "no finetune section means pretraining");
}

#[test]
fn documented_defaults() {
    let c = ScModelForgeConfig::default();
    assert_eq!(c.data.source, DataSource::Local);
    assert_eq!(c.data.gene_vocab, "human_protein_coding");
    assert_eq!(c.data.max_genes, 2048);
    assert_eq!(c.data.num_workers, 4);
    assert_eq!(c.data.preprocessing.normalize, Some(Normalize::LibrarySize));
    assert_eq!(c.data.preprocessing.target_sum, Some(1e4));
    assert!(c.data.preprocessing.log1p);
    assert_eq!(c.data.census.organism, CensusOrganism::HomoSapiens);
    assert_eq!(c.data.census.census_version, "latest");
    assert_eq!(c.tokenizer.strategy, TokenizerStrategy::RankValue);
    assert_eq!(c.tokenizer.n_bins, 51);
    assert_eq!(c.tokenizer.embedding_dim, 200);
    assert_eq!(c.tokenizer.masking.mask_ratio, 0.15);
    assert_eq!(c.tokenizer.masking.random_replace_ratio, 0.1);
    assert_eq!(c.tokenizer.masking.keep_ratio, 0.1);
    assert_eq!(c.model.architecture, Architecture::TransformerEncoder);
    assert_eq!(
        (c.model.hidden_dim, c.model.num_layers, c.model.num_heads),
        (512, 12, 8)
    );
    assert_eq!(c.model.ffn_dim(), 2048);
    assert_eq!(c.model.decoder_dim(), 256);
    assert_eq!(c.model.decoder_heads(), 8);
    assert_eq!(c.model.decoder_layers, 4);
    assert_eq!(c.model.pretraining_task, "masked_gene_prediction");
    assert_eq!(c.training.batch_size, 64);
    assert_eq!(c.training.seed, 42);
    assert_eq!(c.training.strategy, Strategy::Ddp);
    assert_eq!(c.training.precision, Precision::Bf16Mixed);
    assert_eq!(c.training.logger, Logger::Wandb);
    assert_eq!(c.training.optimizer.name, OptimizerName::AdamW);
    assert_eq!(c.training.optimizer.weight_decay, 0.01);
    let s = c.training.scheduler.as_ref().unwrap();
    assert_eq!(
        (s.name, s.warmup_steps, s.total_steps),
        (SchedulerName::CosineWarmup, 2000, 100000)
    );
    assert_eq!(c.training.gradient_clip, 1.0);
    assert_eq!(c.training.save_top_k, 3);
    assert_eq!(c.training.val_split, 0.05);
    assert_eq!(c.training.log_dir, "logs");
    assert_eq!((c.eval.every_n_epochs, c.eval.batch_size), (2, 256));
    let f = FinetuneConfig::default();
    assert_eq!(f.label_key, "cell_type");
    assert_eq!(f.head.task, HeadTask::Classification);
    assert_eq!(f.head.output_dim, 1);
    assert_eq!(f.head.dropout, 0.1);
    assert_eq!((f.lora.rank, f.lora.alpha, f.lora.dropout), (8, 16, 0.05));
    assert_eq!(
        f.lora.target_modules(),
        vec!["out_proj", "linear1", "linear2"]
    );
}

#[test]
fn scheduler_null_means_no_scheduler() {
    let c = load(&format!("{MINIMAL}training:\n  scheduler: null\n")).unwrap();
    assert_eq!(c.training.scheduler, None);
    let c = load(&format!(
        "{MINIMAL}training:\n  scheduler:\n    name: linear\n"
    ))
    .unwrap();
    let s = c.training.scheduler.unwrap();
    assert_eq!(s.name, SchedulerName::Linear);
    assert_eq!(s.warmup_steps, 2000, "unnamed fields keep their defaults");
}

#[test]
fn float_spellings_all_parse() {
    for lr in ["1e-4", "1.0e-4", "0.0001", "1E-4"] {
        let c = load(&format!("{MINIMAL}training:\n  optimizer:\n    lr: {lr}\n")).unwrap();
        assert_eq!(c.training.optimizer.lr, 1e-4, "{lr}");
    }
    // Integers are fine where floats are expected.
    let c = load(&format!("{MINIMAL}training:\n  gradient_clip: 2\n")).unwrap();
    assert_eq!(c.training.gradient_clip, 2.0);
}

#[test]
fn precision_accepts_the_bare_number() {
    let c = load(&format!("{MINIMAL}training:\n  precision: 32\n")).unwrap();
    assert_eq!(c.training.precision, Precision::Fp32);
    let c = load(&format!("{MINIMAL}training:\n  precision: \"16-mixed\"\n")).unwrap();
    assert_eq!(c.training.precision, Precision::Fp16Mixed);
}

#[test]
fn benchmarks_accept_all_three_spellings() {
    let c = load(&format!(
        "{MINIMAL}eval:\n  benchmarks:\n    - linear_probe\n    - name: embedding_quality\n      batch_key: donor\n      n_neighbors: 15\n    - name: perturbation\n      dataset: data/perturb.h5ad\n      params:\n        n_top_genes: 100\n"
    ))
    .unwrap();
    let b = &c.eval.benchmarks;
    assert_eq!(b[0].name, "linear_probe");
    assert!(b[0].params.0.is_empty());
    assert_eq!(b[1].name, "embedding_quality");
    assert_eq!(
        b[1].params.get("batch_key"),
        Some(&Value::Str("donor".into()))
    );
    assert_eq!(b[1].params.get("n_neighbors"), Some(&Value::Int(15)));
    assert_eq!(b[2].dataset.as_deref(), Some("data/perturb.h5ad"));
    assert_eq!(b[2].params.get("n_top_genes"), Some(&Value::Int(100)));

    let e = errors(&format!(
        "{MINIMAL}eval:\n  benchmarks:\n    - batch_key: donor\n"
    ));
    assert!(
        e[0].contains("eval.benchmarks[0]: a benchmark mapping needs a `name` key"),
        "{e:?}"
    );
}

#[test]
fn unknown_key_names_path_file_line_and_suggestion() {
    let e = errors("data:\n  paths: [a.h5ad]\ntraining:\n  batchsize: 32\n");
    assert_eq!(
        e,
        vec!["test.yaml:4:3: training.batchsize: unknown key; did you mean training.batch_size?"]
    );
    let e = errors("data:\n  paths: [a.h5ad]\nmodel:\n  flux_capacitor: 1\n");
    assert!(e[0].starts_with("test.yaml:4:3: model.flux_capacitor: unknown key; valid keys here: architecture, hidden_dim"), "{e:?}");
    let e = errors("data:\n  paths: [a.h5ad]\ntrainin:\n  batch_size: 32\n");
    assert_eq!(
        e,
        vec!["test.yaml:3:1: trainin: unknown key; did you mean training?"]
    );
}

#[test]
fn wrong_type_names_key_expected_type_and_value() {
    let e = errors("data:\n  paths: [a.h5ad]\ntraining:\n  batch_size: lots\n");
    assert_eq!(
        e,
        vec!["test.yaml:4:15: training.batch_size: expected a non-negative integer, got 'lots'"]
    );
    let e = errors("data:\n  paths: a.h5ad\n");
    assert_eq!(
        e,
        vec!["test.yaml:2:10: data.paths: expected a list of strings, got 'a.h5ad'"]
    );
    let e = errors("data:\n  paths: [a.h5ad]\nmodel:\n  use_expression_values: maybe\n");
    assert!(
        e[0].contains("model.use_expression_values: expected true or false, got 'maybe'"),
        "{e:?}"
    );
    let e = errors("data:\n  paths: [a.h5ad]\nmodel:\n  dropout: [0.1]\n");
    assert!(
        e[0].contains("model.dropout: expected a number, got a list"),
        "{e:?}"
    );
    let e = errors("data:\n  paths: [a.h5ad]\ntraining:\n  seed: 4.5\n");
    assert!(
        e[0].contains("training.seed: expected an integer, got '4.5'"),
        "{e:?}"
    );
    let e = errors("data: [1, 2]\n");
    assert!(
        e[0].contains("data: expected a mapping (DataConfig section), got a list"),
        "{e:?}"
    );
}

#[test]
fn every_enumeration_lists_its_allowed_values() {
    let cases = [
        ("training:\n  strategy: fsdp\n", "training.strategy", "\"ddp\", \"ddp_spawn\" or \"auto\""),
        ("tokenizer:\n  binning_method: log\n", "tokenizer.binning_method", "\"uniform\" or \"quantile\""),
        ("model:\n  architecture: gpt\n", "model.architecture", "\"transformer_encoder\", \"autoregressive_transformer\" or \"masked_autoencoder\""),
        ("model:\n  pooling: max\n", "model.pooling", "\"cls\" or \"mean\""),
        ("model:\n  activation: silu\n", "model.activation", "\"gelu\" or \"relu\""),
        ("training:\n  precision: bf16\n", "training.precision", "\"32\", \"16-mixed\" or \"bf16-mixed\""),
        ("training:\n  logger: mlflow\n", "training.logger", "\"wandb\", \"tensorboard\" or \"csv\""),
        ("training:\n  optimizer:\n    name: sgd\n", "training.optimizer.name", "\"adamw\" or \"adam\""),
        ("training:\n  scheduler:\n    name: step\n", "training.scheduler.name", "\"cosine_warmup\", \"cosine\" or \"linear\""),
        ("tokenizer:\n  strategy: bpe\n", "tokenizer.strategy", "\"rank_value\", \"binned_expression\", \"continuous_projection\" or \"gene_embedding\""),
        ("finetune:\n  checkpoint_path: x\n  head:\n    task: ranking\n", "finetune.head.task", "\"classification\" or \"regression\""),
        ("finetune:\n  checkpoint_path: x\n  lora:\n    bias: some\n", "finetune.lora.bias", "\"none\", \"all\" or \"lora_only\""),
        ("data:\n  source: s3\n", "data.source", "\"local\" or \"cellxgene_census\""),
        ("data:\n  census:\n    organism: Danio rerio\n", "data.census.organism", "\"Homo sapiens\" or \"Mus musculus\""),
        ("data:\n  preprocessing:\n    normalize: zscore\n", "data.preprocessing.normalize", "\"library_size\""),
    ];
    for (yaml, path, allowed) in cases {
        let text = format!("{MINIMAL}{yaml}").replace(
            "data:\n  paths: [a.h5ad]\ndata:\n",
            "data:\n  paths: [a.h5ad]\n",
        );
        let e = errors(&text);
        assert!(
            e.iter().any(|m| m.contains(&format!("{path}: "))
                && m.contains(&format!("expected one of {allowed}"))),
            "{path}: {e:?}"
        );
    }
    let e = errors(&format!("{MINIMAL}training:\n  precision: bf16_mixed\n"));
    assert!(e[0].contains("did you mean \"bf16-mixed\"?"), "{e:?}");
}

#[test]
fn semantic_checks_have_clear_messages() {
    let cases: &[(&str, &str)] = &[
        ("tokenizer:\n  masking:\n    mask_ratio: 1.5\n", "tokenizer.masking.mask_ratio: must be between 0 and 1, got 1.5"),
        ("tokenizer:\n  masking:\n    random_replace_ratio: 0.6\n    keep_ratio: 0.6\n", "tokenizer.masking: random_replace_ratio + keep_ratio must be at most 1"),
        ("model:\n  hidden_dim: 100\n  num_heads: 8\n", "model.hidden_dim: hidden_dim 100 is not divisible by num_heads 8"),
        ("model:\n  architecture: masked_autoencoder\n  hidden_dim: 96\n  num_heads: 4\n  decoder_dim: 48\n  decoder_heads: 5\n", "model.decoder_dim: decoder_dim 48 is not divisible by decoder_heads 5"),
        ("model:\n  num_layers: 0\n", "model.num_layers: must be at least 1, got 0"),
        ("training:\n  batch_size: 0\n", "training.batch_size: must be at least 1"),
        ("training:\n  val_split: 1.0\n", "training.val_split: must be in [0, 1), got 1"),
        ("training:\n  scheduler:\n    warmup_steps: 500\n    total_steps: 100\n", "training.scheduler.warmup_steps: warmup_steps 500 exceeds total_steps 100"),
        ("tokenizer:\n  max_genes: 4096\n", "tokenizer.max_genes: 4096 genes per cell do not fit model.max_seq_len 2048"),
        ("tokenizer:\n  strategy: gene_embedding\n", "tokenizer.embedding_path: strategy \"gene_embedding\" needs embedding_path"),
        ("training:\n  optimizer:\n    lr: -1e-3\n", "training.optimizer.lr: must be a positive number"),
    ];
    for (yaml, expected) in cases {
        let e = errors(&format!("{MINIMAL}{yaml}"));
        assert!(
            e.iter().any(|m| m.contains(expected)),
            "want {expected:?}, got {e:?}"
        );
    }
    // Semantic errors point at the line that set the offending value.
    let e = errors(&format!("{MINIMAL}model:\n  num_layers: 0\n"));
    assert!(e[0].starts_with("test.yaml:4:3: model.num_layers"), "{e:?}");
}

#[test]
fn data_source_requirements() {
    let e = errors("training:\n  max_epochs: 1\n");
    assert!(
        e[0].contains("data.paths: data.source is \"local\" but no files are listed"),
        "{e:?}"
    );
    let e = errors("data:\n  source: cellxgene_census\n");
    assert!(
        e[0].contains(
            "data.census: data.source is \"cellxgene_census\" but there is no data.census section"
        ),
        "{e:?}"
    );
    load("data:\n  source: cellxgene_census\n  census:\n    organism: Mus musculus\n").unwrap();
}

#[test]
fn all_errors_are_reported_not_only_the_first() {
    let e = errors("data:\n  paths: [a.h5ad]\n  max_gene: 10\ntraining:\n  batch_size: x\n  precision: 8\nmodel:\n  hiden_dim: 4\n");
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].contains("data.max_gene: unknown key; did you mean data.max_genes?"));
    assert!(e[1].contains("training.batch_size: expected"));
    assert!(e[2].contains("training.precision: \"8\" is not allowed"));
    assert!(e[3].contains("model.hiden_dim: unknown key; did you mean model.hidden_dim?"));
}

#[test]
fn overrides_are_typed_and_validated_like_the_file() {
    let mut s = Sources::from_str(MINIMAL, "test.yaml").unwrap();
    s.apply_override("training.optimizer.lr=3e-4").unwrap();
    s.apply_override("data.paths=[x.h5ad, y.h5ad]").unwrap();
    s.apply_override("training.scheduler=null").unwrap();
    s.apply_override("model.hidden_dim=256").unwrap();
    s.apply_override("model.hidden_dim=384").unwrap();
    let c: ScModelForgeConfig = s.load_as().unwrap();
    assert_eq!(c.training.optimizer.lr, 3e-4);
    assert_eq!(c.data.paths, vec!["x.h5ad", "y.h5ad"]);
    assert_eq!(c.training.scheduler, None);
    assert_eq!(c.model.hidden_dim, 384, "later flags win");

    let mut s = Sources::from_str(MINIMAL, "test.yaml").unwrap();
    s.apply_override("training.batch_size=big").unwrap();
    s.apply_override("training.optimizr.lr=1").unwrap();
    let e: Vec<String> = s
        .load_as::<ScModelForgeConfig>()
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(e[0], "--set training.batch_size=big: training.batch_size: expected a non-negative integer, got 'big'");
    assert_eq!(e[1], "--set training.optimizr.lr=1: training.optimizr: unknown key; did you mean training.optimizer?");

    let mut s = Sources::from_str(MINIMAL, "test.yaml").unwrap();
    let e = s
        .apply_override("training.batch_size")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected key.path=value"), "{e}");
    let e = s.apply_override("training..lr=1").unwrap_err().to_string();
    assert!(e.contains("is not a dotted key path"), "{e}");
}

#[test]
fn dump_loads_back_to_an_equal_config() {
    let configs = [
        load(&fixture("complete.yaml")).unwrap(),
        load(MINIMAL).unwrap(),
        ScModelForgeConfig {
            data: DataConfig {
                paths: vec!["weird: name.h5ad".into(), "null".into(), "32".into()],
                census: CensusConfig {
                    filters: Some(configs::Params(vec![
                        (
                            "tissue".into(),
                            Value::List(vec![Value::Str("brain".into())]),
                        ),
                        ("is_primary_data".into(), Value::Bool(true)),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            },
            training: TrainingConfig {
                run_name: Some("1e-4".into()),
                scheduler: None,
                optimizer: OptimizerConfig {
                    lr: 3e-7,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        },
    ];
    for c in configs {
        let yaml = c.to_yaml();
        let back = load(&yaml).unwrap_or_else(|e| panic!("{e}\n---\n{yaml}"));
        assert_eq!(back, c, "round trip changed the config:\n{yaml}");
    }
}

#[test]
fn programmatic_construction_with_struct_update() {
    let c = ScModelForgeConfig {
        data: DataConfig {
            paths: vec!["data/my_data.h5ad".into()],
            ..Default::default()
        },
        model: ModelConfig {
            hidden_dim: 768,
            num_layers: 16,
            num_heads: 12,
            ..Default::default()
        },
        training: TrainingConfig {
            batch_size: 128,
            max_epochs: 50,
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(c.model.ffn_dim(), 3072);
    let reloaded = load(&c.to_yaml()).unwrap();
    assert_eq!(reloaded.training.batch_size, 128);
}

#[test]
fn family_detection() {
    let s = Sources::from_str("data_config: {}\nmodel: {}\n", "mixed.yaml").unwrap();
    assert!(s
        .family()
        .unwrap_err()
        .to_string()
        .contains("mixes scModelForge sections"));
    let s = Sources::from_str("foo: 1\n", "other.yaml").unwrap();
    let e = s.family().unwrap_err().to_string();
    assert!(
        e.contains("cannot tell which kind of config this is (top-level keys: foo)"),
        "{e}"
    );
    let e = Sources::from_str("- a\n- b\n", "list.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be a mapping of sections"), "{e}");
    let s = Sources::from_str(MINIMAL, "x.yaml").unwrap();
    assert_eq!(s.family().unwrap(), configs::Family::ScModelForge);
}

#[test]
fn scmodelforge_family_name() {
    assert_eq!(<ScModelForgeConfig as ConfigRoot>::FAMILY, "scModelForge");
}

#[test]
fn finetune_checkpoint_path_may_be_left_to_the_command_line() {
    // The package's recipes leave it null for `finetune --checkpoint C`.
    for yaml in [
        "finetune:\n  checkpoint_path: null\n  label_key: cell_type\n",
        "finetune:\n  checkpoint_path: ''\n",
        "finetune:\n  label_key: cell_type\n",
    ] {
        let c = load(&format!("{MINIMAL}{yaml}")).unwrap();
        assert_eq!(
            c.finetune.expect("finetune section").checkpoint(),
            None,
            "{yaml}"
        );
    }
    let c = load(&format!(
        "{MINIMAL}finetune:\n  checkpoint_path: runs/x/checkpoints\n"
    ))
    .unwrap();
    assert_eq!(c.finetune.unwrap().checkpoint(), Some("runs/x/checkpoints"));
}
