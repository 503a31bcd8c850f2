//! Names: a run's name, its default directory, and where its checkpoints go.

use std::path::{Path, PathBuf};

use configs::ScModelForgeConfig;

/// `training.run_name`, or a name from the architecture and the current time.
pub fn run_name(cfg: &ScModelForgeConfig) -> String {
    if let Some(n) = &cfg.training.run_name {
        return n.clone();
    }
    timestamped(cfg.model.architecture.as_str())
}

/// `{what}-YYYYMMDD-HHMMSS` (UTC, now).
pub fn timestamped(what: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{what}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
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
/// [`resolve_run_name`] then takes as the run's name.
pub fn default_run_dir(cfg: &ScModelForgeConfig) -> PathBuf {
    Path::new(&cfg.training.log_dir).join(run_name(cfg))
}

/// The run's name: `training.run_name`, else the run directory's name, else generated.
pub fn resolve_run_name(cfg: &ScModelForgeConfig, run_dir: &Path) -> String {
    match (
        &cfg.training.run_name,
        run_dir.file_name().and_then(|n| n.to_str()),
    ) {
        (Some(n), _) => n.clone(),
        (None, Some(d)) if !d.is_empty() => d.to_string(),
        _ => run_name(cfg),
    }
}

/// Where checkpoints of a run go: `training.checkpoint_dir`, relative to the run directory
/// unless absolute.
pub fn checkpoint_root(cfg: &ScModelForgeConfig, run_dir: &Path) -> PathBuf {
    let d = Path::new(&cfg.training.checkpoint_dir);
    if d.is_absolute() {
        d.to_path_buf()
    } else {
        run_dir.join(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn names_come_from_the_config_then_the_directory() {
        let mut cfg = ScModelForgeConfig::default();
        let generated = run_name(&cfg);
        assert!(
            generated.starts_with("transformer_encoder-") && generated.len() == 35,
            "{generated}"
        );
        assert_eq!(resolve_run_name(&cfg, Path::new("runs/mine")), "mine");
        assert!(resolve_run_name(&cfg, Path::new("/")).starts_with("transformer_encoder-"));
        cfg.training.run_name = Some("named".into());
        assert_eq!(resolve_run_name(&cfg, Path::new("runs/mine")), "named");
        assert_eq!(default_run_dir(&cfg), Path::new("logs/named"));
    }

    #[test]
    fn checkpoints_go_under_the_run_unless_absolute() {
        let mut cfg = ScModelForgeConfig::default();
        assert_eq!(
            checkpoint_root(&cfg, Path::new("runs/a")),
            Path::new("runs/a/checkpoints")
        );
        cfg.training.checkpoint_dir = "/ckpt".into();
        assert_eq!(
            checkpoint_root(&cfg, Path::new("runs/a")),
            Path::new("/ckpt")
        );
    }
}
