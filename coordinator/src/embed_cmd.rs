//! `coordinator embed`: a trained model's cell embeddings, written into `obsm["X_anvil"]` of a
//! copy of an AnnData file. The coordinator never links compute (see ARCHITECTURE.md), so the
//! work is done by the sibling `worker` binary's `worker embed`, run with the same arguments;
//! its output and exit status are passed through.
//!
//! With `--nodes N` (N > 1), N worker processes each embed a contiguous share of the cells into
//! a part file (`worker embed --part R/N`), then one more writes the copy from the parts
//! (`--from-parts N`); the parts live in a hidden directory beside the output, removed at the
//! end. The N workers are started here, or with `--external` they are started elsewhere (Slurm,
//! Kubernetes, by hand) and register with this coordinator as a training run's do
//! ([`crate::launch::task`]); the parts directory must then be on a file system they share.
//! `coordinator benchmark --nodes N` embeds the same way.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::Args;

use crate::launch::procs::{run_worker_group, run_worker_verb, sibling_executable};
use crate::launch::task::{run_on_external_workers, ExternalWorkers};
use crate::tls::TlsArgs;

/// Workers started elsewhere for the embedding shares (`--nodes N --external`).
#[derive(Args, Debug, Clone)]
pub struct ExternalArgs {
    /// Do not start the --nodes workers here: wait for them to register with `worker
    /// --coordinator HOST:PORT` (started by Slurm, Kubernetes or by hand, on hosts that share
    /// the output's file system)
    #[arg(long)]
    external: bool,
    /// Address to listen on for external workers
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "0.0.0.0:50051",
        requires = "external"
    )]
    listen: String,
    /// The run token external workers present [default: a new one, written beside the output]
    #[arg(long, value_name = "FILE", requires = "external")]
    token_file: Option<PathBuf>,
    /// Seconds to wait for every external worker to register
    #[arg(
        long,
        default_value_t = 300.0,
        value_name = "SECS",
        requires = "external"
    )]
    register_timeout: f64,
    /// Seconds without a word from a registered worker after which it counts as lost
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECS",
        requires = "external"
    )]
    heartbeat_timeout: f64,
    /// TLS for the external workers' registration (`--tls-cert`, `--tls-key`; workers connect
    /// with `worker --tls-ca`)
    #[command(flatten)]
    tls: TlsArgs,
}

impl ExternalArgs {
    /// The external workers to wait for; None without --external, where TLS flags are an
    /// error (workers started here talk to no control plane).
    pub fn workers(&self) -> anyhow::Result<Option<ExternalWorkers>> {
        if !self.external {
            if self.tls.tls_cert.is_some() {
                bail!("--tls-cert secures the registration of --external workers; add --external or leave it out");
            }
            return Ok(None);
        }
        Ok(Some(ExternalWorkers {
            listen: self.listen.clone(),
            tls: self.tls.clone(),
            token_file: self.token_file.clone(),
            register_timeout: std::time::Duration::from_secs_f64(self.register_timeout),
            heartbeat_timeout: std::time::Duration::from_secs_f64(self.heartbeat_timeout),
        }))
    }
}

#[derive(Args)]
pub struct EmbedArgs {
    /// A checkpoint directory, or a directory of checkpoints such as <run>/checkpoints (the
    /// newest complete one is used). The model, tokenizer and vocabulary come from it
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The AnnData file (.h5ad) whose cells to embed; it is never modified
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where to write the copy of --data with obsm["X_anvil"] (float32, cells x width) added
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// Cells per forward pass [default: the checkpoint's training.batch_size]
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Replace --output if it exists
    #[arg(long)]
    overwrite: bool,
    /// Worker processes that each embed a share of the cells, started on this machine (they
    /// share its cores) unless --external
    #[arg(long, default_value_t = 1, value_name = "N")]
    nodes: usize,
    #[command(flatten)]
    external: ExternalArgs,
    /// The worker executable that computes the embeddings [default: `worker` beside this one]
    #[arg(long, value_name = "FILE")]
    worker_bin: Option<PathBuf>,
}

pub fn run(args: EmbedArgs) -> ExitCode {
    match embed(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn embed(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let bin = match &args.worker_bin {
        Some(b) => b.clone(),
        None => sibling_executable("worker")?,
    };
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let external = args.external.workers()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("embed")
        .arg("--data")
        .arg(&args.data)
        .arg("--output")
        .arg(&args.output);
    if args.overwrite {
        cmd.arg("--overwrite");
    }
    // Kept until the copy is written from it.
    let mut _parts = None;
    if args.nodes == 1 && external.is_none() {
        cmd.arg("--checkpoint").arg(&args.checkpoint);
        if let Some(n) = args.batch_size {
            cmd.arg("--batch-size").arg(n.to_string());
        }
    } else {
        // Checked here as the worker would, before N processes load the model.
        if args.output.exists() && !args.overwrite {
            bail!(
                "--output {} already exists (pass --overwrite to replace it)",
                args.output.display()
            );
        }
        let checkpoint = pin_checkpoint(&args.checkpoint)?;
        let parts = PartsDir::beside(&args.output)?;
        embed_parts(
            &bin,
            &checkpoint,
            &args.data,
            args.batch_size,
            false,
            args.nodes,
            &parts.0,
            external.as_ref(),
        )?;
        cmd.arg("--checkpoint")
            .arg(&checkpoint)
            .arg("--from-parts")
            .arg(args.nodes.to_string())
            .arg("--parts-dir")
            .arg(&parts.0);
        _parts = Some(parts);
    }
    run_worker_verb(&bin, "embed", &mut cmd)
}

/// A checkpoint directory, or a directory of checkpoints pinned now to its newest complete
/// one, so that every worker of a group loads the same weights.
pub fn pin_checkpoint(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    run::checkpoint::resolve_resume(path)
        .map_err(|e| anyhow::anyhow!("--checkpoint {}: {e}", path.display()))
}

/// The hidden directory the workers' part files go to; removed (with them) when dropped.
pub struct PartsDir(pub PathBuf);

impl PartsDir {
    /// A new directory beside `file` (so that it is on the same file system).
    pub fn beside(file: &Path) -> anyhow::Result<Self> {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embedding".into());
        Self::inside(&parent, &format!(".{name}.parts-{}", std::process::id()))
    }

    /// A new directory `name` in `dir`.
    pub fn inside(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let path = dir.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| {
            format!("creating the embedding parts directory {}", path.display())
        })?;
        Ok(PartsDir(path))
    }
}

impl Drop for PartsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `nodes` `worker embed --part R/N` (the cells of `data` split between them), as local
/// processes or on `external` workers, and waits for all; their part files are in `dir` when
/// this returns Ok.
#[allow(clippy::too_many_arguments)]
pub fn embed_parts(
    bin: &Path,
    checkpoint: &Path,
    data: &Path,
    batch_size: Option<usize>,
    untrained: bool,
    nodes: usize,
    dir: &Path,
    external: Option<&ExternalWorkers>,
) -> anyhow::Result<()> {
    if !data.is_file() {
        bail!(
            "--data {}: no such file (an .h5ad file is expected)",
            data.display()
        );
    }
    // Absolute paths: an external worker's working directory is its own.
    let abs = |p: &Path| run::dir::absolute(p).display().to_string();
    let mut task: Vec<String> = vec![
        "embed".into(),
        "--checkpoint".into(),
        abs(checkpoint),
        "--data".into(),
        abs(data),
        "--parts-dir".into(),
        abs(dir),
    ];
    if let Some(n) = batch_size {
        task.extend(["--batch-size".into(), n.to_string()]);
    }
    if untrained {
        task.push("--untrained".into());
    }
    if let Some(ext) = external {
        return run_on_external_workers("embed", nodes, task, ext, dir.join("token"));
    }
    eprintln!("embedding with {nodes} worker processes");
    run_worker_group(bin, "embed", nodes, |rank| {
        let mut cmd = Command::new(bin);
        cmd.args(&task).arg("--part").arg(format!("{rank}/{nodes}"));
        cmd
    })
}
