//! Tokenized cells per second on one thread: read → library-size normalize → log1p →
//! rank_value (max_genes 2048, [CLS]) → mask, for an .h5ad file. Prints one JSON object.
//!
//!     cargo bench -p data --bench tokenize -- FILE [--cells N]
//!
//! `data/benches/bench_tokenize.py` runs this and the equivalent Python (anndata + numpy) path
//! in one go; see BENCHMARKS.md.

use std::sync::Arc;
use std::time::Instant;

use configs::scmodelforge::ScModelForgeConfig;
use data::plan::{ShardPlan, Split};
use data::{Loader, LoaderOptions, Pipeline, Position};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut file = None;
    let mut limit = usize::MAX;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--cells" {
            limit = args
                .get(i + 1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            i += 2;
        } else {
            file = Some(args[i].clone());
            i += 1;
        }
    }
    let Some(file) = file else {
        eprintln!("usage: tokenize FILE [--cells N]");
        std::process::exit(2);
    };
    let mut cfg = ScModelForgeConfig::default();
    cfg.data.paths = vec![file.clone()];
    cfg.tokenizer.max_genes = 2048;
    let t = Instant::now();
    let p = match Pipeline::from_config(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let open_s = t.elapsed().as_secs_f64();
    let n = (p.dataset.n_cells() as usize).min(limit);
    let masker = p.masker.clone().expect("masking configured");

    // 1. Sequential blocks of rows: 1,024 as the Python reference reads them, and 128, which
    //    keeps a block's arrays (about 2 MB here) in cache from the read to the last cell.
    let seq = |block_rows: usize| -> Sequential {
        let t = Instant::now();
        let cpu0 = cpu_s();
        let mut ws = data::pipeline::Workspace::default();
        let (mut ids, mut vals, mut labels, mut pos) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut tokens = 0usize;
        let mut start = 0;
        let mut read_s = 0f64;
        let (mut block, mut raw) = (data::dataset::CellBlock::default(), Default::default());
        while start < n {
            let end = (start + block_rows).min(n);
            let tr = Instant::now();
            p.dataset
                .read_file_rows_into(0, start, end, &mut block, &mut raw)
                .expect("read");
            read_s += tr.elapsed().as_secs_f64();
            for c in 0..block.len() {
                let (cell, g, v) = block.cell(c);
                p.tokenize_into(g, v, &mut ws);
                let cell_tokens = ws_cell(&ws);
                ids.clear();
                ids.extend_from_slice(&cell_tokens.genes);
                vals.clear();
                vals.extend_from_slice(&cell_tokens.values);
                labels.resize(ids.len(), 0);
                masker.apply(0, cell, &mut ids, &mut vals, &mut labels, &mut pos);
                tokens += ids.len();
            }
            start = end;
        }
        Sequential {
            s: t.elapsed().as_secs_f64(),
            cpu_s: cpu_s() - cpu0,
            read_s,
            tokens,
        }
    };
    let big = seq(1024);
    let small = seq(128);
    let (seq_s, seq_cpu_s, read_s, tokens) = (big.s, big.cpu_s, big.read_s, big.tokens);

    // 2. The training loader: shuffled shard plan, padded batches of 64, no prefetch threads.
    let p = Arc::new(p);
    let plan = ShardPlan::for_dataset(&p.dataset, 0.0, 42).expect("plan");
    let opts = LoaderOptions {
        rank: 0,
        world_size: 1,
        batch_size: 64,
        num_workers: 0,
        split: Split::Train,
        mask: true,
    };
    let steps = (n / 64).max(1);
    let t = Instant::now();
    let cpu0 = cpu_s();
    let mut loader_cells = 0usize;
    for b in Loader::new(p, &plan, opts, Position::default())
        .expect("loader")
        .take(steps)
    {
        loader_cells += b.expect("batch").batch_size;
    }
    let loader_s = t.elapsed().as_secs_f64();
    let loader_cpu_s = cpu_s() - cpu0;

    println!(
        "{{\"file\": \"{file}\", \"cells\": {n}, \"sequential128_s\": {:.3}, \"sequential128_cells_per_s\": {:.1}, \"sequential128_cpu_s\": {:.3}, \"sequential128_cells_per_cpu_s\": {:.1}, \"open_and_plan_s\": {open_s:.3}, \"sequential_s\": {seq_s:.3}, \"sequential_read_s\": {read_s:.3}, \"sequential_cells_per_s\": {:.1}, \"mean_tokens\": {:.1}, \"loader_cells\": {loader_cells}, \"loader_s\": {loader_s:.3}, \"loader_cells_per_s\": {:.1}, \"sequential_cpu_s\": {seq_cpu_s:.3}, \"sequential_cells_per_cpu_s\": {:.1}, \"loader_cpu_s\": {loader_cpu_s:.3}, \"loader_cells_per_cpu_s\": {:.1}}}",
        small.s,
        n as f64 / small.s,
        small.cpu_s,
        n as f64 / small.cpu_s,
        n as f64 / seq_s,
        tokens as f64 / n as f64,
        loader_cells as f64 / loader_s,
        n as f64 / seq_cpu_s,
        loader_cells as f64 / loader_cpu_s
    );
}

struct Sequential {
    s: f64,
    cpu_s: f64,
    read_s: f64,
    tokens: usize,
}

/// CPU time of this thread in seconds (Linux: /proc/thread-self/schedstat), so the figure is
/// not inflated when other processes share the core; NaN elsewhere.
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
        })
        .map(|ns| ns * 1e-9)
        .unwrap_or(f64::NAN)
}

fn ws_cell(ws: &data::pipeline::Workspace) -> &data::tokenize::TokenizedCell {
    ws.cell()
}
