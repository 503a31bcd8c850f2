//! `coordinator data inspect|synth|synth-pose|wait`: look inside AnnData files (and SLEAP
//! labels), generate synthetic ones (AnnData, or pose labels),
//! and wait for a config's data to arrive (the init container of `coordinator deploy k8s`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use data::anndata::{self, ObsKind};
use data::synth::{synth_h5ad, SynthOptions};
use data::write::Compression;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Summarize AnnData files (cells, genes, stored values, X encoding, obs columns) or SLEAP
    /// labels (skeletons, videos, tracks, labeled frames, instances)
    Inspect {
        /// .h5ad files, .zarr stores or .slp labels
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Write a deterministic synthetic AnnData .h5ad (negative-binomial counts, cell types, CSR)
    Synth(SynthArgs),
    /// Write deterministic synthetic SLEAP labels (.pkg.slp, frames embedded as PNG): one
    /// animal per grayscale frame (body ellipse, head and tail discs) moving and turning over
    /// a textured background, skeleton head -> body -> tail, keypoints at the shapes' centres
    SynthPose(SynthPoseArgs),
    /// Wait until every data file of a config is present, no longer growing, and opens (as
    /// AnnData; a sleap-nn config's labels files as SLEAP labels whose videos are in place);
    /// relative paths against the current directory. The coordinator pod of `coordinator
    /// deploy k8s` runs this in an init container while the user copies the data onto the
    /// volume with `kubectl cp`
    Wait(WaitArgs),
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub config: crate::config_cmd::ConfigArgs,
    /// Copy a missing data file from DIR/<its relative path> when DIR has it (the container
    /// image carries the bundled example data under /opt/anvil)
    #[arg(long, value_name = "DIR")]
    pub seed: Option<PathBuf>,
    /// Give up after this many seconds [default: wait for as long as it takes]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Seconds between checks; a file counts as complete once its size and modification time
    /// stayed the same for one interval and it opens
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub interval: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Lzf,
}

#[derive(Args, Debug)]
pub struct SynthPoseArgs {
    /// Output labels path (.pkg.slp)
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Number of frames (one labeled animal each)
    #[arg(long, default_value_t = 300)]
    pub frames: usize,
    /// Frame height in pixels
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    /// Frame width in pixels
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    /// Seed: the same seed and sizes give the same file; another seed gives held-out frames
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Number of cells (rows)
    #[arg(long)]
    pub cells: usize,
    /// Number of genes (columns)
    #[arg(long)]
    pub genes: usize,
    /// Output .h5ad path
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Seed: the same seed and sizes give the same file
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mean fraction of genes expressed per cell
    #[arg(long, default_value_t = 0.1)]
    pub density: f64,
    /// Number of cell types (obs.cell_type categories)
    #[arg(long, default_value_t = 8)]
    pub cell_types: usize,
    /// Compression of X
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
}

pub fn run(cmd: DataCommand) -> ExitCode {
    let result = match cmd {
        DataCommand::Inspect { files } => inspect(&files),
        DataCommand::Synth(a) => synth(&a),
        DataCommand::SynthPose(a) => synth_pose(&a),
        DataCommand::Wait(a) => wait(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = 0;
    for (i, path) in files.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match inspect_one(path) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be read", files.len());
    }
    Ok(())
}

/// A shard directory (`coordinator shard`): its shards, cells, genes and stored values.
fn inspect_shards(dir: &Path) -> data::Result<()> {
    let shards = match data::shards::open_shard_dir(dir, None) {
        Ok(s) => s,
        Err(e) => {
            // A directory scModelForge wrote has no vocabulary: the manifest still says a lot.
            let manifest: data::shards::Manifest =
                match std::fs::read_to_string(dir.join("manifest.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                {
                    Some(m) => m,
                    None => return Err(e),
                };
            println!("{} (shard directory)", dir.display());
            println!("  shards: {}", manifest.n_shards);
            println!("  cells: {}", manifest.total_cells);
            println!("  cells per shard: {:?}", manifest.shard_sizes);
            println!("  genes: unknown without its vocabulary ({e})");
            return Ok(());
        }
    };
    let cells: usize = shards.iter().map(|r| r.n_obs()).sum();
    let stored: u64 = shards.iter().map(|r| r.x_info().nnz).sum();
    let genes = shards.first().map_or(0, |r| r.n_vars());
    println!("{} (shard directory)", dir.display());
    println!("  shards: {}", shards.len());
    println!("  cells: {cells}");
    println!("  vocabulary genes: {genes}");
    println!("  stored values: {stored}");
    for r in &shards {
        println!("    {}: {} cells", r.path().display(), r.n_obs());
    }
    Ok(())
}

fn inspect_one(path: &PathBuf) -> data::Result<()> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("slp"))
    {
        return inspect_slp(path);
    }
    if path.join("manifest.json").is_file() {
        return inspect_shards(path);
    }
    let r = anndata::open(path)?;
    let x = r.x_info();
    println!("{}", path.display());
    println!("  cells: {}", r.n_obs());
    println!("  genes: {}", r.n_vars());
    let density = if r.n_obs() > 0 && r.n_vars() > 0 {
        x.nnz as f64 / (r.n_obs() as f64 * r.n_vars() as f64)
    } else {
        0.0
    };
    println!("  nnz:   {} ({:.2}% of entries)", x.nnz, 100.0 * density);
    println!(
        "  X:     {}, {}, compression {}",
        x.encoding.as_str(),
        x.dtype,
        x.compression
    );
    let first: Vec<&str> = r.var_names().iter().take(5).map(|s| s.as_str()).collect();
    println!(
        "  var index: {}{}",
        first.join(", "),
        if r.n_vars() > 5 { ", ..." } else { "" }
    );
    let cols = r.obs_columns()?;
    println!("  obs columns: {}", cols.len());
    for (name, kind) in cols {
        match kind {
            ObsKind::Categorical { .. } => {
                let detail = match r.obs_column(&name) {
                    Ok(anndata::ObsColumn::Categorical { codes, categories }) => {
                        let mut counts = vec![0usize; categories.len()];
                        for &c in &codes {
                            if c >= 0 {
                                counts[c as usize] += 1;
                            }
                        }
                        let shown: Vec<String> = categories
                            .iter()
                            .zip(&counts)
                            .take(12)
                            .map(|(c, n)| format!("{c}: {n}"))
                            .collect();
                        format!(
                            " [{}{}]",
                            shown.join(", "),
                            if categories.len() > 12 { ", ..." } else { "" }
                        )
                    }
                    _ => String::new(),
                };
                println!("    {name}: {kind}{detail}");
            }
            _ => println!("    {name}: {kind}"),
        }
    }
    Ok(())
}

fn inspect_slp(path: &Path) -> data::Result<()> {
    use data::pose::VideoSource;
    let labels = data::pose::slp::read_labels(path)?;
    println!("{}", path.display());
    println!("  SLEAP labels");
    println!("  skeletons: {}", labels.skeletons.len());
    for s in &labels.skeletons {
        let pair =
            |&(a, b): &(usize, usize), sep: &str| format!("{}{sep}{}", s.nodes[a], s.nodes[b]);
        let edges: Vec<String> = s.edges.iter().map(|e| pair(e, "->")).collect();
        let symmetries: Vec<String> = s.symmetries.iter().map(|e| pair(e, "<->")).collect();
        println!(
            "    {}: {} nodes [{}]",
            s.name,
            s.nodes.len(),
            s.nodes.join(", ")
        );
        println!("      edges: [{}]", edges.join(", "));
        if !symmetries.is_empty() {
            println!("      symmetries: [{}]", symmetries.join(", "));
        }
    }
    println!("  videos: {}", labels.videos.len());
    for (i, v) in labels.videos.iter().enumerate() {
        let source = match &v.source {
            VideoSource::Embedded {
                file,
                dataset,
                format,
                frame_numbers,
            } => format!(
                "{} embedded {format} frames in {}:{dataset}",
                frame_numbers.len(),
                file.display()
            ),
            VideoSource::ImageSequence { files } => {
                format!("image sequence of {} files", files.len())
            }
            VideoSource::External { backend, .. } => format!("external {backend}"),
        };
        let shape = v
            .shape
            .map(|[n, h, w, c]| format!(", {n} frames of {h}x{w}x{c}"))
            .unwrap_or_default();
        let frames = labels.frames.iter().filter(|f| f.video == i).count();
        println!(
            "    [{i}] {}: {source}{shape}; {frames} labeled frames",
            v.filename
        );
    }
    println!("  tracks: {}", labels.tracks.len());
    let (user, predicted) = labels.frames.iter().fold((0, 0), |(u, p), f| {
        (
            u + f.user_instances().count(),
            p + f.predicted_instances().count(),
        )
    });
    println!("  labeled frames: {}", labels.frames.len());
    println!("  instances: {user} user, {predicted} predicted");
    Ok(())
}

fn synth(a: &SynthArgs) -> anyhow::Result<()> {
    let o = SynthOptions {
        cells: a.cells,
        genes: a.genes,
        seed: a.seed,
        n_types: a.cell_types,
        density: a.density,
        compression: match a.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip(4),
            CompressionArg::Lzf => Compression::Lzf,
        },
    };
    let t = std::time::Instant::now();
    synth_h5ad(&a.out, &o)?;
    eprintln!(
        "wrote {} ({} cells x {} genes) in {:.1}s",
        a.out.display(),
        a.cells,
        a.genes,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn synth_pose(a: &SynthPoseArgs) -> anyhow::Result<()> {
    let o = data::pose::synth::SynthPoseOptions {
        frames: a.frames,
        height: a.height,
        width: a.width,
        seed: a.seed,
    };
    let t = std::time::Instant::now();
    data::pose::synth::write_synth_pose(&a.output, &o)?;
    eprintln!(
        "wrote {} ({} frames of {}x{}, skeleton {}) in {:.1}s",
        a.output.display(),
        a.frames,
        a.height,
        a.width,
        data::pose::synth::NODES.join("->"),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn wait(args: &WaitArgs) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let (paths, kind): (Vec<PathBuf>, FileKind) = match args.config.load() {
        Ok(configs::AnyConfig::ScModelForge(c)) => (
            c.data.paths.iter().map(PathBuf::from).collect(),
            FileKind::AnnData,
        ),
        Ok(configs::AnyConfig::SleapNn(c)) => {
            let labels = c.data_config.labels_files();
            let paths = labels.into_iter().map(|(_, p)| PathBuf::from(p));
            (paths.collect(), FileKind::Labels)
        }
        Err(errors) => bail!("{}", errors),
    };
    if paths.is_empty() {
        eprintln!("anvil: the config names no data files; nothing to wait for");
        return Ok(());
    }
    if let Some(seed) = &args.seed {
        for p in &paths {
            seed_one(seed, p)?;
        }
    }
    let deadline = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    let interval = Duration::from_secs_f64(args.interval);
    let mut pending: Vec<Pending> = paths.into_iter().map(|p| Pending::new(p, kind)).collect();
    loop {
        for p in pending.iter_mut() {
            p.check();
        }
        pending.retain(|p| {
            if p.ready {
                eprintln!("anvil: {} is ready", p.path.display());
            }
            !p.ready
        });
        if pending.is_empty() {
            eprintln!("anvil: all data files are ready");
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let waiting: Vec<String> = pending
                .iter()
                .map(|p| format!("{} ({})", p.path.display(), p.state))
                .collect();
            bail!("data files still not ready: {}", waiting.join(", "));
        }
        std::thread::sleep(interval);
    }
}

/// What a data file must open as.
#[derive(Clone, Copy)]
enum FileKind {
    AnnData,
    /// SLEAP labels, with the files holding their labeled frames in place.
    Labels,
}

impl FileKind {
    fn open(self, path: &Path) -> Result<(), String> {
        match self {
            FileKind::AnnData => anndata::open(path).map(|_| ()).map_err(|e| e.to_string()),
            FileKind::Labels => {
                let labels = data::pose::slp::read_labels(path).map_err(|e| e.to_string())?;
                let missing = data::pose::slp::missing_videos(path, &labels);
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "its frames are in {}, not found (as recorded, nor beside it): copy them there",
                        missing.join(", ")
                    ))
                }
            }
        }
    }
}

/// A data file being waited for.
struct Pending {
    path: PathBuf,
    kind: FileKind,
    /// (bytes, latest modification) at the last check; None while missing.
    last: Option<(u64, SystemTime)>,
    /// What was last said about it.
    state: String,
    ready: bool,
}

impl Pending {
    fn new(path: PathBuf, kind: FileKind) -> Self {
        Pending {
            path,
            kind,
            last: None,
            state: String::new(),
            ready: false,
        }
    }

    /// Ready once the file stopped changing since the last check and opens as its kind (a
    /// truncated HDF5 file does not: HDF5 checks the file's length against its superblock).
    fn check(&mut self) {
        let now = fingerprint(&self.path);
        let state = match (now, self.last) {
            (None, _) => format!(
                "missing: copy it to {}",
                run::dir::absolute(&self.path).display()
            ),
            (Some(n), Some(l)) if n == l => match self.kind.open(&self.path) {
                Ok(()) => {
                    self.ready = true;
                    "ready".into()
                }
                Err(e) => format!("present but not readable yet: {e}"),
            },
            (Some((bytes, _)), _) => format!("arriving ({bytes} bytes so far)"),
        };
        self.last = now;
        if state != self.state && !self.ready {
            eprintln!("anvil: waiting for {}: {state}", self.path.display());
        }
        self.state = state;
    }
}

/// Total size and latest modification time of a file, or of a directory's files (a .zarr
/// store); None when it does not exist.
fn fingerprint(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    let mut total = (
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    );
    if meta.is_dir() {
        total.0 = 0;
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            if let Some((bytes, modified)) = fingerprint(&entry.path()) {
                total.0 += bytes;
                total.1 = total.1.max(modified);
            }
        }
    }
    Some(total)
}

/// Copies `seed/path` to `path` when `path` is missing and the seed has it (through a temporary
/// name, so a half-copied file never looks complete).
fn seed_one(seed: &Path, path: &Path) -> anyhow::Result<()> {
    if path.exists() || path.is_absolute() {
        return Ok(());
    }
    let from = seed.join(path);
    if !from.is_file() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.part", name.to_string_lossy()));
    std::fs::copy(&from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "anvil: copied {} from {} (bundled with the image)",
        path.display(),
        from.display()
    );
    Ok(())
}
