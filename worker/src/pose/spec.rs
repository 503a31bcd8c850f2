//! From a sleap-nn config (and the skeleton of its labels) to what anvil builds: the network
//! plan, the sample spec, and the refusal of every field whose setting anvil cannot honour yet
//! — by its dotted name, never ignored.

use configs::pose_net::UNetPlan;
use configs::sleap::{Accelerator, HeadKind, SleapNnConfig};
use data::pose::augment::Augmenter;
use data::pose::dataset::{HeadTargets, PoseSpec};
use data::pose::frame::Preprocess;
use data::pose::targets::CentroidRule;
use data::pose::Skeleton;

/// The fields of a config anvil cannot train with, each with why (empty: it can).
pub fn unsupported(cfg: &SleapNnConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut refuse = |field: &str, why: &str| out.push(format!("{field}: {why}"));
    let d = &cfg.data_config;
    let p = &d.preprocessing;
    let t = &cfg.trainer_config;
    let m = &cfg.model_config;
    if p.tiling.enabled {
        refuse(
            "data_config.preprocessing.tiling.enabled",
            "tiled training is not available yet",
        );
    }
    if d.use_negative_frames {
        refuse(
            "data_config.use_negative_frames",
            "training on frames without instances is not available yet",
        );
    }
    if d.identity.is_some() || d.split.is_some() || d.centroids_from_masks.is_some() {
        refuse(
            "data_config.identity / split / centroids_from_masks",
            "not available yet; remove them (null)",
        );
    }
    if !matches!(p.crop_mode, configs::sleap::CropMode::Fixed) {
        refuse(
            "data_config.preprocessing.crop_mode",
            "only \"fixed\" crops are available yet",
        );
    }
    if let Some(g) = d
        .augmentation_config
        .as_ref()
        .and_then(|a| a.geometric.as_ref())
    {
        if g.erase_p > 0.0 || g.mixup_p > 0.0 {
            refuse(
                "data_config.augmentation_config.geometric.erase_p / mixup_p",
                "random erasing and mixup are not available yet; set them to 0",
            );
        }
    }
    if m.pretrained_backbone_weights.is_some() || m.pretrained_head_weights.is_some() {
        refuse(
            "model_config.pretrained_backbone_weights / pretrained_head_weights",
            "loading sleap-nn (.ckpt) or SLEAP (.h5) weights is not available yet",
        );
    }
    if !matches!(m.init_weights, configs::sleap::InitWeights::Default) {
        refuse(
            "model_config.init_weights",
            "only \"default\" (PyTorch's initialization) is available yet",
        );
    }
    if t.optimizer.amsgrad {
        refuse(
            "trainer_config.optimizer.amsgrad",
            "AMSGrad is not available yet; set false",
        );
    }
    if t.visualize_preds_during_training && !t.viz_img_format.eq_ignore_ascii_case("png") {
        refuse(
            "trainer_config.viz_img_format",
            "anvil writes its prediction pictures as \"png\" only so far",
        );
    }
    let centroid = m.head_configs.centroid.is_some();
    if t.eval.enabled && centroid {
        refuse(
            "trainer_config.eval.enabled",
            "evaluating a centroid model during training is not available yet (single_instance and centered_instance are); evaluate the top-down pair afterwards with `coordinator eval`",
        );
    }
    let monitor = t.model_ckpt.monitor.as_str();
    let known = monitor == "val/loss"
        || (t.eval.enabled
            && super::train::EVAL_METRICS
                .iter()
                .any(|(name, _)| *name == monitor));
    if !known {
        refuse(
            "trainer_config.model_ckpt.monitor",
            &format!("\"{monitor}\" is not a metric this run logs: use val/loss, or with trainer_config.eval.enabled one of {}", super::train::EVAL_METRICS.map(|(name, _)| name).join(", ")),
        );
    }
    if t.use_wandb {
        refuse("trainer_config.use_wandb", "anvil does not report to Weights & Biases; set false (metrics go to the run directory)");
    }
    if t.resume_ckpt_path.is_some() {
        refuse("trainer_config.resume_ckpt_path", "resuming from a sleap-nn .ckpt is not available; anvil resumes its own runs (coordinator launch --resume)");
    }
    if matches!(t.trainer_accelerator, Accelerator::Mps) {
        refuse(
            "trainer_config.trainer_accelerator",
            "Apple's MPS is not a backend of anvil; use \"gpu\" (CUDA), \"cpu\" or \"auto\"",
        );
    }
    if t.profiler.is_some() {
        refuse("trainer_config.profiler", "Lightning's profilers do not exist in anvil; remove it (anvil exports OpenTelemetry spans)");
    }
    out
}

/// Node indices of `part_names` in the skeleton (every node when None).
fn nodes_of(
    parts: &Option<Vec<String>>,
    skeleton: &Skeleton,
    field: &str,
) -> Result<Vec<usize>, String> {
    match parts {
        None => Ok((0..skeleton.nodes.len()).collect()),
        Some(names) => names
            .iter()
            .map(|n| {
                skeleton.nodes.iter().position(|s| s == n).ok_or_else(|| {
                    format!(
                        "{field}: '{n}' is not a node of the labels' skeleton {:?}",
                        skeleton.nodes
                    )
                })
            })
            .collect(),
    }
}

fn rule_of(
    anchor: &Option<String>,
    method: &Option<String>,
    skeleton: &Skeleton,
    field: &str,
) -> Result<CentroidRule, String> {
    match method.as_deref() {
        None | Some("anchor") | Some("center_of_mass") => {}
        Some(other) => {
            return Err(format!(
                "{field}.centroid_method: '{other}' is not available yet (anchor, center_of_mass)"
            ))
        }
    }
    match anchor {
        Some(a) if method.as_deref() != Some("center_of_mass") => skeleton
            .nodes
            .iter()
            .position(|s| s == a)
            .map(CentroidRule::Anchor)
            .ok_or_else(|| {
                format!(
                    "{field}.anchor_part: '{a}' is not a node of the labels' skeleton {:?}",
                    skeleton.nodes
                )
            }),
        _ => Ok(CentroidRule::CenterOfMass),
    }
}

/// What anvil builds for a config: the network and how its samples are made.
#[derive(Debug, Clone)]
pub struct Built {
    pub plan: UNetPlan,
    pub spec: PoseSpec,
}

/// A spec that only opens the labels (every node, no augmentation), to learn their skeleton
/// before the real spec can be made.
pub fn probe_spec(cfg: &SleapNnConfig) -> PoseSpec {
    PoseSpec {
        head: HeadTargets::SingleInstance { nodes: vec![] },
        sigma: 1.0,
        output_stride: 1,
        preprocess: Preprocess {
            ensure_rgb: false,
            ensure_grayscale: false,
            max_height: None,
            max_width: None,
            scale: 1.0,
            pad_to: 1,
        },
        augment: None,
        user_instances_only: cfg.data_config.user_instances_only,
        seed: 0,
        cache_frames: false,
    }
}

/// What to build for `cfg` on labels with `skeleton`. `auto_crop`: the centered-instance crop
/// size when the config leaves it to the labels.
pub fn build(cfg: &SleapNnConfig, skeleton: &Skeleton, auto_crop: usize) -> Result<Built, String> {
    let cfg = cfg.resolved();
    let problems = unsupported(&cfg);
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let h = &cfg.model_config.head_configs;
    let base = "model_config.head_configs";
    let (head, sigma, os) = match h.kinds().as_slice() {
        [HeadKind::SingleInstance] => {
            let c = &h.single_instance.as_ref().expect("set").confmaps;
            let nodes = nodes_of(&c.part_names, skeleton, &format!("{base}.single_instance.confmaps.part_names"))?;
            (HeadTargets::SingleInstance { nodes }, c.sigma, c.output_stride)
        }
        [HeadKind::Centroid] => {
            let c = &h.centroid.as_ref().expect("set").confmaps;
            if c.use_sigmoid_activation {
                return Err(format!("{base}.centroid.confmaps.use_sigmoid_activation: the focal-loss centroid head is not available yet; set false"));
            }
            let rule = rule_of(&c.anchor_part, &c.centroid_method, skeleton, &format!("{base}.centroid.confmaps"))?;
            (HeadTargets::Centroid { rule }, c.sigma, c.output_stride)
        }
        [HeadKind::CenteredInstance] => {
            let c = &h.centered_instance.as_ref().expect("set").confmaps;
            let f = format!("{base}.centered_instance.confmaps");
            let nodes = nodes_of(&c.part_names, skeleton, &format!("{f}.part_names"))?;
            let rule = rule_of(&c.anchor_part, &c.centroid_method, skeleton, &f)?;
            let crop = cfg.data_config.preprocessing.crop_size.unwrap_or(auto_crop);
            (HeadTargets::CenteredInstance { nodes, rule, crop }, c.sigma, c.output_stride)
        }
        other => {
            return Err(format!(
                "{base}: anvil trains single_instance, centroid and centered_instance heads so far (this config sets {})",
                other.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
    };
    let plan = UNetPlan::from_config(&cfg, head.channels()).map_err(|e| e.to_string())?;
    if let HeadTargets::CenteredInstance { crop, .. } = &head {
        if crop % plan.max_stride != 0 {
            return Err(format!(
                "data_config.preprocessing.crop_size: {crop} is not a multiple of the max stride {}",
                plan.max_stride
            ));
        }
    }
    let d = &cfg.data_config;
    let p = &d.preprocessing;
    let augment = match (&d.augmentation_config, d.use_augmentations_train) {
        (Some(a), true) => Some(Augmenter {
            intensity: a.intensity.clone(),
            geometric: a.geometric.clone(),
            symmetries: skeleton.symmetries.clone(),
        }),
        _ => None,
    };
    let spec = PoseSpec {
        head,
        sigma,
        output_stride: os,
        // The model converts what it is given to its input channels (sleap-nn's forward).
        preprocess: Preprocess {
            ensure_rgb: p.ensure_rgb || plan.in_channels == 3,
            ensure_grayscale: p.ensure_grayscale || plan.in_channels == 1,
            max_height: p.max_height,
            max_width: p.max_width,
            scale: p.scale,
            pad_to: plan.max_stride,
        },
        augment,
        user_instances_only: d.user_instances_only,
        seed: cfg.trainer_config.seed.unwrap_or(0) as u64,
        // On disk or not at all, frames are decoded from the labels each time (the embedded
        // PNG/JPEG is the disk cache); in memory they are kept once decoded.
        cache_frames: matches!(
            d.data_pipeline_fw,
            configs::sleap::DataPipelineFw::TorchDatasetCacheImgMemory
        ),
    };
    Ok(Built { plan, spec })
}
