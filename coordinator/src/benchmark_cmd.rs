//! `coordinator benchmark`: the config's `eval.benchmarks` on a checkpoint's cell embeddings,
//! written to `results.json` and `report.md` in an output directory (scModelForge's
//! `benchmark` verb). The config is checked here first, so a benchmark this build does not
//! have is refused by name before anything runs; the computing is done by the sibling `worker`
//! binary's `worker benchmark` (the coordinator never links compute, see ARCHITECTURE.md),
//! whose output and exit status are passed through.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Args;
use configs::ScModelForgeConfig;

use crate::embed_cmd::{embed_parts, pin_checkpoint, ExternalArgs, PartsDir};
use crate::launch::procs::{run_worker_verb, sibling_executable};

#[derive(Args)]
pub struct BenchmarkArgs {
    /// scModelForge YAML config whose eval.benchmarks to run (linear_probe when the list is empty)
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Override one field, e.g. `--set eval.batch_size=64` (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// A checkpoint directory, or a directory of checkpoints such as <run>/checkpoints (the
    /// newest complete one is used); not needed with --embedding pca
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// The AnnData file (.h5ad) to benchmark on [default: the config's data.paths, if it names
    /// one file]
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Directory for results.json, report.md and embedding.png (created; those files are replaced)
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,
    /// What to score: the checkpoint's embeddings (model), the same architecture at
    /// initialization (untrained), or principal components of log-normalized expression (pca)
    /// [default: model]
    #[arg(long, value_parser = ["model", "untrained", "pca"])]
    embedding: Option<String>,
    /// Principal components for --embedding pca
    #[arg(long, default_value_t = 50, value_name = "N")]
    n_pcs: usize,
    /// Cells per forward pass [default: eval.batch_size]
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Worker processes that each embed a share of the cells, started on this machine (they
    /// share its cores) unless --external; the metrics are then computed once. With --embedding pca there is no
    /// model to run, and one process computes the components
    #[arg(long, default_value_t = 1, value_name = "N")]
    nodes: usize,
    #[command(flatten)]
    external: ExternalArgs,
    /// The worker executable that computes [default: `worker` beside this one]
    #[arg(long, value_name = "FILE")]
    worker_bin: Option<PathBuf>,
}

pub fn run(args: BenchmarkArgs) -> ExitCode {
    match benchmark(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn benchmark(args: BenchmarkArgs) -> anyhow::Result<ExitCode> {
    let cfg: ScModelForgeConfig =
        configs::load_file_as(&args.config, &args.overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(why) = run::support::unsupported_benchmark(&cfg) {
        anyhow::bail!("{}: {why}", args.config.display());
    }
    let embedding = args.embedding.as_deref().unwrap_or("model");
    if embedding != "pca" && args.checkpoint.is_none() {
        anyhow::bail!("--checkpoint is required (except with --embedding pca)");
    }
    let bin = match args.worker_bin {
        Some(b) => b,
        None => sibling_executable("worker")?,
    };
    if args.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("benchmark").arg("--config").arg(&args.config);
    for o in &args.overrides {
        cmd.arg("--set").arg(o);
    }
    cmd.arg("--output")
        .arg(&args.output)
        .arg("--embedding")
        .arg(embedding)
        .arg("--n-pcs")
        .arg(args.n_pcs.to_string());
    if let Some(n) = args.batch_size {
        cmd.arg("--batch-size").arg(n.to_string());
    }
    // Kept until the benchmark has read it.
    let mut _parts = None;
    let external = args.external.workers()?;
    if external.is_some() && embedding == "pca" {
        anyhow::bail!(
            "--external: --embedding pca runs in one process (there is no model to share out)"
        );
    }
    match (
        &args.checkpoint,
        (args.nodes > 1 || external.is_some()) && embedding != "pca",
    ) {
        (Some(c), true) => {
            let data = run::support::benchmark_data(&cfg, args.data.as_deref(), &args.config)
                .map_err(|e| anyhow::anyhow!(e))?;
            let checkpoint = pin_checkpoint(c)?;
            std::fs::create_dir_all(&args.output)
                .with_context(|| format!("creating --output {}", args.output.display()))?;
            let parts = PartsDir::inside(
                &args.output,
                &format!(".embedding-parts-{}", std::process::id()),
            )?;
            let batch = args.batch_size.unwrap_or(cfg.eval.batch_size);
            let untrained = embedding == "untrained";
            embed_parts(
                &bin,
                &checkpoint,
                &data,
                Some(batch),
                untrained,
                args.nodes,
                &parts.0,
                external.as_ref(),
            )?;
            cmd.arg("--checkpoint")
                .arg(&checkpoint)
                .arg("--data")
                .arg(&data)
                .arg("--from-parts")
                .arg(args.nodes.to_string())
                .arg("--parts-dir")
                .arg(&parts.0);
            _parts = Some(parts);
        }
        (checkpoint, _) => {
            if let Some(c) = checkpoint {
                cmd.arg("--checkpoint").arg(c);
            }
            if let Some(d) = &args.data {
                cmd.arg("--data").arg(d);
            }
        }
    }
    run_worker_verb(&bin, "benchmark", &mut cmd)
}
