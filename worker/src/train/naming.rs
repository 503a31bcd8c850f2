//! Run names and where a run's files go.

use std::path::{Path, PathBuf};

use configs::scmodelforge::ScModelForgeConfig;

/// `training.run_name`, or a name from the architecture and the current time.
pub fn run_name(cfg: &ScModelForgeConfig) -> String {
    if let Some(n) = &cfg.training.run_name {
        return n.clone();
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        cfg.model.architecture.as_str(),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `{training.log_dir}/{run name}`: where `worker train` puts a run without `--run-dir`.
/// Without `training.run_name` the generated name becomes the directory's name, which
/// [`super::train`] then takes as the run's name.
pub fn default_run_dir(cfg: &ScModelForgeConfig) -> PathBuf {
    Path::new(&cfg.training.log_dir).join(run_name(cfg))
}

/// The run's name: `training.run_name`, else the run directory's name, else generated.
pub(super) fn resolve_run_name(cfg: &ScModelForgeConfig, run_dir: &Path) -> String {
    match (
        &cfg.training.run_name,
        run_dir.file_name().and_then(|n| n.to_str()),
    ) {
        (Some(n), _) => n.clone(),
        (None, Some(d)) if !d.is_empty() => d.to_string(),
        _ => run_name(cfg),
    }
}

/// Where checkpoints of a run go.
pub fn checkpoint_root(cfg: &ScModelForgeConfig, run_dir: &Path) -> PathBuf {
    let d = Path::new(&cfg.training.checkpoint_dir);
    if d.is_absolute() {
        d.to_path_buf()
    } else {
        run_dir.join(d)
    }
}
