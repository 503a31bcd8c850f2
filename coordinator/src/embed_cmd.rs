//! `coordinator embed`: a trained model's cell embeddings, written into `obsm["X_anvil"]` of a
//! copy of an AnnData file. The coordinator never links compute (see ARCHITECTURE.md), so the
//! work is done by the sibling `worker` binary's `worker embed`, run with the same arguments;
//! its output and exit status are passed through.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;

use crate::launch::procs::{run_worker_verb, sibling_executable};

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
    let bin = match args.worker_bin {
        Some(b) => b,
        None => sibling_executable("worker")?,
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("embed")
        .arg("--checkpoint")
        .arg(&args.checkpoint)
        .arg("--data")
        .arg(&args.data)
        .arg("--output")
        .arg(&args.output);
    if let Some(n) = args.batch_size {
        cmd.arg("--batch-size").arg(n.to_string());
    }
    if args.overwrite {
        cmd.arg("--overwrite");
    }
    run_worker_verb(&bin, "embed", &mut cmd)
}
