//! The scModelForge configuration family: single-cell foundation model pretraining and
//! fine-tuning. Fields, types and defaults follow the scModelForge configuration guide.

use crate::schema::{join, map_entries, Ctx, FromNode, Params, ToValue, Value};
use crate::tree::{Node, NodeKind};
use crate::{choice, section};

choice! {
    /// Where cells come from.
    pub enum DataSource { Local = "local", CellxgeneCensus = "cellxgene_census" }
}
choice! {
    pub enum Normalize { LibrarySize = "library_size" }
}
choice! {
    pub enum CensusOrganism { HomoSapiens = "Homo sapiens", MusMusculus = "Mus musculus" }
}
choice! {
    pub enum TokenizerStrategy {
        /// Geneformer-style: genes ordered by expression.
        RankValue = "rank_value",
        /// scGPT-style: expression values in bins.
        BinnedExpression = "binned_expression",
        ContinuousProjection = "continuous_projection",
        GeneEmbedding = "gene_embedding",
    }
}
choice! {
    pub enum BinningMethod { Uniform = "uniform", Quantile = "quantile" }
}
choice! {
    pub enum Architecture {
        TransformerEncoder = "transformer_encoder",
        AutoregressiveTransformer = "autoregressive_transformer",
        MaskedAutoencoder = "masked_autoencoder",
    }
}
choice! {
    pub enum Pooling { Cls = "cls", Mean = "mean" }
}
choice! {
    pub enum Activation { Gelu = "gelu", Relu = "relu" }
}
choice! {
    pub enum Strategy { Ddp = "ddp", DdpSpawn = "ddp_spawn", Auto = "auto" }
}
choice! {
    pub enum Precision { Fp32 = "32", Fp16Mixed = "16-mixed", Bf16Mixed = "bf16-mixed" }
}
choice! {
    pub enum Logger { Wandb = "wandb", Tensorboard = "tensorboard", Csv = "csv" }
}
choice! {
    pub enum OptimizerName { AdamW = "adamw", Adam = "adam" }
}
choice! {
    pub enum SchedulerName { CosineWarmup = "cosine_warmup", Cosine = "cosine", Linear = "linear" }
}
choice! {
    pub enum HeadTask { Classification = "classification", Regression = "regression" }
}
choice! {
    pub enum LoraBias { None = "none", All = "all", LoraOnly = "lora_only" }
}

section! {
    /// The whole configuration: one section per stage of the pipeline.
    pub struct ScModelForgeConfig {
        data: DataConfig = DataConfig::default(),
        tokenizer: TokenizerConfig = TokenizerConfig::default(),
        model: ModelConfig = ModelConfig::default(),
        training: TrainingConfig = TrainingConfig::default(),
        eval: EvalConfig = EvalConfig::default(),
        /// Present for fine-tuning; absent (None) for pretraining.
        finetune: Option<FinetuneConfig> = None,
    }
}

section! {
    /// Data loading, preprocessing and splitting.
    pub struct DataConfig {
        source: DataSource = DataSource::Local,
        /// Local AnnData files (.h5ad or .zarr) that together form the dataset.
        paths: Vec<String> = Vec::new(),
        /// A vocabulary name or a path to a vocabulary file.
        gene_vocab: String = "human_protein_coding".into(),
        preprocessing: PreprocessingConfig = PreprocessingConfig::default(),
        max_genes: usize = 2048,
        num_workers: usize = 4,
        census: CensusConfig = CensusConfig::default(),
        /// Memory-mapped shards written by `coordinator shard` (or scModelForge's `shard`).
        shards: ShardConfig = ShardConfig::default(),
    }
}

section! {
    /// Read cells from a shard directory instead of `data.paths`.
    pub struct ShardConfig {
        /// Train on the shards of `shard_dir` (then `data.paths` must be empty).
        enabled: bool = false,
        /// The directory with manifest.json and shard_000/, shard_001/, ...
        shard_dir: String = String::new(),
        /// Most cells per shard that `coordinator shard` writes (unless `--shard-size` is given).
        shard_size: usize = 500_000,
    }
}

section! {
    pub struct PreprocessingConfig {
        normalize: Option<Normalize> = Some(Normalize::LibrarySize),
        target_sum: Option<f64> = Some(1e4),
        /// Number of highly variable genes to keep; None keeps all genes.
        hvg_selection: Option<usize> = None,
        log1p: bool = true,
    }
}

section! {
    /// CELLxGENE Census as a data source (`data.source: cellxgene_census`).
    pub struct CensusConfig {
        organism: CensusOrganism = CensusOrganism::HomoSapiens,
        census_version: String = "latest".into(),
        /// Raw SOMA filter; takes precedence over `filters`.
        obs_value_filter: Option<String> = None,
        var_value_filter: Option<String> = None,
        /// Structured filters such as `tissue: [brain, lung]`, turned into a SOMA filter.
        filters: Option<Params> = None,
        obs_columns: Option<Vec<String>> = None,
    }
}

section! {
    pub struct TokenizerConfig {
        strategy: TokenizerStrategy = TokenizerStrategy::RankValue,
        max_genes: usize = 2048,
        gene_vocab: String = "human_protein_coding".into(),
        prepend_cls: bool = true,
        n_bins: usize = 51,
        binning_method: BinningMethod = BinningMethod::Uniform,
        embedding_path: Option<String> = None,
        embedding_dim: usize = 200,
        masking: MaskingConfig = MaskingConfig::default(),
    }
}

section! {
    /// BERT-style masking: of the masked tokens, `random_replace_ratio` become a random gene,
    /// `keep_ratio` stay unchanged and the rest become [MASK].
    pub struct MaskingConfig {
        mask_ratio: f64 = 0.15,
        random_replace_ratio: f64 = 0.1,
        keep_ratio: f64 = 0.1,
    }
}

section! {
    pub struct ModelConfig {
        architecture: Architecture = Architecture::TransformerEncoder,
        hidden_dim: usize = 512,
        num_layers: usize = 12,
        num_heads: usize = 8,
        /// Feed-forward width; None means 4 * hidden_dim.
        ffn_dim: Option<usize> = None,
        dropout: f64 = 0.1,
        max_seq_len: usize = 2048,
        pooling: Pooling = Pooling::Cls,
        activation: Activation = Activation::Gelu,
        use_expression_values: bool = true,
        pretraining_task: String = "masked_gene_prediction".into(),
        mask_ratio: f64 = 0.15,
        /// None: the size of the gene vocabulary.
        vocab_size: Option<usize> = None,
        n_bins: usize = 51,
        gene_loss_weight: f64 = 1.0,
        expression_loss_weight: f64 = 1.0,
        /// None means hidden_dim / 2.
        decoder_dim: Option<usize> = None,
        decoder_layers: usize = 4,
        /// None means num_heads.
        decoder_heads: Option<usize> = None,
    }
}

impl ModelConfig {
    pub fn ffn_dim(&self) -> usize {
        self.ffn_dim.unwrap_or(4 * self.hidden_dim)
    }
    pub fn decoder_dim(&self) -> usize {
        self.decoder_dim.unwrap_or(self.hidden_dim / 2)
    }
    pub fn decoder_heads(&self) -> usize {
        self.decoder_heads.unwrap_or(self.num_heads)
    }
}

section! {
    pub struct TrainingConfig {
        /// Cells per worker per micro-batch (as in Lightning).
        batch_size: usize = 64,
        max_epochs: usize = 10,
        seed: i64 = 42,
        strategy: Strategy = Strategy::Ddp,
        num_gpus: Option<usize> = None,
        precision: Precision = Precision::Bf16Mixed,
        optimizer: OptimizerConfig = OptimizerConfig::default(),
        /// None: constant learning rate.
        scheduler: Option<SchedulerConfig> = Some(SchedulerConfig::default()),
        gradient_clip: f64 = 1.0,
        gradient_accumulation: usize = 1,
        /// Rank 0 writes `version_N/` in the run directory (Lightning's layout): metrics.csv and hparams.yaml always; `tensorboard` adds TensorBoard event files; `wandb` (anvil has no W&B client) writes what `tensorboard` does and says how to upload it with `wandb sync --sync-tensorboard`.
        logger: Logger = Logger::Wandb,
        /// Named in the `wandb sync` command `logger: wandb` prints; nothing is sent from anvil.
        wandb_project: String = "scmodelforge".into(),
        run_name: Option<String> = None,
        /// `worker train` without `--run-dir` puts the run in `{log_dir}/{run name}`, where scModelForge's loggers write (`coordinator launch` uses `runs/` or `--run-dir`).
        log_dir: String = "logs".into(),
        log_every_n_steps: usize = 50,
        checkpoint_dir: String = "checkpoints".into(),
        save_top_k: usize = 3,
        num_workers: usize = 4,
        val_split: f64 = 0.05,
        resume_from: Option<String> = None,
    }
}

section! {
    pub struct OptimizerConfig {
        name: OptimizerName = OptimizerName::AdamW,
        lr: f64 = 1e-4,
        /// Applied to every parameter except those whose name contains `bias`, `layer_norm`,
        /// `LayerNorm` or `layernorm` (no decay), as scModelForge groups them.
        weight_decay: f64 = 0.01,
    }
}

section! {
    pub struct SchedulerConfig {
        name: SchedulerName = SchedulerName::CosineWarmup,
        warmup_steps: usize = 2000,
        total_steps: usize = 100000,
    }
}

section! {
    pub struct EvalConfig {
        every_n_epochs: usize = 2,
        batch_size: usize = 256,
        benchmarks: Vec<BenchmarkSpec> = Vec::new(),
    }
}

/// One evaluation benchmark. Three spellings are accepted: a bare name (`- linear_probe`), a
/// flat mapping (`- name: embedding_quality` beside its parameters), and
/// `{name, dataset, params: {...}}`. All load to this one shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BenchmarkSpec {
    pub name: String,
    pub dataset: Option<String>,
    pub params: Params,
}

impl FromNode for BenchmarkSpec {
    fn expected() -> String {
        "a benchmark name or a mapping with a `name` key".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        if let NodeKind::Scalar { .. } = node.kind {
            let name = String::from_node(node, path, cx)?;
            return Some(BenchmarkSpec {
                name,
                ..Default::default()
            });
        }
        let entries = map_entries(node, path, cx, &Self::expected())?;
        let mut spec = BenchmarkSpec::default();
        let mut has_name = false;
        for (key, value) in entries {
            let child = join(path, &key.text);
            cx.wrote(&child, key.mark);
            match key.text.as_str() {
                "name" => {
                    has_name = true;
                    spec.name = String::from_node(value, &child, cx)?;
                }
                "dataset" => spec.dataset = Option::<String>::from_node(value, &child, cx)?,
                "params" => {
                    let Params(nested) = Params::from_node(value, &child, cx)?;
                    spec.params.0.extend(nested);
                }
                // Flat spelling: every other key is a parameter.
                other => {
                    let v = Value::from_node(value, &child, cx)?;
                    spec.params.0.push((other.to_string(), v));
                }
            }
        }
        if !has_name {
            cx.error_at(path, node.mark, "a benchmark mapping needs a `name` key");
            return None;
        }
        Some(spec)
    }
}

impl ToValue for BenchmarkSpec {
    fn to_value(&self) -> Value {
        let mut entries = vec![("name".to_string(), Value::Str(self.name.clone()))];
        if let Some(d) = &self.dataset {
            entries.push(("dataset".into(), Value::Str(d.clone())));
        }
        if !self.params.0.is_empty() {
            entries.push(("params".into(), self.params.to_value()));
        }
        Value::Map(entries)
    }
}

section! {
    pub struct FinetuneConfig {
        /// The pretrained checkpoint; null (or empty) when `coordinator finetune --checkpoint`
        /// names it.
        checkpoint_path: Option<String> = None,
        freeze_backbone: bool = false,
        /// Unfreeze the backbone after this many epochs (0: no gradual unfreezing).
        freeze_backbone_epochs: usize = 0,
        label_key: String = "cell_type".into(),
        head: TaskHeadConfig = TaskHeadConfig::default(),
        backbone_lr: Option<f64> = None,
        head_lr: Option<f64> = None,
        lora: LoRAConfig = LoRAConfig::default(),
    }
}

section! {
    pub struct TaskHeadConfig {
        task: HeadTask = HeadTask::Classification,
        /// None: inferred from the labels.
        n_classes: Option<usize> = None,
        output_dim: usize = 1,
        /// None: a direct projection with no hidden layer.
        hidden_dim: Option<usize> = None,
        dropout: f64 = 0.1,
    }
}

section! {
    pub struct LoRAConfig {
        enabled: bool = false,
        rank: usize = 8,
        alpha: usize = 16,
        dropout: f64 = 0.05,
        /// None: ["out_proj", "linear1", "linear2"].
        target_modules: Option<Vec<String>> = None,
        bias: LoraBias = LoraBias::None,
    }
}

impl FinetuneConfig {
    /// The pretrained checkpoint's path, when one is named (null and "" name none).
    pub fn checkpoint(&self) -> Option<&str> {
        self.checkpoint_path
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }
}

impl LoRAConfig {
    pub const DEFAULT_TARGETS: [&'static str; 3] = ["out_proj", "linear1", "linear2"];

    pub fn target_modules(&self) -> Vec<String> {
        self.target_modules.clone().unwrap_or_else(|| {
            Self::DEFAULT_TARGETS
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }
}

fn ratio(cx: &mut Ctx, path: &str, v: f64) {
    cx.check((0.0..=1.0).contains(&v), path, || {
        format!("must be between 0 and 1, got {v}")
    });
}

fn positive(cx: &mut Ctx, path: &str, v: usize) {
    cx.check(v > 0, path, || "must be at least 1, got 0".to_string());
}

fn positive_f(cx: &mut Ctx, path: &str, v: f64) {
    cx.check(v > 0.0 && v.is_finite(), path, || {
        format!("must be a positive number, got {v}")
    });
}

impl ScModelForgeConfig {
    /// Checks that go beyond types: ranges, divisibility and fields that depend on each other.
    pub fn validate(&self, cx: &mut Ctx) {
        let (d, t, m, tr) = (&self.data, &self.tokenizer, &self.model, &self.training);

        // data
        match d.source {
            DataSource::Local if d.shards.enabled => {
                cx.check(
                    !d.shards.shard_dir.is_empty(),
                    "data.shards.shard_dir",
                    || {
                        "data.shards.enabled is true but no shard_dir is given (the directory \
                     `coordinator shard --output-dir` wrote)"
                            .to_string()
                    },
                );
                cx.check(d.paths.is_empty(), "data.paths", || {
                    "data.shards.enabled is true: the cells come from data.shards.shard_dir, so \
                     data.paths must be empty (or set data.shards.enabled: false)"
                        .to_string()
                });
            }
            DataSource::Local => cx.check(!d.paths.is_empty(), "data.paths", || {
                "data.source is \"local\" but no files are listed; add .h5ad or .zarr paths"
                    .to_string()
            }),
            DataSource::CellxgeneCensus => {
                cx.check(cx.was_written("data.census"), "data.census", || {
                    "data.source is \"cellxgene_census\" but there is no data.census section \
                     (organism, census_version, filters)"
                        .to_string()
                })
            }
        }
        positive(cx, "data.max_genes", d.max_genes);
        positive(cx, "data.shards.shard_size", d.shards.shard_size);
        if let Some(ts) = d.preprocessing.target_sum {
            positive_f(cx, "data.preprocessing.target_sum", ts);
        }
        if d.preprocessing.normalize.is_some() {
            cx.check(
                d.preprocessing.target_sum.is_some(),
                "data.preprocessing.target_sum",
                || "library_size normalization needs a target_sum".to_string(),
            );
        }
        if let Some(n) = d.preprocessing.hvg_selection {
            positive(cx, "data.preprocessing.hvg_selection", n);
        }

        // tokenizer
        positive(cx, "tokenizer.max_genes", t.max_genes);
        cx.check(t.n_bins >= 2, "tokenizer.n_bins", || {
            format!(
                "must be at least 2 (zero has its own bin), got {}",
                t.n_bins
            )
        });
        positive(cx, "tokenizer.embedding_dim", t.embedding_dim);
        if t.strategy == TokenizerStrategy::GeneEmbedding {
            cx.check(
                t.embedding_path.as_deref().is_some_and(|p| !p.is_empty()),
                "tokenizer.embedding_path",
                || {
                    "strategy \"gene_embedding\" needs embedding_path (a .npy or .safetensors \
                     file of gene vectors)"
                        .to_string()
                },
            );
        }
        let mk = &t.masking;
        ratio(cx, "tokenizer.masking.mask_ratio", mk.mask_ratio);
        ratio(
            cx,
            "tokenizer.masking.random_replace_ratio",
            mk.random_replace_ratio,
        );
        ratio(cx, "tokenizer.masking.keep_ratio", mk.keep_ratio);
        cx.check(
            mk.random_replace_ratio + mk.keep_ratio <= 1.0 + 1e-12,
            "tokenizer.masking",
            || {
                format!(
                    "random_replace_ratio + keep_ratio must be at most 1, got {} + {} = {}",
                    mk.random_replace_ratio,
                    mk.keep_ratio,
                    mk.random_replace_ratio + mk.keep_ratio
                )
            },
        );

        // model
        positive(cx, "model.hidden_dim", m.hidden_dim);
        positive(cx, "model.num_layers", m.num_layers);
        positive(cx, "model.num_heads", m.num_heads);
        positive(cx, "model.max_seq_len", m.max_seq_len);
        if let Some(f) = m.ffn_dim {
            positive(cx, "model.ffn_dim", f);
        }
        if let Some(v) = m.vocab_size {
            cx.check(v > 4, "model.vocab_size", || {
                format!("must exceed the 4 special tokens (pad, unk, mask, cls), got {v}")
            });
        }
        if m.num_heads > 0 {
            cx.check(m.hidden_dim % m.num_heads == 0, "model.hidden_dim", || {
                format!(
                    "hidden_dim {} is not divisible by num_heads {}",
                    m.hidden_dim, m.num_heads
                )
            });
        }
        ratio(cx, "model.dropout", m.dropout);
        ratio(cx, "model.mask_ratio", m.mask_ratio);
        cx.check(m.n_bins >= 2, "model.n_bins", || {
            format!("must be at least 2, got {}", m.n_bins)
        });
        cx.check(m.gene_loss_weight >= 0.0, "model.gene_loss_weight", || {
            "must not be negative".to_string()
        });
        cx.check(
            m.expression_loss_weight >= 0.0,
            "model.expression_loss_weight",
            || "must not be negative".to_string(),
        );
        if m.architecture == Architecture::MaskedAutoencoder {
            let (dd, dh) = (m.decoder_dim(), m.decoder_heads());
            positive(cx, "model.decoder_dim", dd);
            positive(cx, "model.decoder_heads", dh);
            positive(cx, "model.decoder_layers", m.decoder_layers);
            if dh > 0 {
                cx.check(dd % dh == 0, "model.decoder_dim", || {
                    format!("decoder_dim {dd} is not divisible by decoder_heads {dh}")
                });
            }
        }
        for (path, genes) in [
            ("tokenizer.max_genes", t.max_genes),
            ("data.max_genes", d.max_genes),
        ] {
            cx.check(genes <= m.max_seq_len, path, || {
                format!(
                    "{genes} genes per cell do not fit model.max_seq_len {}",
                    m.max_seq_len
                )
            });
        }

        // training
        positive(cx, "training.batch_size", tr.batch_size);
        positive(cx, "training.max_epochs", tr.max_epochs);
        positive(
            cx,
            "training.gradient_accumulation",
            tr.gradient_accumulation,
        );
        positive(cx, "training.log_every_n_steps", tr.log_every_n_steps);
        if let Some(g) = tr.num_gpus {
            positive(cx, "training.num_gpus", g);
        }
        positive_f(cx, "training.optimizer.lr", tr.optimizer.lr);
        cx.check(
            tr.optimizer.weight_decay >= 0.0,
            "training.optimizer.weight_decay",
            || "must not be negative".to_string(),
        );
        cx.check(tr.gradient_clip >= 0.0, "training.gradient_clip", || {
            "must not be negative (0 disables clipping)".to_string()
        });
        cx.check(
            (0.0..1.0).contains(&tr.val_split),
            "training.val_split",
            || format!("must be in [0, 1), got {}", tr.val_split),
        );
        if let Some(s) = &tr.scheduler {
            positive(cx, "training.scheduler.total_steps", s.total_steps);
            cx.check(
                s.warmup_steps <= s.total_steps,
                "training.scheduler.warmup_steps",
                || {
                    format!(
                        "warmup_steps {} exceeds total_steps {}",
                        s.warmup_steps, s.total_steps
                    )
                },
            );
        }

        // eval
        positive(cx, "eval.every_n_epochs", self.eval.every_n_epochs);
        positive(cx, "eval.batch_size", self.eval.batch_size);
        for (i, b) in self.eval.benchmarks.iter().enumerate() {
            cx.check(!b.name.is_empty(), &format!("eval.benchmarks[{i}]"), || {
                "benchmark name is empty".to_string()
            });
        }

        // finetune
        if let Some(f) = &self.finetune {
            cx.check(!f.label_key.is_empty(), "finetune.label_key", || {
                "must name an obs column".to_string()
            });
            ratio(cx, "finetune.head.dropout", f.head.dropout);
            if let Some(n) = f.head.n_classes {
                cx.check(n >= 2, "finetune.head.n_classes", || {
                    format!("classification needs at least 2 classes, got {n}")
                });
            }
            positive(cx, "finetune.head.output_dim", f.head.output_dim);
            if let Some(h) = f.head.hidden_dim {
                positive(cx, "finetune.head.hidden_dim", h);
            }
            for (path, lr) in [
                ("finetune.backbone_lr", f.backbone_lr),
                ("finetune.head_lr", f.head_lr),
            ] {
                if let Some(lr) = lr {
                    positive_f(cx, path, lr);
                }
            }
            positive(cx, "finetune.lora.rank", f.lora.rank);
            positive(cx, "finetune.lora.alpha", f.lora.alpha);
            ratio(cx, "finetune.lora.dropout", f.lora.dropout);
            if let Some(targets) = &f.lora.target_modules {
                cx.check(!targets.is_empty(), "finetune.lora.target_modules", || {
                    "an empty list adapts nothing; use null for the defaults \
                     (out_proj, linear1, linear2)"
                        .to_string()
                });
            }
        }
    }
}
