//! `coordinator export`: a checkpoint as a weights-only model directory, with LoRA adapters
//! merged into the backbone's weights. The coordinator never links compute (see
//! ARCHITECTURE.md), so the sibling `worker` binary's `worker export` does the work; its output
//! and exit status are passed through.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;

use crate::launch::procs::{run_worker_verb, sibling_executable};

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint directory, or a directory of checkpoints such as <run>/checkpoints (the
    /// newest complete one is used)
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The new directory to write: model.safetensors (PyTorch names), config.yaml, vocab.json,
    /// state.json and manifest.json. It must not exist, or be empty
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,
    /// The worker executable that does the work [default: `worker` beside this one]
    #[arg(long, value_name = "FILE")]
    worker_bin: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> ExitCode {
    let bin = match args.worker_bin {
        Some(b) => b,
        None => match sibling_executable("worker") {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("export")
        .arg("--checkpoint")
        .arg(&args.checkpoint)
        .arg("--output")
        .arg(&args.output);
    match run_worker_verb(&bin, "export", &mut cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
