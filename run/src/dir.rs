//! A run's directory as the coordinator keeps it: the resolved config, the run token, the run
//! record (for `--resume`) and the workers' logs. Checkpoints and the metric loggers'
//! `version_N/` directories go under it too (written by rank 0; see [`crate::checkpoint`] and
//! [`crate::versions`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

pub struct RunDir {
    pub path: PathBuf,
}

/// What `--resume` needs to know about a run besides its config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub world: usize,
    pub generation: u32,
    pub restarts: u32,
    pub status: String,
    /// The format gradients travel in between workers ("fp32" or "bf16"; runs recorded before
    /// the option existed read as fp32). A resumed run keeps it unless told otherwise.
    #[serde(default = "fp32")]
    pub grad_reduce_dtype: String,
}

fn fp32() -> String {
    "fp32".into()
}

impl RunDir {
    /// A directory for a new run named `run_name` under `parent`: `parent/run_name`, or
    /// `parent/run_name-2`, `-3`, … (like Lightning's version_N, a new run never writes into an
    /// old one).
    pub fn fresh_path(parent: &Path, run_name: &str) -> PathBuf {
        (1..)
            .map(|i| match i {
                1 => parent.join(run_name),
                i => parent.join(format!("{run_name}-{i}")),
            })
            .find(|d| !RunDir::holds_run(d))
            .unwrap_or_else(|| parent.join(run_name))
    }

    /// Whether `path` already holds a run (its run record).
    pub fn holds_run(path: &Path) -> bool {
        path.join(RECORD).exists()
    }

    /// Creates (or reuses) the directory and writes the resolved config and a fresh token.
    pub fn create(path: &Path, config_yaml: &str) -> anyhow::Result<Self> {
        fs::create_dir_all(path.join("logs"))
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        let run = RunDir {
            path: path.to_path_buf(),
        };
        write_atomic(&run.config_path(), config_yaml.as_bytes())?;
        write_token(&run.token_path())?;
        Ok(run)
    }

    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let run = RunDir {
            path: path.to_path_buf(),
        };
        for needed in [run.config_path(), run.record_path(), run.token_path()] {
            if !needed.exists() {
                return Err(anyhow!(
                    "{} is not an anvil run directory: {} is missing",
                    path.display(),
                    needed.display()
                ));
            }
        }
        fs::create_dir_all(path.join("logs"))?;
        Ok(run)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.yaml")
    }
    pub fn token_path(&self) -> PathBuf {
        self.path.join("token")
    }
    pub fn record_path(&self) -> PathBuf {
        self.path.join(RECORD)
    }
    /// The newest logger version's metrics.csv (see [`crate::versions`]).
    pub fn metrics_path(&self) -> PathBuf {
        crate::versions::metrics_csv(&self.path)
    }
    pub fn worker_log_path(&self, rank: usize) -> PathBuf {
        self.path.join("logs").join(format!("worker-{rank}.log"))
    }

    pub fn token(&self) -> anyhow::Result<String> {
        let t = fs::read_to_string(self.token_path())
            .with_context(|| format!("cannot read {}", self.token_path().display()))?;
        Ok(t.trim().to_string())
    }

    /// Replaces the run's token (a token given by the scheduler, e.g. a Kubernetes Secret,
    /// instead of the generated one), so workers that read the token file agree with it.
    pub fn set_token(&self, token: &str) -> anyhow::Result<()> {
        write_token_text(&self.token_path(), token)
    }

    pub fn read_record(&self) -> anyhow::Result<RunRecord> {
        let text = fs::read_to_string(self.record_path())?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", self.record_path().display()))
    }

    pub fn write_record(&self, record: &RunRecord) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(record)?;
        write_atomic(&self.record_path(), text.as_bytes())
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A fresh random run token: 24 bytes from /dev/urandom as 48 hex digits.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom for the run token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random run token in a file only the user can read.
fn write_token(path: &Path) -> anyhow::Result<()> {
    write_token_text(path, &random_token()?)
}

/// A fresh random token written to `path` (readable by the user only); returns it.
pub fn new_token_file(path: &Path) -> anyhow::Result<String> {
    let token = random_token()?;
    write_token_text(path, &token)?;
    Ok(token)
}

/// `token` in a file only the user can read, replacing the file at once (through a temporary
/// file created with that mode, then a rename: a reader sees the old token or the new one).
fn write_token_text(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The run record's file name.
const RECORD: &str = "run.json";

/// `p` made absolute against the current directory (unchanged if that cannot be read).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("anvil-run-dir-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_run_directory_round_trips_and_new_runs_get_fresh_ones() {
        let parent = scratch("fresh");
        let first = RunDir::fresh_path(&parent, "r");
        assert_eq!(first, parent.join("r"));
        let run = RunDir::create(&first, "training: {}\n").unwrap();
        assert!(RunDir::open(&first).is_err(), "no record yet");
        let record = RunRecord {
            run_id: "r".into(),
            world: 2,
            generation: 1,
            restarts: 1,
            status: "running".into(),
            grad_reduce_dtype: "bf16".into(),
        };
        run.write_record(&record).unwrap();
        let again = RunDir::open(&first).unwrap();
        assert_eq!(again.read_record().unwrap().world, 2);
        assert_eq!(again.token().unwrap().len(), 48);
        assert_eq!(RunDir::fresh_path(&parent, "r"), parent.join("r-2"));
        again.set_token("given-by-the-scheduler").unwrap();
        assert_eq!(again.token().unwrap(), "given-by-the-scheduler");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(again.token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(random_token().unwrap(), random_token().unwrap());
    }
}
