//! `coordinator data inspect|synth`: look inside AnnData files and generate synthetic ones.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use data::anndata::{self, ObsKind};
use data::synth::{synth_h5ad, SynthOptions};
use data::write::Compression;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Summarize AnnData files: cells, genes, stored values, X encoding, obs columns
    Inspect {
        /// .h5ad files (or .zarr stores)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Write a deterministic synthetic AnnData .h5ad (negative-binomial counts, cell types, CSR)
    Synth(SynthArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Lzf,
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

fn inspect_one(path: &PathBuf) -> data::Result<()> {
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
