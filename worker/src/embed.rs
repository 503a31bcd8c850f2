//! `worker embed`: cell embeddings of a trained model for every cell of an AnnData file,
//! written into `obsm["X_anvil"]` of a copy of that file.
//!
//! The model, its tokenizer and preprocessing all come from the checkpoint (its stored config
//! and vocabulary), never from a separate config. Cells are read in file order, unmasked and
//! unshuffled, and pooled as `model.pooling` says with dropout off, so two runs give the same
//! bytes. Preprocessing statistics the config asks to compute from the data (a median library
//! size when `target_sum` is null, highly variable genes) are computed from the file being
//! embedded, as a training run on that file would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use configs::scmodelforge::{ScModelForgeConfig, TokenizerStrategy};
use configs::Sources;
use data::dataset::Dataset;
use data::pipeline::Workspace;
use data::vocab::GeneVocab;
use data::Pipeline;

use kernels::Device;

use crate::checkpoint;
use crate::model::{self, DataSpec, ScModel};

/// The key under `obsm` that embeddings are written to.
pub const OBSM_KEY: &str = "X_anvil";

/// The backbone of a LoRA fine-tuning checkpoint `dir` with its adapters merged into the base
/// weights: the frozen backbone from `finetune.checkpoint_path`, the adapters (and trained
/// biases) from `dir`.
fn lora_merged_params(
    files: &HashMap<String, Vec<u8>>,
    dir: &Path,
    cfg: &ScModelForgeConfig,
    ft: &configs::scmodelforge::FinetuneConfig,
    spec: DataSpec,
    prec: kernels::Precision,
) -> anyhow::Result<Vec<f32>> {
    use crate::finetune::lora;
    let Some(base_path) = ft.checkpoint() else {
        bail!(
            "checkpoint {} holds LoRA adapters but its config names no backbone (finetune.checkpoint_path)",
            dir.display()
        );
    };
    let base = Embedder::load(Path::new(base_path)).with_context(|| {
        format!(
            "the backbone of the LoRA checkpoint {} (its finetune.checkpoint_path)",
            dir.display()
        )
    })?;
    let mut adapted = model::build(&cfg.model, spec, prec)?;
    let modules = adapted.attach_lora(&lora::spec(&ft.lora))?;
    let layout = adapted.layout().clone();
    if base.params.len() > layout.total() {
        bail!(
            "the backbone {} holds {} parameter values, more than the model of {} ({})",
            base.dir.display(),
            base.params.len(),
            dir.display(),
            layout.total()
        );
    }
    let mut params = vec![0.0f32; layout.total()];
    params[..base.params.len()].copy_from_slice(&base.params);
    let trained = lora::trainable(&layout, &modules, ft.lora.bias);
    let saved = layout.subset(|e| trained.contains(&e.view().range()));
    checkpoint::load_params(files, dir, &saved, &mut params)
        .with_context(|| format!("--checkpoint {}", dir.display()))?;
    let mut merged = lora::merge(&layout, &params, ft.lora.alpha as f64)
        .map_err(|e| anyhow!("checkpoint {}: {e}", dir.display()))?;
    merged.truncate(base.params.len());
    Ok(merged)
}

/// A trained model ready to embed cells: rebuilt from a checkpoint's config and vocabulary.
pub struct Embedder {
    /// The checkpoint directory it was loaded from.
    pub dir: PathBuf,
    pub cfg: ScModelForgeConfig,
    pub vocab: GeneVocab,
    pub model: Box<dyn ScModel>,
    pub params: Vec<f32>,
}

impl Embedder {
    /// Loads `path`: a checkpoint directory, or a directory of checkpoints (the newest
    /// verified one), as `--resume` resolves it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!("checkpoint {} does not exist", path.display());
        }
        let dir = checkpoint::resolve_resume(path)
            .with_context(|| format!("--checkpoint {}", path.display()))?;
        let files =
            checkpoint::verify(&dir).with_context(|| format!("--checkpoint {}", dir.display()))?;
        Self::from_verified(dir, &files)
    }

    /// The model of the checkpoint `dir` from its files as [`checkpoint::verify`] returned
    /// them (the config, vocabulary and weights are read from those, not the disk again).
    pub fn from_verified(dir: PathBuf, files: &HashMap<String, Vec<u8>>) -> anyhow::Result<Self> {
        let get = |n: &str| {
            files
                .get(n)
                .ok_or_else(|| anyhow!("checkpoint {}: {n} missing", dir.display()))
        };
        let yaml = String::from_utf8_lossy(get("config.yaml")?).into_owned();
        let cfg_name = dir.join("config.yaml").display().to_string();
        let cfg: ScModelForgeConfig = Sources::from_str(&yaml, &cfg_name)
            .and_then(|s| s.load_as())
            .map_err(|e| anyhow!("checkpoint config {cfg_name}: {e}"))?;
        let vocab = vocab_from_json(get("vocab.json")?)
            .with_context(|| format!("checkpoint {}: vocab.json", dir.display()))?;
        let spec = DataSpec {
            vocab_size: vocab.len(),
            values_are_bins: cfg.tokenizer.strategy == TokenizerStrategy::BinnedExpression,
        };
        let prec = model::precision_of(cfg.training.precision);
        let model = model::build(&cfg.model, spec, prec)?;
        let params = match cfg.finetune.as_ref().filter(|f| f.lora.enabled) {
            Some(ft) => lora_merged_params(files, &dir, &cfg, ft, spec, prec)?,
            None => {
                let mut params = vec![0.0f32; model.layout().total()];
                checkpoint::load_params(files, &dir, model.layout(), &mut params)
                    .with_context(|| format!("--checkpoint {}", dir.display()))?;
                params
            }
        };
        Ok(Embedder {
            dir,
            cfg,
            vocab,
            model,
            params,
        })
    }

    /// The pipeline that tokenizes `data` as this model was trained to see cells: the
    /// checkpoint's vocabulary, tokenizer and preprocessing, no masking.
    pub fn pipeline(&self, data: &Path) -> anyhow::Result<Pipeline> {
        let file =
            data::anndata::open(data).with_context(|| format!("--data {}", data.display()))?;
        let n_vars = file.n_vars();
        let dataset = Dataset::new(vec![file], self.vocab.clone());
        if dataset.unknown_genes()[0] >= n_vars {
            bail!(
                "--data {}: none of its {n_vars} genes (var_names) is in the checkpoint's vocabulary of {} genes ({})",
                data.display(),
                self.vocab.n_genes(),
                self.dir.display()
            );
        }
        let mut pipeline = Pipeline::with_dataset(&self.cfg, dataset)
            .with_context(|| format!("--data {}", data.display()))?;
        pipeline.masker = None;
        Ok(pipeline)
    }

    /// Embeddings of `cells` (global ids of `pipeline`), row-major [cells, dim].
    pub fn embed_cells(
        &mut self,
        pipeline: &Pipeline,
        cells: &[u64],
        ws: &mut Workspace,
    ) -> anyhow::Result<Vec<f32>> {
        let batch = pipeline.batch(cells, None, ws)?;
        Ok(self.model.cell_embeddings(&self.params, &batch)?)
    }

    /// Replaces the trained weights by the architecture's initialization from
    /// `training.seed` (the "untrained" reference of the benchmarks); returns the seed.
    pub fn reset_to_initialization(&mut self) -> u64 {
        let seed = self.cfg.training.seed as u64;
        self.params = self.model.layout().init_host(seed);
        seed
    }

    /// Embeddings of every cell of `pipeline`, in file order, `batch_size` cells at a time;
    /// `progress(done, total)` hears after each batch.
    pub fn embed_all(
        &mut self,
        pipeline: &Pipeline,
        batch_size: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> anyhow::Result<Vec<f32>> {
        let n = pipeline.dataset.n_cells();
        self.embed_range(pipeline, 0..n, batch_size, progress)
    }

    /// Embeddings of the cells `range` of `pipeline` (file order), as [`Self::embed_all`].
    pub fn embed_range(
        &mut self,
        pipeline: &Pipeline,
        range: std::ops::Range<u64>,
        batch_size: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> anyhow::Result<Vec<f32>> {
        embed_range(
            self.model.as_mut(),
            &self.params,
            pipeline,
            range,
            batch_size,
            progress,
        )
    }
}

/// Embeddings [cells, dim] of every cell of `pipeline` by `model` with `params` (dropout off,
/// unmasked), in file order, `batch_size` (> 0) cells at a time; `progress(done, total)`
/// hears after each batch. What `worker embed` writes and the in-training assessment scores.
pub fn embed_dataset<D: Device<f32>>(
    model: &mut dyn ScModel<D>,
    params: &D::Mem,
    pipeline: &Pipeline,
    batch_size: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Vec<f32>> {
    let n = pipeline.dataset.n_cells();
    embed_range(model, params, pipeline, 0..n, batch_size, progress)
}

/// Embeddings [cells, dim] of the cells `range` (global ids, file order) of `pipeline`, as
/// [`embed_dataset`] computes them; `progress(done, total)` counts within the range.
pub fn embed_range<D: Device<f32>>(
    model: &mut dyn ScModel<D>,
    params: &D::Mem,
    pipeline: &Pipeline,
    range: std::ops::Range<u64>,
    batch_size: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Vec<f32>> {
    if batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let dim = model.embedding_dim();
    let total = range.end - range.start;
    let mut out = Vec::with_capacity(total as usize * dim);
    let mut ws = Workspace::default();
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch_size as u64).min(range.end);
        let cells: Vec<u64> = (start..end).collect();
        let batch = pipeline.batch(&cells, None, &mut ws)?;
        let e = model.cell_embeddings(params, &batch)?;
        if e.len() != cells.len() * dim {
            bail!(
                "the model returned {} values for {} cells of width {dim}",
                e.len(),
                cells.len()
            );
        }
        out.extend_from_slice(&e);
        start = end;
        progress(start - range.start, total);
    }
    Ok(out)
}

fn vocab_from_json(bytes: &[u8]) -> anyhow::Result<GeneVocab> {
    #[derive(serde::Deserialize)]
    struct VocabFile {
        genes: Vec<String>,
    }
    let v: VocabFile = serde_json::from_slice(bytes)?;
    if v.genes.is_empty() {
        bail!("contains no genes");
    }
    Ok(GeneVocab::from_genes(v.genes))
}

/// What `worker embed` (and `coordinator embed`) is asked to do.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub output: PathBuf,
    /// Cells per forward pass (default: the checkpoint's `training.batch_size`).
    pub batch_size: Option<usize>,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Take the embeddings from the parts that `of` workers wrote into `dir` (see
    /// [`crate::embed_parts`]) instead of computing them.
    pub from_parts: Option<(usize, PathBuf)>,
}

/// Removes the temporary output unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Embeds every cell of `opts.data` (or reads what workers embedded, `opts.from_parts`) and
/// writes a copy of it with `obsm["X_anvil"]` to `opts.output` (through a temporary file
/// renamed into place). Returns (cells, dim).
pub fn run(opts: &EmbedOptions) -> anyhow::Result<(usize, usize)> {
    let (data, output) = (&opts.data, &opts.output);
    if output.as_os_str().is_empty() {
        bail!("--output is empty");
    }
    if same_file(data, output) || data == output {
        bail!(
            "--output {} is the input file: the input is never modified, name another file",
            output.display()
        );
    }
    if output.exists() && !opts.overwrite {
        bail!(
            "--output {} already exists (pass --overwrite to replace it)",
            output.display()
        );
    }
    check_data(data)?;
    let t0 = Instant::now();
    let (values, n, dim) = match &opts.from_parts {
        Some((of, dir)) => {
            let (values, n, dim) = crate::embed_parts::read_all(dir, *of)?;
            let n_obs = data::anndata::open(data)
                .with_context(|| format!("--data {}", data.display()))?
                .n_obs();
            if n != n_obs {
                bail!(
                    "the embedding parts in {} hold {n} cells, but --data {} has {n_obs}",
                    dir.display(),
                    data.display()
                );
            }
            (values, n, dim)
        }
        None => {
            let mut emb = Embedder::load(&opts.checkpoint)?;
            let pipeline = emb.pipeline(data)?;
            let n = pipeline.dataset.n_cells();
            let dim = emb.model.embedding_dim();
            let batch_size = opts.batch_size.unwrap_or(emb.cfg.training.batch_size);
            eprintln!(
                "embedding {n} cells of {} with {} (width {dim}, {batch_size} cells per batch)",
                data.display(),
                emb.dir.display()
            );
            let values = emb.embed_all(&pipeline, batch_size, &mut progress_printer("embed"))?;
            (values, n as usize, dim)
        }
    };
    write_copy(data, output, opts.overwrite, &values, n, dim)?;
    eprintln!(
        "wrote {} ({n} cells, obsm[\"{OBSM_KEY}\"] of width {dim}) in {:.1}s",
        output.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok((n, dim))
}

fn check_data(data: &Path) -> anyhow::Result<()> {
    if !data.is_file() {
        bail!(
            "--data {}: no such file (an .h5ad file is expected)",
            data.display()
        );
    }
    Ok(())
}

/// A `progress(done, total)` that prints `what: done/total cells (..%), .. cells/s` at most
/// every 5 seconds and at the end.
fn progress_printer(what: &str) -> impl FnMut(u64, u64) + '_ {
    let t0 = Instant::now();
    let mut last = Instant::now();
    move |done, total| {
        if last.elapsed() >= Duration::from_secs(5) || done == total {
            last = Instant::now();
            let secs = t0.elapsed().as_secs_f64();
            say(&format!(
                "{what}: {done}/{total} cells ({:.0}%), {:.0} cells/s",
                100.0 * done as f64 / total.max(1) as f64,
                done as f64 / secs.max(1e-9)
            ));
        }
    }
}

/// Prints `line` to stderr in one write, so that the lines of workers sharing a terminal do
/// not interleave mid-line.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// One worker's share of a distributed embedding (`worker embed --part R/N --parts-dir D`):
/// embeds its contiguous range of the cells of `data` with the checkpoint's model (or, with
/// `untrained`, its architecture at initialization) and writes the part file. Returns the
/// number of cells it embedded.
pub fn run_part(
    checkpoint: &Path,
    data: &Path,
    batch_size: Option<usize>,
    untrained: bool,
    part: &crate::embed_parts::Part,
) -> anyhow::Result<usize> {
    check_data(data)?;
    if !part.dir.is_dir() {
        bail!("--parts-dir {}: no such directory", part.dir.display());
    }
    let mut emb = Embedder::load(checkpoint)?;
    if untrained {
        emb.reset_to_initialization();
    }
    let pipeline = emb.pipeline(data)?;
    let n = pipeline.dataset.n_cells();
    let cells = part.cells(n);
    let dim = emb.model.embedding_dim();
    let batch_size = batch_size.unwrap_or(emb.cfg.training.batch_size);
    let who = format!("embed worker {}/{}", part.rank, part.of);
    say(&format!(
        "{who}: cells {}..{} of {n} in {} with {} (width {dim}, {batch_size} cells per batch)",
        cells.start,
        cells.end,
        data.display(),
        emb.dir.display()
    ));
    let values = emb.embed_range(
        &pipeline,
        cells.clone(),
        batch_size,
        &mut progress_printer(&who),
    )?;
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        bail!(
            "the embedding of cell {} is not finite",
            cells.start as usize + i / dim.max(1)
        );
    }
    crate::embed_parts::write(part, n, cells.clone(), dim, &values)?;
    Ok((cells.end - cells.start) as usize)
}

/// Writes a copy of `data` with `obsm["X_anvil"]` = `values` [n, dim] to `output`, through a
/// temporary file beside it that is renamed into place.
fn write_copy(
    data: &Path,
    output: &Path,
    overwrite: bool,
    values: &[f32],
    n: usize,
    dim: usize,
) -> anyhow::Result<()> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .ok_or_else(|| anyhow!("--output {} names no file", output.display()))?
        .to_string_lossy();
    let tmp = TempFile(Some(
        parent.join(format!(".{name}.tmp-{}", std::process::id())),
    ));
    let tmp_path = tmp.0.clone().unwrap_or_default();
    std::fs::copy(data, &tmp_path)
        .with_context(|| format!("copying {} to {}", data.display(), tmp_path.display()))?;
    data::write::put_obsm(&tmp_path, OBSM_KEY, values, n, dim)
        .with_context(|| format!("writing obsm/{OBSM_KEY} for --output {}", output.display()))?;
    if output.exists() && !overwrite {
        bail!(
            "--output {} appeared while embedding (pass --overwrite to replace it)",
            output.display()
        );
    }
    std::fs::rename(&tmp_path, output)
        .with_context(|| format!("renaming {} to {}", tmp_path.display(), output.display()))?;
    let mut tmp = tmp;
    tmp.0 = None;
    Ok(())
}
