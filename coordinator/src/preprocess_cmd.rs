//! `coordinator preprocess`: normalize, log-transform and select highly variable genes of an
//! .h5ad file once, writing a new .h5ad (scModelForge's `preprocess`). With `--config`, the
//! settings are `data.preprocessing` and the input is `data.paths`' file; with `--input` alone,
//! scModelForge's defaults (library size to 1e4, log1p, every gene).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use configs::scmodelforge::{Normalize, PreprocessingConfig, ScModelForgeConfig};

#[derive(Args, Debug)]
pub struct PreprocessArgs {
    /// A scModelForge config: its data.preprocessing settings, and its data.paths file unless
    /// --input is given
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config field, as for `coordinator launch` (repeatable; needs --config)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// The .h5ad file to preprocess (instead of the config's data.paths)
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// The .h5ad file to write; it must not exist
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// Keep only the N most highly variable genes (scanpy's seurat flavor); overrides
    /// data.preprocessing.hvg_selection
    #[arg(long, value_name = "N")]
    hvg: Option<usize>,
}

pub fn run(args: PreprocessArgs) -> ExitCode {
    match preprocess(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn preprocess(args: PreprocessArgs) -> anyhow::Result<()> {
    let (input, mut settings) = match &args.config {
        Some(path) => {
            let cfg: ScModelForgeConfig =
                configs::load_file_as(path, &args.overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
            let input = match (&args.input, cfg.data.paths.as_slice()) {
                (Some(i), _) => i.clone(),
                (None, [one]) => PathBuf::from(one),
                (None, []) => bail!(
                    "{}: data.paths is empty; name the file with --input",
                    path.display()
                ),
                (None, many) => bail!(
                    "{}: data.paths has {} files; preprocess one at a time with --input",
                    path.display(),
                    many.len()
                ),
            };
            (input, cfg.data.preprocessing)
        }
        None => match &args.input {
            Some(i) => (i.clone(), scmodelforge_defaults()),
            None => bail!("give --input FILE or --config FILE"),
        },
    };
    if let Some(n) = args.hvg {
        if n == 0 {
            bail!("--hvg must be at least 1");
        }
        settings.hvg_selection = Some(n);
    }
    if settings.hvg_selection == Some(0) {
        bail!("data.preprocessing.hvg_selection must be at least 1 (or null for every gene)");
    }
    println!(
        "preprocessing {} -> {}",
        input.display(),
        args.output.display()
    );
    let started = Instant::now();
    let mut shown = Instant::now();
    let summary =
        data::preprocess_h5ad::preprocess_h5ad(&input, &args.output, &settings, |done, total| {
            if shown.elapsed().as_secs_f64() >= 2.0 || done == total {
                eprint!("\r  {done}/{total} cells");
                shown = Instant::now();
            }
        })
        .with_context(|| format!("preprocessing {}", input.display()))?;
    eprintln!();
    let normalized = match summary.target_sum {
        Some(t) => format!("library size normalized to {t}"),
        None => "not normalized".into(),
    };
    println!(
        "{} cells, {} of {} genes kept; {normalized}, {}",
        summary.n_obs,
        summary.n_vars_out,
        summary.n_vars_in,
        if summary.log1p { "log1p" } else { "no log1p" }
    );
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    for n in &summary.not_carried {
        println!("not carried: {n}");
    }
    println!(
        "wrote {} in {:.1} s",
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// scModelForge's `preprocess --input` without a config: library size to 1e4, log1p.
fn scmodelforge_defaults() -> PreprocessingConfig {
    PreprocessingConfig {
        normalize: Some(Normalize::LibrarySize),
        target_sum: Some(1e4),
        log1p: true,
        hvg_selection: None,
    }
}
