//! Configs written by sleap-nn 0.3.5's own config code (`scripts/sleap_nn_configs.py`
//! regenerates them into `tests/fixtures/sleap_nn_0.3.5/`) load, with sleap-nn's meaning.

use std::path::{Path, PathBuf};

use configs::sleap::*;
use configs::{ConfigErrors, SleapNnConfig, Value};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sleap_nn_0.3.5");

fn fixture_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(DIR)
        .expect("fixtures directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    v.sort();
    v
}

fn load_path(path: &Path) -> Result<SleapNnConfig, ConfigErrors> {
    configs::load_file_as(path, &[])
}

fn load_name(name: &str) -> SleapNnConfig {
    let path = Path::new(DIR).join(name);
    load_path(&path).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

/// What sleap-nn resolves from each fixture (`expected.json`; JSON is YAML, so the config
/// crate's own parser reads it).
fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(DIR).join("expected.json")).unwrap();
    let tree = configs::tree::parse(&text, 0, "expected.json").unwrap();
    // File names hold dots, so the top level is searched directly (not as a dotted key).
    match Value::of(&tree) {
        Value::Map(entries) => entries
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("expected.json has no {name}")),
        other => panic!("expected.json is not a mapping: {other:?}"),
    }
}

#[test]
fn every_config_sleap_nn_writes_loads() {
    let paths = fixture_paths();
    assert!(paths.len() >= 60, "found {} fixtures in {DIR}", paths.len());
    let mut failed = Vec::new();
    for p in &paths {
        if let Err(e) = load_path(p) {
            failed.push(format!("{}:\n{e}", p.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} sleap-nn 0.3.5 configs load; failures:\n{}",
        paths.len() - failed.len(),
        paths.len(),
        failed.join("\n")
    );
}

/// sleap-nn's `check_output_strides` on each fixture (recorded in expected.json by the script)
/// and anvil's [`SleapNnConfig::resolved`] agree on the backbone's strides; batch size,
/// epochs and seed load as sleap-nn reads them.
#[test]
fn resolved_strides_and_defaults_match_sleap_nn() {
    for p in fixture_paths() {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let want = expected(&name);
        let c = load_name(&name);
        let r = c.resolved();
        let b = r
            .backbone()
            .unwrap_or_else(|| panic!("{name}: no backbone"));
        let int = |key: &str| match want.lookup(key) {
            Some(Value::Int(i)) => Some(*i),
            Some(Value::Null) => None,
            other => panic!("{name}: expected.json {key} = {other:?}"),
        };
        assert_eq!(
            Some(b.name()),
            match want.lookup("backbone") {
                Some(Value::Str(s)) => Some(s.as_str()),
                _ => None,
            },
            "{name}"
        );
        assert_eq!(
            (b.output_stride() as i64, b.max_stride() as i64),
            (
                int("backbone_output_stride").unwrap(),
                int("backbone_max_stride").unwrap()
            ),
            "{name}: backbone (output_stride, max_stride) after resolution"
        );
        let t = &c.trainer_config;
        assert_eq!(
            (
                t.train_data_loader.batch_size as i64,
                t.max_epochs as i64,
                t.seed
            ),
            (
                int("batch_size").unwrap(),
                int("max_epochs").unwrap(),
                int("seed")
            ),
            "{name}: batch size, epochs, seed"
        );
    }
}

#[test]
fn class_defaults_are_sleap_nn_0_3_defaults() {
    let c = load_name("defaults_single_instance_unet.yaml");
    assert_eq!(c.data_config.train_labels_path, None);
    // The file writes every field at its class default; the schema's defaults with only the
    // model written give the same config.
    let d = SleapNnConfig {
        model_config: c.model_config.clone(),
        sleap_nn_version: c.sleap_nn_version.clone(),
        ..Default::default()
    };
    assert_eq!(c, d);
    let t = &c.trainer_config;
    assert_eq!(
        (t.train_data_loader.batch_size, t.max_epochs, t.seed),
        (4, 100, Some(42))
    );
    let aug = c.data_config.augmentation_config.as_ref().unwrap();
    let g = aug
        .geometric
        .as_ref()
        .expect("geometric augmentation on by default");
    assert_eq!(
        (g.rotation_min, g.rotation_max, g.rotation_p),
        (-15.0, 15.0, Some(1.0))
    );
    assert_eq!((g.scale_min, g.scale_max, g.scale_p), (0.9, 1.1, Some(1.0)));
    let i = IntensityConfig::default();
    assert_eq!((i.uniform_noise_max, i.gaussian_noise_std), (0.04, 0.02));
}

#[test]
fn newer_fields_load_with_their_values() {
    let c = load_name("sparse_null_labels.yaml");
    assert_eq!(c.data_config.train_labels_path, None);
    assert!(
        c.summary()
            .contains("training labels from the command line"),
        "{}",
        c.summary()
    );

    let c = load_name("sparse_cosine_annealing_warmup.yaml");
    let s = c.trainer_config.lr_scheduler.as_ref().unwrap();
    match s.active() {
        Some(ActiveScheduler::CosineAnnealingWarmup(w)) => {
            assert_eq!((w.warmup_epochs, w.eta_min, w.max_epochs), (3, 1e-6, None))
        }
        other => panic!("{other:?}"),
    }
    let c = load_name("sparse_linear_warmup_linear_decay.yaml");
    let s = c.trainer_config.lr_scheduler.as_ref().unwrap();
    assert!(matches!(
        s.active(),
        Some(ActiveScheduler::LinearWarmupLinearDecay(w)) if w.end_lr == 1e-7 && w.warmup_epochs == 2
    ));

    let c = load_name("sparse_eval_and_ckpt.yaml");
    let t = &c.trainer_config;
    assert!(t.eval.enabled);
    assert_eq!(t.eval.frequency, 5);
    assert_eq!(t.viz_img_format, "jpg");
    assert_eq!(
        (t.model_ckpt.monitor.as_str(), t.model_ckpt.mode),
        ("val/loss", CkptMode::Min)
    );

    let c = load_name("sparse_augment_flip_negative.yaml");
    let d = &c.data_config;
    assert!(d.use_negative_frames && !d.parallel_caching);
    assert_eq!((d.negative_loss_weight, d.cache_workers), (0.5, 2));
    let g = d
        .augmentation_config
        .as_ref()
        .unwrap()
        .geometric
        .as_ref()
        .unwrap();
    assert_eq!((g.flip_p, g.rotation_min), (0.5, -180.0));

    let c = load_name("sparse_tiling.yaml");
    let tiling = &c.data_config.preprocessing.tiling;
    assert!(tiling.enabled);
    assert_eq!(tiling.tile_size, Some(256));

    let c = load_name("sparse_centered_instance_loss_weight.yaml");
    let ci = c
        .model_config
        .head_configs
        .centered_instance
        .as_ref()
        .unwrap();
    assert_eq!(ci.confmaps.loss_weight, 2.0);

    let c = load_name("trainer_training_config_centroid.yaml");
    assert_eq!(c.model_config.total_params, Some(1953393));
    assert_eq!(
        c.trainer_config
            .wandb
            .as_ref()
            .unwrap()
            .current_run_id
            .as_deref(),
        Some("x1y2z3")
    );
    let skeletons = c.data_config.skeletons.as_ref().expect("skeletons");
    assert_eq!(
        skeletons[0].lookup("name"),
        Some(&Value::Str("Skeleton-0".into()))
    );

    let c = load_name("backbone_pretrained_centroid.yaml");
    assert_eq!(c.backbone().map(|b| b.name()), Some("pretrained"));
    for (file, kind) in [
        (
            "head_bottomup_segmentation.yaml",
            HeadKind::BottomUpSegmentation,
        ),
        (
            "head_centered_instance_segmentation.yaml",
            HeadKind::CenteredInstanceSegmentation,
        ),
        (
            "head_semantic_segmentation.yaml",
            HeadKind::SemanticSegmentation,
        ),
        ("head_embedding.yaml", HeadKind::Embedding),
        ("head_bbox_centernet.yaml", HeadKind::BBoxCenterNet),
        ("head_bbox_ssd.yaml", HeadKind::BBoxSsd),
    ] {
        assert_eq!(load_name(file).head_kind(), Some(kind), "{file}");
    }
}

#[test]
fn bad_values_in_newer_fields_are_reported_with_their_line() {
    let text = "data_config:\n  negative_loss_weight: 0\n  bbox_source: boxes\n  preprocessing:\n    tiling:\n      blend: linear\nmodel_config:\n  backbone_config:\n    unet: {}\n  head_configs:\n    single_instance: {}\ntrainer_config:\n  model_ckpt:\n    mode: lowest\n  lr_scheduler:\n    cosine_annealing_warmup:\n      eta_min: -1\n";
    let e = match configs::Sources::from_str(text, "bad.yaml")
        .unwrap()
        .load_as::<SleapNnConfig>()
    {
        Ok(c) => panic!("loaded {c:?}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    let has = |parts: &[&str]| e.iter().any(|m| parts.iter().all(|p| m.contains(p)));
    assert!(
        has(&[
            "bad.yaml:2:",
            "data_config.negative_loss_weight",
            "positive"
        ]),
        "{e:?}"
    );
    assert!(
        has(&["bad.yaml:3:", "data_config.bbox_source", "\"instances\""]),
        "{e:?}"
    );
    assert!(
        has(&["bad.yaml:6:", "tiling.blend", "\"gaussian\""]),
        "{e:?}"
    );
    assert!(
        has(&["bad.yaml:14:", "model_ckpt.mode", "\"min\""]),
        "{e:?}"
    );
    assert!(
        has(&["cosine_annealing_warmup.eta_min", "negative"]),
        "{e:?}"
    );
}

/// Configs from elsewhere (sleap-nn's `docs/sample_configs`, its test assets, a lab's saved
/// `training_config.yaml` files): with `SLEAP_NN_CONFIG_DIR=/some/dir`, every `*.yaml` there
/// must load. Without it the test says so and passes.
#[test]
fn configs_in_sleap_nn_config_dir_load() {
    let Some(dir) = std::env::var_os("SLEAP_NN_CONFIG_DIR") else {
        eprintln!("SLEAP_NN_CONFIG_DIR not set; no external sleap-nn configs checked");
        return;
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("SLEAP_NN_CONFIG_DIR")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    let mut failed = Vec::new();
    for p in &paths {
        if let Err(e) = load_path(p) {
            failed.push(format!("{}:\n{e}", p.display()));
        }
    }
    eprintln!(
        "{} of {} configs in {} load",
        paths.len() - failed.len(),
        paths.len(),
        Path::new(&dir).display()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
