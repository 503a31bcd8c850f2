//! A run's config of either family: single-cell foundation models (scModelForge) or pose
//! models (sleap-nn). What the coordinator needs of it is the same for both — its name, where
//! its checkpoints go, its resolved YAML — and is answered here.

use std::path::{Path, PathBuf};

use configs::{AnyConfig, ConfigRoot, ScModelForgeConfig, SleapNnConfig};

use crate::naming;

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per run; boxing would only add indirection
pub enum RunConfig {
    Cells(ScModelForgeConfig),
    Pose(SleapNnConfig),
}

impl From<AnyConfig> for RunConfig {
    fn from(c: AnyConfig) -> Self {
        match c {
            AnyConfig::ScModelForge(c) => RunConfig::Cells(c),
            AnyConfig::SleapNn(c) => RunConfig::Pose(c),
        }
    }
}

/// Pose runs keep their checkpoints in `<run dir>/checkpoints` (`best`, `last`).
pub const POSE_CHECKPOINTS: &str = "checkpoints";

impl RunConfig {
    pub fn to_yaml(&self) -> String {
        match self {
            RunConfig::Cells(c) => c.to_yaml(),
            RunConfig::Pose(c) => c.to_yaml(),
        }
    }

    /// `training.run_name` / `trainer_config.run_name`, or one made from the model and the time.
    pub fn run_name(&self) -> String {
        match self {
            RunConfig::Cells(c) => naming::run_name(c),
            RunConfig::Pose(c) => c.trainer_config.run_name.clone().unwrap_or_else(|| {
                let head = c
                    .model_config
                    .head_configs
                    .kinds()
                    .first()
                    .map_or("pose", |k| k.as_str());
                naming::timestamped(head)
            }),
        }
    }

    /// The devices per node the config asks for, as Lightning reads them, with the field that
    /// says so: `training.num_gpus` (scModelForge), or `trainer_config.trainer_device_indices`
    /// (its length) / `trainer_config.trainer_devices` (a count; "auto" says nothing) for
    /// sleap-nn. One worker runs per device, so this is the default `--workers-per-node`.
    pub fn devices_per_node(&self) -> Option<(usize, String)> {
        match self {
            RunConfig::Cells(c) => c
                .training
                .num_gpus
                .map(|n| (n, format!("training.num_gpus = {n}"))),
            RunConfig::Pose(c) => {
                let t = &c.trainer_config;
                match (&t.trainer_device_indices, t.trainer_devices) {
                    (Some(ix), _) if !ix.is_empty() => Some((
                        ix.len(),
                        format!("trainer_config.trainer_device_indices = {ix:?}"),
                    )),
                    (_, Some(configs::sleap::TrainerDevices::Count(n))) if n > 0 => {
                        Some((n, format!("trainer_config.trainer_devices = {n}")))
                    }
                    _ => None,
                }
            }
        }
    }

    pub fn checkpoint_root(&self, run_dir: &Path) -> PathBuf {
        match self {
            RunConfig::Cells(c) => naming::checkpoint_root(c, run_dir),
            RunConfig::Pose(_) => run_dir.join(POSE_CHECKPOINTS),
        }
    }

    /// The newest complete checkpoint of the run in `run_dir`, if there is one.
    pub fn latest_checkpoint(&self, run_dir: &Path) -> Option<PathBuf> {
        crate::checkpoint::resolve_resume(&self.checkpoint_root(&crate::dir::absolute(run_dir)))
            .ok()
    }
}
