//! sleap-nn configs: the guide's sample and every fragment, defaults, two-shape fields, every
//! error kind, round trips, and the shipped examples.

use std::path::Path;

use configs::sleap::*;
use configs::{ConfigErrors, ConfigRoot, SleapNnConfig, Sources};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sleap");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).expect("fixture")
}

fn load(text: &str) -> Result<SleapNnConfig, ConfigErrors> {
    Sources::from_str(text, "test.yaml")?.load_as()
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(c) => panic!("expected errors, loaded {c:?}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// Loads the guide's complete sample with `fragment` merged over it.
fn over_complete(fragment: &str) -> Result<SleapNnConfig, ConfigErrors> {
    let mut s = Sources::from_str(&fixture("complete.yaml"), "complete.yaml")?;
    s.merge_str(fragment, "override.yaml")?;
    s.load_as()
}

fn errors_over_complete(fragment: &str) -> Vec<String> {
    match over_complete(fragment) {
        Ok(c) => panic!("expected errors, loaded {c:?}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn has(errs: &[String], parts: &[&str]) -> bool {
    errs.iter().any(|e| parts.iter().all(|p| e.contains(p)))
}

/// The smallest valid config: one file, one backbone, one head.
const MINIMAL: &str = "\
data_config:
  train_labels_path: [a.slp]
model_config:
  backbone_config:
    unet: {}
  head_configs:
    single_instance: {}
";

#[test]
fn complete_sample_loads_with_its_values() {
    let c = load(&fixture("complete.yaml")).unwrap();
    let d = &c.data_config;
    assert_eq!(
        d.train_labels_path,
        Some(vec!["path/to/your/training_data.slp".to_string()])
    );
    assert_eq!(
        d.val_labels_path,
        Some(vec!["path/to/your/validation_data.slp".to_string()])
    );
    assert_eq!(d.validation_fraction, 0.1);
    assert_eq!(d.provider, Provider::LabelsReader);
    assert_eq!(d.data_pipeline_fw, DataPipelineFw::TorchDataset);
    assert_eq!(d.preprocessing.crop_size, None);
    assert_eq!(d.preprocessing.min_crop_size, Some(100));
    let aug = d.augmentation_config.as_ref().expect("augmentation_config");
    let g = aug.geometric.as_ref().expect("geometric");
    assert_eq!(
        (g.rotation_min, g.rotation_max, g.affine_p),
        (-15.0, 15.0, 1.0)
    );
    // Unwritten keys of a written section take their defaults.
    assert_eq!(g.erase_scale_max, 0.01);
    assert_eq!(aug.intensity.as_ref().unwrap().contrast_min, 0.9);

    let m = &c.model_config;
    assert_eq!(m.init_weights, InitWeights::Default);
    let u = m.backbone_config.unet.as_ref().expect("unet");
    assert_eq!(
        (u.filters, u.filters_rate, u.max_stride, u.output_stride),
        (16, 2.0, 16, 2)
    );
    assert_eq!(u.stem_stride, None);
    assert_eq!(c.head_kind(), Some(HeadKind::SingleInstance));
    assert_eq!(c.backbone().map(|b| b.name()), Some("unet"));
    let si = m.head_configs.single_instance.as_ref().unwrap();
    assert_eq!((si.confmaps.sigma, si.confmaps.output_stride), (2.5, 2));

    let t = &c.trainer_config;
    assert_eq!(t.train_data_loader.batch_size, 4);
    assert!(!t.val_data_loader.shuffle);
    assert_eq!(t.model_ckpt.save_last, Some(false));
    assert_eq!(t.trainer_devices, None);
    assert_eq!(t.trainer_device_indices, None);
    assert_eq!(t.trainer_accelerator, Accelerator::Auto);
    assert_eq!(t.seed, None, "`seed:` with nothing after it is null");
    assert_eq!(t.max_epochs, 200);
    assert_eq!(t.ckpt_dir.as_deref(), Some("<ckpt_dir>"));
    assert_eq!(t.optimizer_name, OptimizerName::Adam);
    assert_eq!(t.optimizer.lr, 1e-4);
    let s = t.lr_scheduler.as_ref().unwrap();
    assert_eq!(s.step_lr, None);
    let r = s.reduce_lr_on_plateau.as_ref().unwrap();
    assert_eq!(r.threshold_mode, ThresholdMode::Abs);
    assert_eq!(r.min_lr, MinLr::All(1e-8));
    assert_eq!(t.early_stopping.as_ref().unwrap().patience, 10);
    let z = t.zmq.as_ref().unwrap();
    assert_eq!((z.publish_port, z.controller_port), (None, None));
    assert_eq!(z.controller_polling_timeout, 10);

    assert_eq!(c.name.as_deref(), Some("your_experiment_name"));
    assert_eq!(c.sleap_nn_version.as_deref(), Some("0.0.1"));
    assert_eq!(c.filename.as_deref(), Some(""));
}

#[test]
fn summary_describes_the_model_in_one_line() {
    let c = load(&fixture("complete.yaml")).unwrap();
    assert_eq!(
        c.summary(),
        "single_instance head on unet backbone (filters 16, max stride 16), 1 training file, \
         batch 4 x 200 epochs"
    );
    let c = over_complete(&fixture("fragments/14_convnext.yaml")).unwrap();
    assert!(
        c.summary()
            .contains("convnext backbone (tiny, max stride 32)"),
        "{}",
        c.summary()
    );
}

/// Base for the fragments: the guide's complete sample with the UNet's output_stride lowered
/// from 2 to 1. The guide's head examples use output_stride 1, which a head can only have on a
/// backbone whose output_stride is 1; the sample's single_instance head (stride 2) and the
/// multi-class top-down class vectors (stride 16 = the UNet's max_stride) stay consistent.
fn fragment_base() -> String {
    let complete = fixture("complete.yaml");
    let from = "      output_stride: 2\n    convnext: null";
    assert!(complete.contains(from));
    complete.replace(from, "      output_stride: 1\n    convnext: null")
}

fn fragments() -> Vec<(String, String)> {
    let dir = Path::new(FIXTURES).join("fragments");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn load_fragment(name: &str) -> SleapNnConfig {
    let (_, text) = fragments()
        .into_iter()
        .find(|(n, _)| n.starts_with(name))
        .expect("fragment");
    let mut s = Sources::from_str(&fragment_base(), "base.yaml").unwrap();
    s.merge_str(&text, name).unwrap();
    s.load_as().unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

#[test]
fn every_guide_fragment_validates_merged_over_a_complete_config() {
    let all = fragments();
    // Every ```yaml block of the guide, the sample included.
    assert_eq!(
        all.len(),
        29,
        "{:?}",
        all.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let base = fragment_base();
    let mut failures = Vec::new();
    for (name, text) in &all {
        let mut s = Sources::from_str(&base, "base.yaml").unwrap();
        if let Err(e) = s.merge_str(text, name) {
            failures.push(format!("{name} does not parse:\n{e}"));
            continue;
        }
        if let Err(e) = s.load_as::<SleapNnConfig>() {
            failures.push(format!("{name}:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn fragments_mean_what_the_guide_says() {
    let c = load_fragment("03_");
    assert_eq!(c.data_config.train_labels_path.map(|v| v.len()), Some(3));

    let c = load_fragment("07_");
    let p = &c.data_config.preprocessing;
    assert_eq!((p.max_height, p.max_width), (Some(512), Some(512)));

    let c = load_fragment("09_");
    let aug = c.data_config.augmentation_config.unwrap();
    assert!(aug.geometric.is_none());
    let i = aug.intensity.unwrap();
    assert_eq!((i.contrast_p, i.gaussian_noise_std), (0.3, 0.1));

    let c = load_fragment("12_");
    let g = c
        .data_config
        .augmentation_config
        .unwrap()
        .geometric
        .unwrap();
    assert_eq!(
        (g.rotation_p, g.scale_p, g.translate_p),
        (Some(0.5), Some(0.3), Some(0.2))
    );

    let c = load_fragment("14_");
    let Some(Backbone::ConvNext(cn)) = c.backbone() else {
        panic!("convnext expected")
    };
    assert_eq!(cn.pre_trained_weights, Some(ConvNextWeights::Tiny));
    assert_eq!(cn.resolved_arch().depths, vec![3, 3, 9, 3]);

    let c = load_fragment("15_");
    let Some(Backbone::SwinT(sw)) = c.backbone() else {
        panic!("swint expected")
    };
    assert_eq!(sw.pre_trained_weights, Some(SwinTWeights::T));
    assert_eq!(sw.window_size, 7);

    for (name, kind) in [
        ("16_", HeadKind::SingleInstance),
        ("17_", HeadKind::Centroid),
        ("18_", HeadKind::CenteredInstance),
        ("19_", HeadKind::BottomUp),
        ("20_", HeadKind::MultiClassBottomUp),
        ("21_", HeadKind::MultiClassTopDown),
    ] {
        assert_eq!(load_fragment(name).head_kind(), Some(kind), "{name}");
    }
    let c = load_fragment("19_");
    let b = c.model_config.head_configs.bottomup.unwrap();
    assert_eq!(
        (b.pafs.edges, b.pafs.sigma, b.pafs.loss_weight),
        (None, 15.0, Some(1.0))
    );

    let c = load_fragment("23_");
    let s = c.trainer_config.lr_scheduler.unwrap();
    assert_eq!((s.step_lr, s.reduce_lr_on_plateau), (None, None));
    let c = load_fragment("24_");
    let s = c.trainer_config.lr_scheduler.unwrap();
    assert_eq!(s.step_lr.map(|s| (s.step_size, s.gamma)), Some((20, 0.5)));
    assert_eq!(s.reduce_lr_on_plateau, None);

    let c = load_fragment("27_");
    let w = c.trainer_config.wandb.unwrap();
    assert!(c.trainer_config.use_wandb);
    assert_eq!(w.prv_runid.as_deref(), Some("abc123def456"));
    assert_eq!(w.wandb_mode.as_deref(), Some("online"));
    let c = load_fragment("28_");
    assert_eq!(
        c.trainer_config.wandb.unwrap().delete_local_logs,
        Some(false)
    );
}

#[test]
/// sleap-nn 0.3.5's class defaults (where they differ from the early guide, the release wins:
/// batch 4, 100 epochs, seed 42, geometric augmentation on, noise on a 0-1 scale).
fn defaults_follow_sleap_nn_0_3() {
    let c = SleapNnConfig::default();
    let d = &c.data_config;
    assert_eq!(d.provider, Provider::LabelsReader);
    assert_eq!(d.train_labels_path, None);
    assert_eq!(d.val_labels_path, None);
    assert_eq!(d.validation_fraction, 0.1);
    assert_eq!(d.test_file_path, None);
    assert!(d.user_instances_only && !d.use_same_data_for_val);
    assert_eq!(d.cache_img_path, None);
    assert!(!d.use_existing_imgs && d.delete_cache_imgs_after_training);
    assert!(d.use_augmentations_train);
    let aug = d.augmentation_config.clone().unwrap();
    assert_eq!(aug.intensity, None);
    assert_eq!(aug.geometric, Some(GeometricConfig::default()));
    assert!(d.parallel_caching && !d.use_negative_frames);
    assert_eq!((d.cache_workers, d.negative_loss_weight), (0, 1.0));
    assert_eq!(
        (d.skeletons.clone(), d.identity.clone(), d.split.clone()),
        (None, None, None)
    );
    assert_eq!((d.bbox_source, d.bbox_padding), (BboxSource::Auto, 0.0));
    assert!(!d.preprocessing.tiling.enabled);
    let p = &d.preprocessing;
    assert!(!p.ensure_rgb && !p.ensure_grayscale);
    assert_eq!(
        (p.max_height, p.max_width, p.crop_size, p.crop_padding),
        (None, None, None, None)
    );
    assert_eq!((p.scale, p.min_crop_size), (1.0, Some(100)));
    let i = IntensityConfig::default();
    assert_eq!(
        (i.uniform_noise_min, i.uniform_noise_max, i.uniform_noise_p),
        (0.0, 0.04, 0.0)
    );
    assert_eq!((i.gaussian_noise_mean, i.gaussian_noise_std), (0.0, 0.02));
    assert_eq!((i.contrast_min, i.contrast_max), (0.9, 1.1));
    assert_eq!(
        (i.brightness_min, i.brightness_max, i.brightness_p),
        (0.9, 1.1, 0.0)
    );
    let g = GeometricConfig::default();
    assert_eq!(
        (g.rotation_min, g.rotation_max, g.scale_min, g.scale_max),
        (-15.0, 15.0, 0.9, 1.1)
    );
    assert_eq!(
        (g.translate_width, g.translate_height, g.affine_p),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(
        (g.rotation_p, g.scale_p, g.translate_p, g.flip_p),
        (Some(1.0), Some(1.0), None, 0.0)
    );
    assert_eq!((g.erase_scale_min, g.erase_scale_max), (0.0001, 0.01));
    assert_eq!(
        (g.erase_ratio_min, g.erase_ratio_max, g.erase_p),
        (1.0, 1.0, 0.0)
    );
    assert_eq!(
        (g.mixup_lambda_min, g.mixup_lambda_max, g.mixup_p),
        (0.01, 0.05, 0.0)
    );

    let m = &c.model_config;
    assert_eq!(m.init_weights, InitWeights::Default);
    assert_eq!(m.backbone_config, BackboneConfig::default());
    assert!(m.backbone_config.all().is_empty() && m.head_configs.kinds().is_empty());
    let u = UNetConfig::default();
    assert_eq!(
        (u.in_channels, u.kernel_size, u.filters, u.filters_rate),
        (1, 3, 32, 1.5)
    );
    assert_eq!(
        (u.max_stride, u.stacks, u.convs_per_block, u.output_stride),
        (16, 1, 2, 1)
    );
    assert!(u.middle_block && u.up_interpolate);
    let cn = ConvNextConfig::default();
    assert_eq!(
        (cn.model_type, cn.max_stride, cn.stem_patch_kernel),
        (ConvNextModelType::Tiny, 32, 4)
    );
    assert_eq!(
        (cn.stem_patch_stride, cn.filters_rate, cn.output_stride),
        (2, 2.0, 1)
    );
    assert_eq!((cn.arch.clone(), cn.pre_trained_weights), (None, None));
    let sw = SwinTConfig::default();
    assert_eq!(
        (sw.model_type, sw.max_stride, sw.patch_size),
        (SwinTModelType::Tiny, 32, 4)
    );
    assert_eq!(
        (sw.stem_patch_stride, sw.window_size, sw.output_stride),
        (2, 7, 1)
    );
    assert_eq!(SingleInstanceConfMaps::default().sigma, 5.0);
    assert_eq!(PafConfig::default().sigma, 15.0);
    let cv = ClassVectorsConfig::default();
    assert_eq!(
        (
            cv.num_fc_layers,
            cv.num_fc_units,
            cv.global_pool,
            cv.output_stride
        ),
        (1, 64, true, 1)
    );
    assert_eq!(cv.loss_weight, Some(1.0));
    assert_eq!(CenteredInstanceConfMaps::default().loss_weight, 1.0);

    let t = &c.trainer_config;
    assert_eq!(
        (t.train_data_loader.batch_size, t.train_data_loader.shuffle),
        (4, true)
    );
    assert_eq!(
        (t.val_data_loader.batch_size, t.val_data_loader.shuffle),
        (4, false)
    );
    assert_eq!((t.model_ckpt.save_top_k, t.model_ckpt.save_last), (1, None));
    assert_eq!(
        (t.model_ckpt.monitor.as_str(), t.model_ckpt.mode),
        ("val/loss", CkptMode::Min)
    );
    assert_eq!(t.viz_img_format, "png");
    assert!(!t.eval.enabled);
    assert_eq!((t.trainer_devices, t.profiler), (None, None));
    assert_eq!(t.trainer_strategy, "auto");
    assert_eq!(
        (t.min_train_steps_per_epoch, t.train_steps_per_epoch),
        (200, None)
    );
    assert!(!t.visualize_preds_during_training && !t.keep_viz);
    assert_eq!((t.max_epochs, t.seed), (100, Some(42)));
    assert!(!t.use_wandb && !t.save_ckpt);
    assert_eq!(
        (t.ckpt_dir.as_deref(), t.run_name.clone()),
        (Some("."), None)
    );
    assert_eq!((t.optimizer.lr, t.optimizer.amsgrad), (1e-4, false));
    let r = t
        .lr_scheduler
        .as_ref()
        .unwrap()
        .reduce_lr_on_plateau
        .clone()
        .unwrap();
    assert_eq!(
        (r.threshold, r.threshold_mode, r.cooldown, r.patience),
        (1e-6, ThresholdMode::Abs, 3, 5)
    );
    assert_eq!((r.factor, r.min_lr), (0.5, MinLr::All(1e-8)));
    let s = StepLrConfig::default();
    assert_eq!((s.step_size, s.gamma), (10, 0.1));
    let e = t.early_stopping.clone().unwrap();
    assert_eq!(
        (e.stop_training_on_plateau, e.min_delta, e.patience),
        (true, 1e-8, 10)
    );
    let o = t.online_hard_keypoint_mining.clone().unwrap();
    assert_eq!(
        (o.online_mining, o.hard_to_easy_ratio, o.min_hard_keypoints),
        (false, 2.0, 2)
    );
    assert_eq!((o.max_hard_keypoints, o.loss_scale), (None, 5.0));
    assert_eq!(t.wandb, Some(WandbConfig::default()));
    assert_eq!(t.zmq.as_ref().unwrap().controller_polling_timeout, 10);
}

#[test]
fn partially_written_sections_keep_their_own_defaults() {
    let c = load(&format!(
        "{MINIMAL}trainer_config:\n  val_data_loader:\n    batch_size: 8\n  lr_scheduler:\n    step_lr:\n      step_size: 5\n"
    ))
    .unwrap();
    assert!(
        !c.trainer_config.val_data_loader.shuffle,
        "val loader stays unshuffled"
    );
    let s = c.trainer_config.lr_scheduler.unwrap();
    assert_eq!(
        s.step_lr.as_ref().map(|s| (s.step_size, s.gamma)),
        Some((5, 0.1))
    );
    // As in sleap-nn, which merges a file over its defaults: reduce-on-plateau stays set, and
    // step_lr runs because it comes first.
    assert_eq!(
        s.reduce_lr_on_plateau,
        Some(ReduceLrOnPlateauConfig::default())
    );
    assert!(matches!(s.active(), Some(ActiveScheduler::StepLr(_))));
}

#[test]
fn presets_resolve_and_an_explicit_arch_wins() {
    let cases = [
        (ConvNextModelType::Tiny, [3, 3, 9, 3], [96, 192, 384, 768]),
        (ConvNextModelType::Small, [3, 3, 27, 3], [96, 192, 384, 768]),
        (
            ConvNextModelType::Base,
            [3, 3, 27, 3],
            [128, 256, 512, 1024],
        ),
        (
            ConvNextModelType::Large,
            [3, 3, 27, 3],
            [192, 384, 768, 1536],
        ),
    ];
    for (mt, depths, channels) in cases {
        let c = ConvNextConfig {
            model_type: mt,
            ..Default::default()
        };
        assert_eq!(c.resolved_arch().depths, depths);
        assert_eq!(c.resolved_arch().channels, channels);
    }
    let cases = [
        (SwinTModelType::Tiny, 96, [2, 2, 6, 2], [3, 6, 12, 24]),
        (SwinTModelType::Small, 96, [2, 2, 18, 2], [3, 6, 12, 24]),
        (SwinTModelType::Base, 128, [2, 2, 18, 2], [4, 8, 16, 32]),
    ];
    for (mt, embed, depths, heads) in cases {
        let c = SwinTConfig {
            model_type: mt,
            ..Default::default()
        };
        let a = c.resolved_arch();
        assert_eq!(
            (a.embed, a.depths, a.num_heads),
            (embed, depths.to_vec(), heads.to_vec())
        );
    }

    let c = over_complete(
        "model_config:\n  backbone_config:\n    unet: null\n    convnext:\n      model_type: large\n      arch:\n        depths: [2, 2, 2, 2]\n        channels: [32, 64, 128, 256]\n",
    )
    .unwrap();
    let cn = c.model_config.backbone_config.convnext.unwrap();
    assert_eq!(cn.resolved_arch().depths, vec![2, 2, 2, 2]);
    assert_eq!(cn.resolved_arch().channels, vec![32, 64, 128, 256]);

    // The guide's spelling of the Swin heads key, and sleap-nn's model-code spelling.
    for key in ["channels", "num_heads"] {
        let c = over_complete(&format!(
            "model_config:\n  backbone_config:\n    unet: null\n    swint:\n      arch: {{embed: 64, depths: [2, 2, 2, 2], {key}: [2, 4, 8, 16]}}\n"
        ))
        .unwrap();
        let a = c
            .model_config
            .backbone_config
            .swint
            .unwrap()
            .resolved_arch();
        assert_eq!((a.embed, a.num_heads), (64, vec![2, 4, 8, 16]), "{key}");
    }
    let e = errors_over_complete(
        "model_config:\n  backbone_config:\n    unet: null\n    swint:\n      arch: {embed: 64, channels: [2, 4, 8, 16], num_heads: [2, 4, 8, 16]}\n",
    );
    assert!(has(&e, &["num_heads", "write one of them"]), "{e:?}");
}

#[test]
fn arch_layouts_are_checked() {
    let e = errors_over_complete(
        "model_config:\n  backbone_config:\n    unet: null\n    convnext:\n      arch: {depths: [3, 3], channels: [96, 192, 384]}\n",
    );
    assert!(
        has(
            &e,
            &["convnext.arch.channels", "has 3 entries but depths has 2"]
        ),
        "{e:?}"
    );
    let e = errors_over_complete(
        "model_config:\n  backbone_config:\n    unet: null\n    swint:\n      arch: {embed: 96, depths: [2, 2], channels: [5, 6]}\n",
    );
    assert!(
        has(
            &e,
            &[
                "swint.arch.channels",
                "stage 0 has width 96",
                "5 attention heads"
            ]
        ),
        "{e:?}"
    );
}

#[test]
fn two_shape_fields_accept_both_shapes() {
    let t = over_complete;

    for (text, want) in [
        ("3", Some(TrainerDevices::Count(3))),
        ("auto", Some(TrainerDevices::Auto)),
        ("null", None),
        ("", None),
    ] {
        let c = t(&format!("trainer_config:\n  trainer_devices: {text}\n")).unwrap();
        assert_eq!(c.trainer_config.trainer_devices, want, "{text:?}");
    }
    let e = errors_over_complete("trainer_config:\n  trainer_devices: many\n");
    assert!(
        has(
            &e,
            &[
                "trainer_config.trainer_devices",
                "a device count or \"auto\"",
                "'many'"
            ]
        ),
        "{e:?}"
    );

    let c = t(
        "trainer_config:\n  lr_scheduler:\n    reduce_lr_on_plateau:\n      min_lr: [1e-6, 1e-7]\n",
    )
    .unwrap();
    let r = c
        .trainer_config
        .lr_scheduler
        .unwrap()
        .reduce_lr_on_plateau
        .unwrap();
    assert_eq!(r.min_lr, MinLr::PerGroup(vec![1e-6, 1e-7]));
    let e = errors_over_complete(
        "trainer_config:\n  lr_scheduler:\n    reduce_lr_on_plateau:\n      min_lr: {a: 1}\n",
    );
    assert!(
        has(&e, &["min_lr", "a number or a list of numbers"]),
        "{e:?}"
    );

    let c = t("data_config:\n  test_file_path: test.slp\n").unwrap();
    assert_eq!(
        c.data_config.test_file_path,
        Some(PathList::One("test.slp".into()))
    );
    let c = t("data_config:\n  test_file_path: [a.slp, b.mp4]\n").unwrap();
    let tp = c.data_config.test_file_path.unwrap();
    assert_eq!(tp.paths(), vec!["a.slp", "b.mp4"]);

    let c = over_complete(
        "model_config:\n  head_configs:\n    single_instance: null\n    bottomup:\n      confmaps: {output_stride: 2}\n      pafs:\n        output_stride: 4\n        edges: [[head, thorax], [0, 2], [\"1\", tail]]\n",
    )
    .unwrap();
    let edges = c
        .model_config
        .head_configs
        .bottomup
        .unwrap()
        .pafs
        .edges
        .unwrap();
    assert_eq!(
        edges,
        vec![
            PafEdge {
                src: NodeRef::Name("head".into()),
                dst: NodeRef::Name("thorax".into())
            },
            PafEdge {
                src: NodeRef::Index(0),
                dst: NodeRef::Index(2)
            },
            PafEdge {
                src: NodeRef::Name("1".into()),
                dst: NodeRef::Name("tail".into())
            },
        ]
    );
    let e = errors_over_complete(
        "model_config:\n  head_configs:\n    single_instance: null\n    bottomup:\n      pafs:\n        edges: [[a, b, c], [x, -1], y]\n",
    );
    assert!(has(&e, &["pafs.edges[0]", "got 3 items"]), "{e:?}");
    assert!(
        has(&e, &["pafs.edges[1][1]", "must not be negative"]),
        "{e:?}"
    );
    assert!(
        has(&e, &["pafs.edges[2]", "[source, destination] pair"]),
        "{e:?}"
    );
}

#[test]
fn unknown_key_suggests_the_right_one_with_its_line() {
    let text = "data_config:\n  train_labels_path: [a.slp]\n  preprocesing:\n    scale: 1.0\n";
    let e = errors(text);
    assert!(
        has(
            &e,
            &[
                "test.yaml:3:",
                "data_config.preprocesing",
                "did you mean data_config.preprocessing?"
            ]
        ),
        "{e:?}"
    );
    let e = errors_over_complete(
        "trainer_config:\n  optimizer:\n    learning_rate: 0.1\n    amsgrd: true\n",
    );
    assert!(
        has(
            &e,
            &[
                "override.yaml:4:",
                "did you mean trainer_config.optimizer.amsgrad?"
            ]
        ),
        "{e:?}"
    );
    assert!(
        has(&e, &["override.yaml:3:", "valid keys here: lr, amsgrad"]),
        "{e:?}"
    );
    // Heads take exactly the fields the guide documents for them.
    let e = errors_over_complete(
        "model_config:\n  head_configs:\n    single_instance:\n      confmaps:\n        anchor_part: head\n",
    );
    assert!(
        has(&e, &["single_instance.confmaps.anchor_part", "unknown key"]),
        "{e:?}"
    );
}

#[test]
fn wrong_types_are_reported_with_what_is_expected() {
    let e = errors_over_complete(
        "trainer_config:\n  max_epochs: lots\n  train_data_loader:\n    shuffle: maybe\ndata_config:\n  train_labels_path: a.slp\n",
    );
    assert!(
        has(
            &e,
            &[
                "override.yaml:2:",
                "trainer_config.max_epochs",
                "expected a non-negative integer, got 'lots'"
            ]
        ),
        "{e:?}"
    );
    assert!(
        has(&e, &["train_data_loader.shuffle", "expected true or false"]),
        "{e:?}"
    );
    assert!(
        has(
            &e,
            &[
                "data_config.train_labels_path",
                "expected a list of strings"
            ]
        ),
        "{e:?}"
    );
    let e =
        errors_over_complete("model_config:\n  backbone_config:\n    unet:\n      filters: -4\n");
    assert!(
        has(&e, &["unet.filters", "non-negative integer", "'-4'"]),
        "{e:?}"
    );
}

#[test]
fn bad_enum_values_list_what_is_allowed() {
    let cases = [
        ("data_config:\n  provider: NumpyReader\n", "data_config.provider", "\"LabelsReader\""),
        (
            "data_config:\n  data_pipeline_fw: torch_dataset_cache\n",
            "data_config.data_pipeline_fw",
            "\"torch_dataset\", \"torch_dataset_cache_img_memory\" or \"torch_dataset_cache_img_disk\"",
        ),
        ("model_config:\n  init_weights: kaiming\n", "model_config.init_weights", "\"default\" or \"xavier\""),
        ("trainer_config:\n  trainer_accelerator: tpu\n", "trainer_accelerator", "\"cpu\", \"gpu\", \"cuda\", \"mps\" or \"auto\""),
        ("trainer_config:\n  profiler: fancy\n", "trainer_config.profiler", "\"advanced\", \"passthrough\", \"pytorch\" or \"simple\""),
        ("trainer_config:\n  optimizer_name: SGD\n", "optimizer_name", "\"Adam\" or \"AdamW\""),
        (
            "trainer_config:\n  lr_scheduler:\n    reduce_lr_on_plateau:\n      threshold_mode: relative\n",
            "threshold_mode",
            "\"rel\" or \"abs\"",
        ),
        (
            "model_config:\n  backbone_config:\n    unet: null\n    convnext:\n      model_type: huge\n",
            "convnext.model_type",
            "\"tiny\", \"small\", \"base\" or \"large\"",
        ),
        (
            "model_config:\n  backbone_config:\n    unet: null\n    swint:\n      model_type: large\n",
            "swint.model_type",
            "\"tiny\", \"small\" or \"base\"",
        ),
        (
            "model_config:\n  backbone_config:\n    unet: null\n    convnext:\n      pre_trained_weights: ConvNeXt_Huge_Weights\n",
            "convnext.pre_trained_weights",
            "\"ConvNeXt_Base_Weights\", \"ConvNeXt_Tiny_Weights\", \"ConvNeXt_Small_Weights\" or \"ConvNeXt_Large_Weights\"",
        ),
        (
            "model_config:\n  backbone_config:\n    unet: null\n    swint:\n      pre_trained_weights: Swin_L_Weights\n",
            "swint.pre_trained_weights",
            "\"Swin_T_Weights\", \"Swin_S_Weights\" or \"Swin_B_Weights\"",
        ),
    ];
    for (fragment, path, allowed) in cases {
        let e = errors_over_complete(fragment);
        assert!(
            has(&e, &[path, "is not allowed; expected one of", allowed]),
            "{fragment}: {e:?}"
        );
    }
    let e = errors_over_complete("trainer_config:\n  optimizer_name: adamw\n");
    assert!(has(&e, &["did you mean \"AdamW\"?"]), "{e:?}");
}

#[test]
fn strategy_is_free_text() {
    let c = over_complete("trainer_config:\n  trainer_strategy: ddp_find_unused_parameters_true\n")
        .unwrap();
    assert_eq!(
        c.trainer_config.trainer_strategy,
        "ddp_find_unused_parameters_true"
    );
}

#[test]
fn exactly_one_backbone_and_one_head() {
    let e = errors_over_complete("model_config:\n  backbone_config:\n    unet: null\n");
    assert!(
        has(
            &e,
            &[
                "model_config.backbone_config",
                "no backbone is set",
                "unet, convnext, swint or pretrained"
            ]
        ),
        "{e:?}"
    );
    let e = errors_over_complete(
        "model_config:\n  backbone_config:\n    convnext: {}\n    swint: {}\n",
    );
    assert!(
        has(
            &e,
            &[
                "model_config.backbone_config",
                "3 backbones are set (unet, convnext and swint)"
            ]
        ),
        "{e:?}"
    );
    let e = errors_over_complete("model_config:\n  head_configs:\n    single_instance: null\n");
    assert!(
        has(&e, &["model_config.head_configs", "no head is set"]),
        "{e:?}"
    );
    let e = errors_over_complete("model_config:\n  head_configs:\n    centroid:\n      confmaps:\n        output_stride: 2\n");
    assert!(
        has(
            &e,
            &[
                "complete.yaml:",
                "model_config.head_configs",
                "2 head types are set (single_instance and centroid)"
            ]
        ),
        "{e:?}"
    );
    let c = over_complete(
        "model_config:\n  head_configs:\n    centroid: {confmaps: {output_stride: 4}}\n",
    )
    .err()
    .unwrap();
    assert_eq!(c.0.len(), 1, "{c}");
}

#[test]
fn head_strides_move_the_backbone_as_sleap_nn_does() {
    // Finer than the backbone's output_stride (2 in the sample): loads, and the backbone
    // outputs at the head's stride.
    let c = over_complete(
        "model_config:\n  head_configs:\n    single_instance:\n      confmaps:\n        output_stride: 1\n",
    )
    .unwrap();
    let u = c.resolved().model_config.backbone_config.unet.unwrap();
    assert_eq!((u.output_stride, u.max_stride), (1, 16));
    // Coarser than max_stride: the encoder grows to the head's stride.
    let c = over_complete(
        "model_config:\n  head_configs:\n    single_instance:\n      confmaps:\n        output_stride: 32\n",
    )
    .unwrap();
    let u = c.resolved().model_config.backbone_config.unet.unwrap();
    assert_eq!((u.output_stride, u.max_stride), (32, 32));
    // Not a power of two is still an error, with its line.
    let e = errors_over_complete(
        "model_config:\n  head_configs:\n    single_instance:\n      confmaps:\n        output_stride: 6\n",
    );
    assert!(
        has(
            &e,
            &[
                "override.yaml:5:",
                "single_instance.confmaps.output_stride",
                "power of two",
                "got 6"
            ]
        ),
        "{e:?}"
    );
    // Backbone strides themselves.
    let e = errors_over_complete("model_config:\n  backbone_config:\n    unet:\n      max_stride: 24\n      output_stride: 32\n");
    assert!(
        has(&e, &["unet.max_stride", "power of two", "got 24"]),
        "{e:?}"
    );
    assert!(
        has(&e, &["unet.output_stride", "greater than max_stride 24"]),
        "{e:?}"
    );
    // Class vectors come from the encoder's last layer: whatever is written, they sit at the
    // backbone's max_stride, and the written value still counts among the head strides (as in
    // sleap-nn, whose `check_output_strides` reads every head's output_stride first).
    let c = over_complete(
        "model_config:\n  head_configs:\n    single_instance: null\n    multi_class_topdown:\n      confmaps:\n        output_stride: 2\n      class_vectors:\n        output_stride: 8\n",
    )
    .unwrap();
    let r = c.resolved();
    let u = r.model_config.backbone_config.unet.as_ref().unwrap();
    assert_eq!((u.output_stride, u.max_stride), (2, 16));
    let cv = &r
        .model_config
        .head_configs
        .multi_class_topdown
        .unwrap()
        .class_vectors;
    assert_eq!(cv.output_stride, 16);
    // PAFs count like confidence maps.
    let c = over_complete(
        "model_config:\n  head_configs:\n    single_instance: null\n    bottomup:\n      confmaps: {output_stride: 4}\n      pafs: {output_stride: 8}\n",
    )
    .unwrap();
    let u = c.resolved().model_config.backbone_config.unet.unwrap();
    assert_eq!((u.output_stride, u.max_stride), (4, 16));
}

#[test]
fn probabilities_and_fractions_are_in_range() {
    let e = errors_over_complete(
        "data_config:\n  validation_fraction: 1.5\n  augmentation_config:\n    intensity:\n      contrast_p: 1.2\n    geometric:\n      rotation_p: -0.1\n      erase_p: 2\n",
    );
    assert!(
        has(
            &e,
            &[
                "data_config.validation_fraction",
                "between 0 and 1, got 1.5"
            ]
        ),
        "{e:?}"
    );
    assert!(
        has(
            &e,
            &[
                "override.yaml:5:",
                "intensity.contrast_p",
                "probability",
                "got 1.2"
            ]
        ),
        "{e:?}"
    );
    assert!(has(&e, &["geometric.rotation_p", "got -0.1"]), "{e:?}");
    assert!(has(&e, &["geometric.erase_p", "got 2"]), "{e:?}");
}

#[test]
fn every_min_max_pair_is_ordered() {
    let e = errors_over_complete(
        "data_config:\n  augmentation_config:\n    intensity:\n      uniform_noise_min: 0.8\n      uniform_noise_max: 0.2\n      contrast_min: 1.5\n      brightness_min: 1.2\n      brightness_max: 1.1\n    geometric:\n      rotation_min: 20\n      scale_min: 1.2\n      scale_max: 1.0\n      erase_scale_min: 0.5\n      erase_ratio_min: 2.0\n      mixup_lambda_min: 0.5\n",
    );
    for name in [
        "uniform_noise",
        "contrast",
        "brightness",
        "rotation",
        "scale",
        "erase_scale",
        "erase_ratio",
        "mixup_lambda",
    ] {
        assert!(
            has(
                &e,
                &[
                    &format!("{name}_min ("),
                    &format!("is greater than {name}_max")
                ]
            ),
            "{name}: {e:?}"
        );
    }
    assert!(
        has(
            &e,
            &[
                "override.yaml:10:",
                "geometric.rotation_min",
                "rotation_min (20) is greater than rotation_max (15)"
            ]
        ),
        "{e:?}"
    );
}

#[test]
fn other_semantic_checks() {
    let e = errors_over_complete(
        "data_config:\n  preprocessing:\n    ensure_rgb: true\n    ensure_grayscale: true\n",
    );
    assert!(
        has(
            &e,
            &[
                "data_config.preprocessing",
                "ensure_rgb and ensure_grayscale are both true"
            ]
        ),
        "{e:?}"
    );

    // Training labels may be left to the command line (sleap-nn's `train_labels_path: null`).
    let c = load(
        "model_config:\n  backbone_config:\n    unet: {}\n  head_configs:\n    centroid: {}\n",
    )
    .unwrap();
    assert_eq!(c.data_config.train_labels_path, None);
    let e = errors_over_complete("data_config:\n  train_labels_path: ['a.slp', ' ']\n");
    assert!(
        has(&e, &["data_config.train_labels_path[1]", "empty path"]),
        "{e:?}"
    );

    let e = errors_over_complete(
        "trainer_config:\n  model_ckpt:\n    save_top_k: -2\n  train_data_loader:\n    batch_size: 0\n  max_epochs: 0\n  optimizer:\n    lr: 0\n",
    );
    assert!(
        has(&e, &["model_ckpt.save_top_k", "-1 (keep all)", "got -2"]),
        "{e:?}"
    );
    assert!(
        has(&e, &["train_data_loader.batch_size", "at least 1"]),
        "{e:?}"
    );
    assert!(
        has(&e, &["trainer_config.max_epochs", "at least 1"]),
        "{e:?}"
    );
    assert!(
        has(&e, &["trainer_config.optimizer.lr", "positive"]),
        "{e:?}"
    );
    assert!(over_complete("trainer_config:\n  model_ckpt:\n    save_top_k: -1\n").is_ok());

    let e = errors_over_complete(
        "model_config:\n  backbone_config:\n    unet:\n      filters: 0\n      kernel_size: 0\n  head_configs:\n    single_instance:\n      confmaps:\n        sigma: 0\n",
    );
    for p in [
        "unet.filters",
        "unet.kernel_size",
        "single_instance.confmaps.sigma",
    ] {
        assert!(has(&e, &[p]), "{p}: {e:?}");
    }
    let e = errors_over_complete(
        "data_config:\n  preprocessing:\n    scale: 0\ntrainer_config:\n  lr_scheduler:\n    step_lr:\n      step_size: 0\n",
    );
    assert!(has(&e, &["preprocessing.scale", "positive"]), "{e:?}");
    assert!(has(&e, &["step_lr.step_size", "at least 1"]), "{e:?}");
    assert_eq!(e.len(), 2, "two schedulers set is not an error: {e:?}");

    let e = errors_over_complete("trainer_config:\n  zmq:\n    publish_port: 70000\n");
    assert!(
        has(&e, &["zmq.publish_port", "between 1 and 65535"]),
        "{e:?}"
    );
    let e = errors_over_complete("trainer_config:\n  trainer_device_indices: [0, 1, 0]\n");
    assert!(
        has(&e, &["trainer_device_indices", "device 0 is listed twice"]),
        "{e:?}"
    );
}

#[test]
fn api_key_is_never_written_back() {
    let c = over_complete("trainer_config:\n  wandb:\n    api_key: sekrit-123\n").unwrap();
    let w = c.trainer_config.wandb.as_ref().unwrap();
    assert_eq!(w.api_key.as_ref().map(ApiKey::expose), Some("sekrit-123"));
    assert!(!c.to_yaml().contains("sekrit"));
    assert!(!format!("{c:?}").contains("sekrit"));
}

fn assert_round_trips(c: &SleapNnConfig, what: &str) {
    let yaml = c.to_yaml();
    let back: SleapNnConfig = Sources::from_str(&yaml, "dumped.yaml")
        .and_then(|s| s.load_as())
        .unwrap_or_else(|e| panic!("{what}: dumped config does not load:\n{e}\n{yaml}"));
    assert_eq!(&back, c, "{what}:\n{yaml}");
}

#[test]
fn round_trip_complete_sample() {
    let c = load(&fixture("complete.yaml")).unwrap();
    assert_round_trips(&c, "complete sample");
    // Every fragment's config too (edges, min_lr lists, null sections...).
    for (name, text) in fragments() {
        let mut s = Sources::from_str(&fragment_base(), "base.yaml").unwrap();
        s.merge_str(&text, &name).unwrap();
        assert_round_trips(&s.load_as().unwrap(), &name);
    }
}

#[test]
fn round_trip_defaults_of_every_preset() {
    let mut backbones: Vec<(String, BackboneConfig)> = vec![(
        "unet".into(),
        BackboneConfig {
            unet: Some(UNetConfig::default()),
            ..Default::default()
        },
    )];
    for mt in [
        ConvNextModelType::Tiny,
        ConvNextModelType::Small,
        ConvNextModelType::Base,
        ConvNextModelType::Large,
    ] {
        backbones.push((
            format!("convnext {mt}"),
            BackboneConfig {
                convnext: Some(ConvNextConfig {
                    model_type: mt,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
    }
    for mt in [
        SwinTModelType::Tiny,
        SwinTModelType::Small,
        SwinTModelType::Base,
    ] {
        backbones.push((
            format!("swint {mt}"),
            BackboneConfig {
                swint: Some(SwinTConfig {
                    model_type: mt,
                    arch: Some(SwinTArch::preset(mt)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
    }
    let heads = [
        HeadConfigs {
            single_instance: Some(Default::default()),
            ..Default::default()
        },
        HeadConfigs {
            centroid: Some(Default::default()),
            ..Default::default()
        },
        HeadConfigs {
            centered_instance: Some(Default::default()),
            ..Default::default()
        },
        HeadConfigs {
            bottomup: Some(Default::default()),
            ..Default::default()
        },
        HeadConfigs {
            multi_class_bottomup: Some(Default::default()),
            ..Default::default()
        },
        HeadConfigs {
            multi_class_topdown: Some(Default::default()),
            ..Default::default()
        },
    ];
    for (bname, backbone) in &backbones {
        for head in &heads {
            let mut c = SleapNnConfig::default();
            c.data_config.train_labels_path = Some(vec!["train.slp".into()]);
            c.model_config.backbone_config = backbone.clone();
            c.model_config.head_configs = head.clone();
            // Class vectors sit at the encoder's deepest level (16 by default, 32 for the
            // transformer presets).
            let max_stride = c.backbone().map(|b| b.max_stride()).unwrap_or(16);
            if let Some(h) = &mut c.model_config.head_configs.multi_class_topdown {
                h.class_vectors.output_stride = max_stride;
            }
            let what = format!("{bname} + {:?}", head.kinds());
            assert_round_trips(&c, &what);
        }
    }
}

#[test]
fn shipped_examples_load_and_train_what_they_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, kind) in [
        ("sleap_single_instance.yaml", HeadKind::SingleInstance),
        ("sleap_centroid.yaml", HeadKind::Centroid),
        ("sleap_centered_instance.yaml", HeadKind::CenteredInstance),
        ("sleap_bottomup.yaml", HeadKind::BottomUp),
        (
            "sleap_multi_class_bottomup.yaml",
            HeadKind::MultiClassBottomUp,
        ),
        (
            "sleap_multi_class_topdown.yaml",
            HeadKind::MultiClassTopDown,
        ),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# sleap-nn: "),
            "{file} needs a comment header"
        );
        let c: SleapNnConfig =
            configs::load_file_as(&path, &[]).unwrap_or_else(|e| panic!("{file}:\n{e}"));
        assert_eq!(c.head_kind(), Some(kind), "{file}");
        assert_eq!(
            c.data_config.train_labels_path,
            Some(vec!["data/minimal_instance.pkg.slp".to_string()]),
            "{file}"
        );
        // The family is detected from the sections alone.
        assert!(
            matches!(
                configs::load_file(&path, &[]),
                Ok(configs::AnyConfig::SleapNn(_))
            ),
            "{file}"
        );
        assert_round_trips(&c, file);
    }
}

#[test]
fn overrides_apply_and_are_checked() {
    let mut s = Sources::from_str(&fixture("complete.yaml"), "complete.yaml").unwrap();
    s.apply_override("trainer_config.max_epochs=3").unwrap();
    s.apply_override("trainer_config.trainer_devices=auto")
        .unwrap();
    let c: SleapNnConfig = s.load_as().unwrap();
    assert_eq!(c.trainer_config.max_epochs, 3);
    assert_eq!(c.trainer_config.trainer_devices, Some(TrainerDevices::Auto));

    let mut s = Sources::from_str(&fixture("complete.yaml"), "complete.yaml").unwrap();
    s.apply_override("trainer_config.optimizer_name=SGD")
        .unwrap();
    let e = s.load_as::<SleapNnConfig>().unwrap_err().to_string();
    assert!(
        e.contains("--set trainer_config.optimizer_name=SGD")
            && e.contains("\"Adam\" or \"AdamW\""),
        "{e}"
    );
}
