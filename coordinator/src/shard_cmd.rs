//! `coordinator shard`: convert a config's .h5ad/.zarr files into a memory-mapped shard
//! directory (scModelForge's `shard`), which `data.shards` then trains from.
//!
//! The vocabulary is `--gene-vocab`, else `data.gene_vocab` when it names a file, else the
//! genes of the first data file (as scModelForge builds it); the directory carries it as
//! gene_vocab.json.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use configs::scmodelforge::ScModelForgeConfig;
use data::shards;
use data::vocab::GeneVocab;

#[derive(Args, Debug)]
pub struct ShardArgs {
    /// A scModelForge config: its data.paths are converted
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Override a config field, as for `coordinator launch` (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// The directory to write; it must not exist, or be empty
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    /// Most cells per shard [default: data.shards.shard_size, 500000 unless set]
    #[arg(long, value_name = "N")]
    shard_size: Option<usize>,
    /// Vocabulary JSON ({gene: index} or a list of genes) to align the genes to
    #[arg(long, value_name = "FILE")]
    gene_vocab: Option<PathBuf>,
}

pub fn run(args: ShardArgs) -> ExitCode {
    match shard(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn shard(args: ShardArgs) -> anyhow::Result<()> {
    let cfg: ScModelForgeConfig =
        configs::load_file_as(&args.config, &args.overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
    if cfg.data.shards.enabled {
        bail!(
            "{}: data.shards.enabled is true, so this config reads shards; shard converts the files of data.paths (set data.shards.enabled: false)",
            args.config.display()
        );
    }
    let shard_size = args.shard_size.unwrap_or(cfg.data.shards.shard_size);
    if shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    let files = data::dataset::open_all(&cfg.data.paths)
        .with_context(|| format!("{}: data.paths", args.config.display()))?;
    let config_vocab = Path::new(&cfg.data.gene_vocab);
    let (vocab, from) = match &args.gene_vocab {
        Some(p) => (shards::read_gene_to_idx(p)?, p.display().to_string()),
        None if config_vocab.is_file() => (
            shards::read_gene_to_idx(config_vocab)?,
            format!("data.gene_vocab ({})", config_vocab.display()),
        ),
        None => (
            shards::gene_to_idx(&GeneVocab::from_genes(files[0].var_names().iter().cloned())),
            format!("the genes of {}", files[0].path().display()),
        ),
    };
    println!(
        "sharding {} file(s) into {} ({} genes from {from}, at most {} cells per shard)",
        files.len(),
        args.output_dir.display(),
        vocab.len(),
        shard_size
    );
    let started = Instant::now();
    let mut shown = Instant::now();
    let summary = shards::write_shards(
        &files,
        &vocab,
        &args.output_dir,
        shard_size,
        |done, total| {
            if shown.elapsed().as_secs_f64() >= 2.0 || done == total {
                eprint!("\r  {done}/{total} cells");
                shown = Instant::now();
            }
        },
    )?;
    eprintln!();
    for (path, found, n) in &summary.overlap {
        println!(
            "  {}: {found} of {n} genes in the vocabulary",
            path.display()
        );
        if *found == 0 {
            eprintln!(
                "warning: none of the genes of {} is in the vocabulary; its cells are empty",
                path.display()
            );
        }
    }
    let m = &summary.manifest;
    println!(
        "wrote {} shard(s), {} cells, {} stored values in {:.1} s",
        m.n_shards,
        m.total_cells,
        summary.stored,
        started.elapsed().as_secs_f64()
    );
    println!(
        "train from them with data.shards: {{enabled: true, shard_dir: {}}} (and data.paths: [])",
        args.output_dir.display()
    );
    Ok(())
}
