//! Checkpoints: one directory per checkpoint, written under a temporary name, fsynced and
//! renamed into place, so a reader sees a complete checkpoint or none.
//!
//! ```text
//! <name>/model.safetensors      parameters under their PyTorch names (f32)
//!        optimizer.safetensors  Adam moments: exp_avg.<name>, exp_avg_sq.<name>
//!        state.json             epoch, step, data position, RNG state, loss scale, metrics
//!        config.yaml            the resolved config
//!        vocab.json             the gene vocabulary
//!        manifest.json          size and SHA-256 of every file above (written last)
//! ```
//! A checkpoint whose manifest is missing or does not match its files is never loaded. The
//! manifest, its verification and the choice of a checkpoint to resume from are part of the run
//! directory's contract with the coordinator: they live in [`run::checkpoint`] and are
//! re-exported here; this module writes and reads the tensors.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use kernels::ParamLayout;
use run::checkpoint::{invalid, io, Manifest};
pub use run::checkpoint::{resolve_resume, verify, CheckpointError, FORMAT_VERSION, MANIFEST};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

type Result<T> = std::result::Result<T, CheckpointError>;

/// Where the data loader resumes: the next micro-batch `step` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataPosition {
    pub epoch: u64,
    pub step: u64,
}

/// Everything besides tensors that a resumed run needs to continue bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    pub run_name: String,
    pub architecture: String,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Epoch of the last optimizer step.
    pub epoch: u64,
    pub position: DataPosition,
    /// Adam's step counter (steps actually applied; 16-mixed skips do not count).
    pub adam_t: u64,
    pub loss_scale: f64,
    /// Consecutive steps without overflow (16-mixed growth interval).
    pub good_steps: u64,
    /// Every random choice is counter-based, keyed by (seed, epoch, step, …): the seed is the
    /// whole generator state.
    pub rng: RngState,
    pub world_size: usize,
    pub global_batch: usize,
    pub metrics: Metrics,
    /// A pose run's per-epoch schedule state, so a resumed run continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_schedule: Option<EpochSchedule>,
}

/// The learning-rate scheduler's and early stopping's state between epochs (pose runs, whose
/// schedules step once per epoch on the validation loss).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct EpochSchedule {
    pub lr: f64,
    pub plateau_best: f64,
    pub plateau_bad_epochs: usize,
    pub plateau_cooldown: usize,
    pub early_best: f64,
    pub early_bad_epochs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub kind: String,
    pub seed: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Metrics {
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// (validation loss, checkpoint name) of the kept best checkpoints, best first.
    pub best: Vec<(f64, String)>,
    pub skipped_steps: u64,
}

/// What a checkpoint holds, in host buffers laid out like the model's [`ParamLayout`] (the
/// Adam moments like `moments_layout`: the same entries, at other offsets when the moments
/// hold only what trains).
pub struct Snapshot<'a> {
    pub layout: &'a ParamLayout,
    pub params: &'a [f32],
    pub moments_layout: &'a ParamLayout,
    pub exp_avg: &'a [f32],
    pub exp_avg_sq: &'a [f32],
    pub state: &'a TrainState,
    pub config_yaml: &'a str,
    /// The model family's data file, (name, contents): ("vocab.json", the gene vocabulary) or
    /// ("skeleton.json", the pose skeleton).
    pub data_file: (&'a str, &'a [u8]),
}

fn tensors_bytes(layout: &ParamLayout, buffers: &[(&str, &[f32])], path: &Path) -> Result<Vec<u8>> {
    let mut views = Vec::new();
    for (prefix, buf) in buffers {
        for e in layout.entries() {
            let data: &[f32] = &buf[e.view().range()];
            let v = TensorView::new(Dtype::F32, e.shape.clone(), bytemuck::cast_slice(data))
                .map_err(|err| invalid(path, format!("tensor {}: {err}", e.name)))?;
            views.push((format!("{prefix}{}", e.name), v));
        }
    }
    safetensors::tensor::serialize(views, None)
        .map_err(|err| invalid(path, format!("serializing tensors: {err}")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Writes checkpoint `root/name` atomically (replacing an existing one of that name).
pub fn save(root: &Path, name: &str, snap: &Snapshot) -> Result<PathBuf> {
    let final_dir = root.join(name);
    let (n, nm) = (snap.layout.total(), snap.moments_layout.total());
    if snap.params.len() < n || snap.exp_avg.len() < nm || snap.exp_avg_sq.len() < nm {
        return Err(invalid(
            &final_dir,
            "buffers shorter than the parameter layout",
        ));
    }
    let state_json = serde_json::to_vec_pretty(snap.state)
        .map_err(|e| invalid(&final_dir, format!("state.json: {e}")))?;
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "model.safetensors",
            tensors_bytes(snap.layout, &[("", snap.params)], &final_dir)?,
        ),
        (
            "optimizer.safetensors",
            tensors_bytes(
                snap.moments_layout,
                &[("exp_avg.", snap.exp_avg), ("exp_avg_sq.", snap.exp_avg_sq)],
                &final_dir,
            )?,
        ),
        ("state.json", state_json),
        ("config.yaml", snap.config_yaml.as_bytes().to_vec()),
        (snap.data_file.0, snap.data_file.1.to_vec()),
    ];
    write_dir(root, name, &files)
}

/// Writes `files` as the directory `root/name` with their manifest, atomically: under a
/// temporary name, fsynced, then renamed over any directory of that name.
pub fn write_dir(root: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io(root))?;
    let final_dir = root.join(name);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut manifest = Manifest::default();
    for (fname, bytes) in files {
        write_synced(&tmp.join(fname), bytes)?;
        manifest.add(fname, bytes);
    }
    let mbytes = manifest
        .to_json()
        .map_err(|e| invalid(&final_dir, format!("manifest: {e}")))?;
    write_synced(&tmp.join(MANIFEST), &mbytes)?;
    sync_dir(&tmp)?;
    // A directory cannot be renamed over a non-empty one: move the old one aside first.
    let old = root.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = final_dir.exists();
    if had_old {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    sync_dir(root)?;
    if had_old {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(final_dir)
}

/// A verified checkpoint, loaded into host buffers of `layout`.
pub struct Loaded {
    pub dir: PathBuf,
    pub params: Vec<f32>,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub state: TrainState,
    pub config_yaml: String,
}

fn fill_from(
    st: &SafeTensors,
    layout: &ParamLayout,
    prefix: &str,
    out: &mut [f32],
    dir: &Path,
) -> Result<()> {
    for e in layout.entries() {
        let name = format!("{prefix}{}", e.name);
        let t = st
            .tensor(&name)
            .map_err(|_| invalid(dir, format!("tensor {name} missing")))?;
        if t.dtype() != Dtype::F32 || t.shape() != e.shape.as_slice() {
            return Err(invalid(
                dir,
                format!(
                    "tensor {name} is {:?} {:?}, the model expects F32 {:?}",
                    t.dtype(),
                    t.shape(),
                    e.shape
                ),
            ));
        }
        let dst = &mut out[e.view().range()];
        for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    Ok(())
}

/// The parameters of `layout` from the model.safetensors of a checkpoint's (or an export's)
/// verified `files` (see [`verify`]) into `out`; entries the layout does not list are left
/// alone.
pub fn load_params(
    files: &HashMap<String, Vec<u8>>,
    dir: &Path,
    layout: &ParamLayout,
    out: &mut [f32],
) -> Result<()> {
    let bytes = files
        .get("model.safetensors")
        .ok_or_else(|| invalid(dir, "model.safetensors missing"))?;
    let model = SafeTensors::deserialize(bytes)
        .map_err(|e| invalid(dir, format!("model.safetensors: {e}")))?;
    fill_from(&model, layout, "", out, dir)
}

/// The tensors of `layout` in `buf` as safetensors bytes (what model.safetensors holds).
pub fn tensors(layout: &ParamLayout, buf: &[f32], path: &Path) -> Result<Vec<u8>> {
    tensors_bytes(layout, &[("", buf)], path)
}

/// Loads a checkpoint for a model of `layout`, after verifying its manifest.
pub fn load(dir: &Path, layout: &ParamLayout) -> Result<Loaded> {
    load_with(dir, layout, layout)
}

/// [`load`] with the Adam moments laid out like `moments_layout` (see [`Snapshot`]).
pub fn load_with(dir: &Path, layout: &ParamLayout, moments_layout: &ParamLayout) -> Result<Loaded> {
    let files = verify(dir)?;
    let get = |n: &str| {
        files
            .get(n)
            .ok_or_else(|| invalid(dir, format!("{n} missing")))
    };
    let n = layout.total();
    let mut params = vec![0.0f32; n];
    let mut exp_avg = vec![0.0f32; moments_layout.total()];
    let mut exp_avg_sq = vec![0.0f32; moments_layout.total()];
    let model = SafeTensors::deserialize(get("model.safetensors")?)
        .map_err(|e| invalid(dir, format!("model.safetensors: {e}")))?;
    fill_from(&model, layout, "", &mut params, dir)?;
    let opt_bytes = files.get("optimizer.safetensors").ok_or_else(|| {
        invalid(
            dir,
            "optimizer.safetensors missing: this is a weights-only export, not a training checkpoint to resume from",
        )
    })?;
    let opt = SafeTensors::deserialize(opt_bytes)
        .map_err(|e| invalid(dir, format!("optimizer.safetensors: {e}")))?;
    fill_from(&opt, moments_layout, "exp_avg.", &mut exp_avg, dir)?;
    fill_from(&opt, moments_layout, "exp_avg_sq.", &mut exp_avg_sq, dir)?;
    let state: TrainState = serde_json::from_slice(get("state.json")?)
        .map_err(|e| invalid(dir, format!("state.json: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(invalid(
            dir,
            format!(
                "checkpoint format {} is not the supported {FORMAT_VERSION}",
                state.format_version
            ),
        ));
    }
    let config_yaml = String::from_utf8_lossy(get("config.yaml")?).into_owned();
    Ok(Loaded {
        dir: dir.to_path_buf(),
        params,
        exp_avg,
        exp_avg_sq,
        state,
        config_yaml,
    })
}
