//! Where a run's metric loggers write: Lightning's `{save_dir}/{name}/version_{N}/` layout,
//! with `{save_dir}/{name}` being the run directory (for `worker train` without `--run-dir`
//! that is `{training.log_dir}/{run name}`, exactly where scModelForge's CSVLogger and
//! TensorBoardLogger write).
//!
//! A run that starts from scratch takes the next free version (`version_0` in a new run
//! directory); a run that resumes from a checkpoint continues the newest one. The worker's
//! loggers (`worker::loggers`) write the files; the coordinator only reads where they are.

use std::path::{Path, PathBuf};

/// The CSV logger's file in a version directory.
pub const METRICS_CSV: &str = "metrics.csv";
/// The hyperparameters both Lightning loggers save beside their metrics.
pub const HPARAMS_YAML: &str = "hparams.yaml";

/// `{run_dir}/version_{n}`.
pub fn version_dir(run_dir: &Path, n: u32) -> PathBuf {
    run_dir.join(format!("version_{n}"))
}

/// The numbers of the `version_N` directories in `run_dir`, ascending (none when it does not
/// exist). Entries that are not directories or not named `version_<number>` are ignored, as
/// Lightning ignores them.
pub fn versions(run_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("version_")?
                .parse()
                .ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// The newest version of the run, if it has one.
pub fn latest(run_dir: &Path) -> Option<u32> {
    versions(run_dir).last().copied()
}

/// The version a fresh start takes: one past the newest, or 0 (Lightning's rule).
pub fn next(run_dir: &Path) -> u32 {
    latest(run_dir).map_or(0, |n| n + 1)
}

/// The version a run writes to: the newest when it resumes from a checkpoint (and has one),
/// else the next free one.
pub fn for_start(run_dir: &Path, resumed: bool) -> u32 {
    match latest(run_dir) {
        Some(n) if resumed => n,
        _ => next(run_dir),
    }
}

/// The newest version's metrics.csv (`version_0`'s path when the run has no version yet).
pub fn metrics_csv(run_dir: &Path) -> PathBuf {
    version_dir(run_dir, latest(run_dir).unwrap_or(0)).join(METRICS_CSV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_directories_and_resumes_continue_the_newest() {
        let dir = std::env::temp_dir().join(format!("anvil-run-versions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(versions(&dir), Vec::<u32>::new());
        assert_eq!(for_start(&dir, false), 0);
        assert_eq!(for_start(&dir, true), 0, "nothing to continue: version_0");
        for d in ["version_0", "version_2", "version_x", "other"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("version_7"), b"a file, not a version").unwrap();
        assert_eq!(versions(&dir), vec![0, 2]);
        assert_eq!(for_start(&dir, false), 3);
        assert_eq!(for_start(&dir, true), 2);
        assert_eq!(metrics_csv(&dir), dir.join("version_2/metrics.csv"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
