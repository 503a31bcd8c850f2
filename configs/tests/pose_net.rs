//! The UNet plan against the parameters sleap-nn 0.3.5 builds for the same configs
//! (`scripts/sleap_nn_unet_params.py` writes `tests/fixtures/sleap_nn_0.3.5_unet/params.json`):
//! every parameter's name and shape, in order, and the total sleap-nn writes as `total_params`.

use std::path::Path;

use configs::pose_net::UNetPlan;
use configs::sleap::HeadKind;
use configs::SleapNnConfig;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn reference() -> serde_json::Value {
    let path = Path::new(FIXTURES).join("sleap_nn_0.3.5_unet/params.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The config of a case: its fixture with the script's overrides as `--set`s.
fn config_of(case: &serde_json::Value) -> SleapNnConfig {
    let file = case["config"].as_str().unwrap();
    let mut sets = Vec::new();
    for (k, v) in case["overrides"].as_object().unwrap() {
        let v = match v {
            serde_json::Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        };
        if let Some(head_key) = k.strip_prefix("head.") {
            sets.push(format!(
                "model_config.head_configs.single_instance.confmaps.{head_key}={v}"
            ));
        } else {
            sets.push(format!("model_config.backbone_config.unet.{k}={v}"));
        }
    }
    let path = Path::new(FIXTURES).join("sleap_nn_0.3.5").join(file);
    configs::load_file_as(&path, &sets).unwrap_or_else(|e| panic!("{file} {sets:?}:\n{e}"))
}

/// Confidence maps the head makes: one per part (the script names three parts where the config
/// leaves them to the labels), one for a centroid.
fn channels(cfg: &SleapNnConfig, default_parts: usize) -> usize {
    let h = &cfg.model_config.head_configs;
    let parts = match h.kinds().first() {
        Some(HeadKind::Centroid) => return 1,
        Some(HeadKind::SingleInstance) => h
            .single_instance
            .as_ref()
            .unwrap()
            .confmaps
            .part_names
            .clone(),
        Some(HeadKind::CenteredInstance) => h
            .centered_instance
            .as_ref()
            .unwrap()
            .confmaps
            .part_names
            .clone(),
        other => panic!("unexpected head {other:?}"),
    };
    parts.map_or(default_parts, |p| p.len())
}

#[test]
fn unet_parameters_match_sleap_nn() {
    let r = reference();
    let default_parts = r["part_names"].as_array().unwrap().len();
    let cases = r["cases"].as_object().unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut checked = 0;
    for (name, case) in cases {
        let cfg = config_of(case);
        let plan = UNetPlan::from_config(&cfg, channels(&cfg, default_parts));
        if let Some(e) = case.get("sleap_nn_error") {
            let err = plan.expect_err(name);
            // What does not run in sleap-nn is refused here, by its field.
            let field = ["convs_per_block", "middle_block", "stem_stride"];
            assert!(
                field.iter().any(|f| err.field.ends_with(f)),
                "{name}: {err} (sleap-nn: {e})"
            );
            continue;
        }
        let plan = plan.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<(String, Vec<usize>)> = case["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let shape = p[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize);
                (p[0].as_str().unwrap().to_string(), shape.collect())
            })
            .collect();
        assert_eq!(plan.param_shapes(), want, "{name}");
        assert_eq!(
            plan.total_params() as u64,
            case["total_params"].as_u64().unwrap(),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked >= 30, "{checked} cases compared");
}

#[test]
fn unsupported_unet_fields_are_refused_by_name() {
    let path = Path::new(FIXTURES).join("sleap_nn_0.3.5/api_single_instance_unet.yaml");
    for (set, field) in [
        (
            "model_config.backbone_config.unet.stem_stride=4",
            "unet.stem_stride",
        ),
        ("model_config.backbone_config.unet.stacks=2", "unet.stacks"),
        (
            "model_config.backbone_config.unet.middle_block=false",
            "unet.middle_block",
        ),
        (
            "model_config.backbone_config.unet.kernel_size=4",
            "unet.kernel_size",
        ),
    ] {
        let cfg: SleapNnConfig = configs::load_file_as(&path, &[set.to_string()]).unwrap();
        let err = UNetPlan::from_config(&cfg, 2).unwrap_err();
        assert!(err.field.ends_with(field), "{set}: {err}");
    }
    let convnext = Path::new(FIXTURES).join("sleap_nn_0.3.5/api_single_instance_convnext.yaml");
    let cfg: SleapNnConfig = configs::load_file_as(&convnext, &[]).unwrap();
    let err = UNetPlan::from_config(&cfg, 2).unwrap_err();
    assert_eq!(err.field, "model_config.backbone_config");
}

#[test]
fn summary_shows_each_level_and_the_total() {
    let path = Path::new(FIXTURES).join("sleap_nn_0.3.5/api_single_instance_unet.yaml");
    let cfg: SleapNnConfig = configs::load_file_as(&path, &[]).unwrap();
    let plan = UNetPlan::from_config(&cfg, 3).unwrap();
    let s = plan.summary(384, 384);
    assert!(s.contains("encoder 0"), "{s}");
    assert!(
        s.contains("162 x 24 x 24"),
        "middle block at stride 16:\n{s}"
    );
    assert!(s.contains("3 x 384 x 384"), "head at stride 1:\n{s}");
    assert!(s.contains("total parameters: 1327451"), "{s}");
}
