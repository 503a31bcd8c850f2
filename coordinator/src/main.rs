//! `coordinator`: anvil's command line. Validates and shows configs today; plans and launches
//! distributed training runs as the rest of the system lands.

mod benchmark_cmd;
mod config_cmd;
mod data_cmd;
mod deploy;
mod embed_cmd;
mod export_cmd;
mod finetune_cmd;
mod launch;
mod pose_cmd;
mod preprocess_cmd;
mod server;
mod shard_cmd;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "anvil: distributed training of single-cell foundation models and pose estimators",
    long_about = "anvil trains the models that scModelForge (single-cell foundation models) and \
                  sleap-nn (pose estimation) describe, from the same YAML configs, on one machine \
                  or many.\n\nStart with `coordinator config validate --config configs/quickstart.yaml`.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and inspect config files (scModelForge or sleap-nn YAML)
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Train: plan the run, start (or admit) its workers, supervise, restart on failure
    Launch(Box<launch::LaunchArgs>),
    /// Fine-tune a pretrained checkpoint on a task (the config's finetune section): a launch
    /// whose workers train a classification or regression head on the backbone
    ///
    /// Example: `coordinator finetune --config configs/finetune_cell_type.yaml --checkpoint
    /// runs/quickstart/checkpoints --nodes 2`
    Finetune(Box<finetune_cmd::FinetuneArgs>),
    /// Inspect AnnData files and generate synthetic ones
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Write a trained model's cell embeddings into obsm["X_anvil"] of a copy of an .h5ad file
    ///
    /// Example: `coordinator embed --checkpoint RUN/checkpoints --data F.h5ad --output G.h5ad`
    Embed(embed_cmd::EmbedArgs),
    /// Write a checkpoint as a weights-only model directory; a LoRA fine-tuning checkpoint gets
    /// its adapters merged into the backbone's weights
    ///
    /// Example: `coordinator export --checkpoint runs/finetune_lora/checkpoints --output model/`
    Export(export_cmd::ExportArgs),
    /// Run the config's eval.benchmarks (linear_probe, embedding_quality, perturbation) on a
    /// checkpoint's cell embeddings: results.json, report.md and embedding.png in --output
    ///
    /// Example: `coordinator benchmark --config configs/quickstart.yaml --checkpoint
    /// runs/quickstart/checkpoints --output bench/`
    Benchmark(Box<benchmark_cmd::BenchmarkArgs>),
    /// Normalize, log-transform and select highly variable genes of an .h5ad file once,
    /// writing a new .h5ad (the config's data.preprocessing, or library size 1e4 + log1p)
    ///
    /// Example: `coordinator preprocess --input raw.h5ad --output processed.h5ad --hvg 2000`
    Preprocess(preprocess_cmd::PreprocessArgs),
    /// Convert a config's data files into memory-mapped shards (genes aligned to one
    /// vocabulary once) that `data.shards` trains from
    ///
    /// Example: `coordinator shard --config configs/quickstart.yaml --output-dir shards/`
    Shard(shard_cmd::ShardArgs),
    /// Predict poses with trained models (one single_instance model, or centroid +
    /// centered_instance for top-down) on the labeled frames of a .slp file
    ///
    /// Example: `coordinator track --model runs/minimal_single_instance --data labels.pkg.slp
    /// --output predictions.slp`
    Track(pose_cmd::TrackArgs),
    /// Score predictions against ground truth as sleap-nn does (OKS mAP/mAR, distances, PCK,
    /// visibility): a summary on stdout, metrics.json and metrics.md in --output
    Eval(pose_cmd::EvalArgs),
    /// Inspect the network a sleap-nn config describes
    #[command(subcommand)]
    Model(pose_cmd::ModelCommand),
    /// Render what a cluster needs to run anvil (Kubernetes manifests)
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run::logging::init();
    if matches!(
        cli.command,
        Command::Config(_) | Command::Data(_) | Command::Deploy(_) | Command::Model(_)
    ) {
        end_quietly_on_a_closed_pipe();
    }
    match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Data(cmd) => data_cmd::run(cmd),
        Command::Launch(args) => launch::run(*args),
        Command::Embed(args) => embed_cmd::run(args),
        Command::Export(args) => export_cmd::run(args),
        Command::Finetune(args) => finetune_cmd::run(*args),
        Command::Benchmark(args) => benchmark_cmd::run(*args),
        Command::Deploy(cmd) => deploy::run(cmd),
        Command::Preprocess(args) => preprocess_cmd::run(args),
        Command::Shard(args) => shard_cmd::run(args),
        Command::Track(args) => pose_cmd::run_track(args),
        Command::Eval(args) => pose_cmd::run_eval(args),
        Command::Model(cmd) => pose_cmd::run_model(cmd),
    }
}

/// For the commands that only print (and hold no sockets): a reader that goes away (`| head`)
/// ends the process quietly, as it ends `cat`, instead of a panic in `println!`. Rust ignores
/// SIGPIPE by default; the long-running commands keep that.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restores one signal's default disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
