//! A checkpoint directory as both sides see it: the manifest that makes it complete, its
//! verification, and which checkpoint a run resumes from. Writing and reading the tensors is
//! the worker's (`worker::checkpoint`).
//!
//! A checkpoint is complete when its `manifest.json`, written last, lists the size and SHA-256
//! of every file and the files match; anything else (cut short by a kill, corrupted, a
//! temporary directory) is never resumed from.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use configs::ScModelForgeConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dir::absolute;
use crate::naming::checkpoint_root;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;
/// The files every checkpoint holds besides its manifest (and the model family's own data
/// file: `vocab.json` for the single-cell models, `skeleton.json` for pose models). A training
/// checkpoint also holds `optimizer.safetensors`, which resuming needs; an export
/// (`coordinator export`) holds weights only.
pub const FILES: [&str; 3] = ["model.safetensors", "state.json", "config.yaml"];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// Wraps an I/O error on `path`: `.map_err(io(path))`.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A checkpoint at `path` that is not what it should be.
pub fn invalid(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

/// `manifest.json`: size and SHA-256 of every file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    format_version: u32,
    files: BTreeMap<String, FileEntry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format_version: FORMAT_VERSION,
            files: BTreeMap::new(),
        }
    }
}

impl Manifest {
    /// Records a file's size and checksum.
    pub fn add(&mut self, name: &str, bytes: &[u8]) {
        self.files.insert(
            name.to_string(),
            FileEntry {
                bytes: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            },
        );
    }

    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(io(path))
}

/// Checks the manifest against the files; returns the verified file contents.
pub fn verify(dir: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let mpath = dir.join(MANIFEST);
    if !mpath.exists() {
        return Err(invalid(
            dir,
            "no manifest.json (incomplete or not a checkpoint)",
        ));
    }
    let manifest: Manifest = serde_json::from_slice(&read_all(&mpath)?)
        .map_err(|e| invalid(dir, format!("manifest.json: {e}")))?;
    let mut out = HashMap::new();
    for need in FILES {
        if !manifest.files.contains_key(need) {
            return Err(invalid(dir, format!("manifest does not list {need}")));
        }
    }
    for (name, entry) in &manifest.files {
        let bytes = read_all(&dir.join(name))?;
        if bytes.len() as u64 != entry.bytes || sha256_hex(&bytes) != entry.sha256 {
            return Err(invalid(
                dir,
                format!("{name} does not match its checksum in manifest.json (corrupted)"),
            ));
        }
        out.insert(name.clone(), bytes);
    }
    Ok(out)
}

/// The optimizer step of a checkpoint's `state.json` contents.
fn step_in(state_json: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Step {
        global_step: u64,
    }
    serde_json::from_slice::<Step>(state_json)
        .ok()
        .map(|s| s.global_step)
}

/// The step recorded in a checkpoint's state.json (not verified).
pub fn step(dir: &Path) -> Option<u64> {
    step_in(&fs::read(dir.join("state.json")).ok()?)
}

/// The step recorded in a checkpoint's state.json, if the checkpoint verifies.
fn verified_step(dir: &Path) -> Option<u64> {
    step_in(verify(dir).ok()?.get("state.json")?)
}

/// `path` itself when it is a checkpoint (it must verify), else the verified checkpoint with
/// the highest step directly inside `path` (temporary and corrupt ones are skipped).
pub fn resolve_resume(path: &Path) -> Result<PathBuf> {
    if path.join(MANIFEST).exists() {
        verify(path)?;
        return Ok(path.to_path_buf());
    }
    let entries = fs::read_dir(path).map_err(io(path))?;
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || !p.is_dir() {
            continue;
        }
        match verified_step(&p) {
            Some(s) if best.as_ref().is_none_or(|(b, _)| s > *b) => best = Some((s, p)),
            Some(_) => {}
            None => tracing::warn!(
                "skipping {}: not a complete, verified checkpoint",
                p.display()
            ),
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| invalid(path, "no complete checkpoint found to resume from"))
}

/// The newest complete checkpoint of the run in `run_dir`, if there is one.
pub fn latest(cfg: &ScModelForgeConfig, run_dir: &Path) -> Option<PathBuf> {
    resolve_resume(&checkpoint_root(cfg, &absolute(run_dir))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("anvil-run-ckpt-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A checkpoint of `step` with placeholder files and a manifest over them.
    fn write_checkpoint(dir: &Path, step: u64) {
        fs::create_dir_all(dir).unwrap();
        let mut manifest = Manifest::default();
        for name in FILES {
            let bytes = match name {
                "state.json" => format!("{{\"global_step\": {step}}}").into_bytes(),
                other => other.as_bytes().to_vec(),
            };
            fs::write(dir.join(name), &bytes).unwrap();
            manifest.add(name, &bytes);
        }
        fs::write(dir.join(MANIFEST), manifest.to_json().unwrap()).unwrap();
    }

    #[test]
    fn resumes_from_the_newest_checkpoint_that_verifies() {
        let root = scratch("resolve");
        write_checkpoint(&root.join("epoch=0"), 10);
        write_checkpoint(&root.join("epoch=1"), 20);
        write_checkpoint(&root.join("last"), 30);
        write_checkpoint(&root.join(".last.tmp-1"), 40);
        fs::create_dir_all(root.join("cut-short")).unwrap();
        assert_eq!(resolve_resume(&root).unwrap(), root.join("last"));
        assert_eq!(step(&root.join("last")), Some(30));

        // A corrupted file disqualifies its checkpoint; the next newest is chosen.
        fs::write(root.join("last").join("model.safetensors"), b"cut").unwrap();
        assert!(verify(&root.join("last")).is_err());
        assert_eq!(resolve_resume(&root).unwrap(), root.join("epoch=1"));
        // Named directly, a checkpoint must verify.
        assert!(resolve_resume(&root.join("last")).is_err());
        assert_eq!(
            resolve_resume(&root.join("epoch=0")).unwrap(),
            root.join("epoch=0")
        );
        let empty = scratch("empty");
        let err = resolve_resume(&empty).unwrap_err().to_string();
        assert!(err.contains("no complete checkpoint"), "{err}");
    }
}
