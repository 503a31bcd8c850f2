//! GPU training throughput: anvil's `transformer_encoder` on the CUDA backend against the same
//! model in PyTorch on the same GPU (`gpu_step_torch.py`: bf16 autocast, eager and
//! `torch.compile`), one optimizer step = forward + backward + clipping + AdamW, bf16-mixed.
//!
//!     cargo bench -p worker --features cuda --bench gpu_step [-- --no-torch] [-- --iters N]
//!
//! Shapes: Geneformer-6L (6 layers, hidden 256, 4 heads, ffn 512, seq 2048, batch 32) and a
//! 12-layer model (hidden 512, 8 heads, ffn 2048, seq 2048, batch 16), 25,000-id vocabulary,
//! 15% masked, dropout 0. Prints tokens/s, MFU (model FLOPs, as in the model_step bench, over
//! the GPU's dense bf16 peak) and peak memory for each. Without a GPU it says so and exits 0.

#[path = "common/synthetic.rs"]
mod synthetic;

use std::process::Command;
use std::time::Instant;

use configs::scmodelforge::{Activation, Architecture, ModelConfig};
use kernels::backend::cuda::Cuda;
use kernels::optim::AdamConfig;
use kernels::rng::RngKey;
use kernels::{Device, Precision};
use worker::model::{self, DataSpec};

struct Shape {
    name: &'static str,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
    seq: usize,
    batch: usize,
    vocab: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "Geneformer-6L",
        layers: 6,
        hidden: 256,
        heads: 4,
        ffn: 512,
        seq: 2048,
        batch: 32,
        vocab: 25_000,
    },
    Shape {
        name: "12L-512",
        layers: 12,
        hidden: 512,
        heads: 8,
        ffn: 2048,
        seq: 2048,
        batch: 16,
        vocab: 25_000,
    },
];

const MASK_RATIO: f64 = 0.15;

impl Shape {
    fn masked_per_cell(&self) -> usize {
        (MASK_RATIO * self.seq as f64).round() as usize
    }
    /// Model FLOPs per step (the model_step bench's formula).
    fn flops(&self) -> f64 {
        let (l, e, f, t, b) = (
            self.layers as f64,
            self.hidden as f64,
            self.ffn as f64,
            self.seq as f64,
            self.batch as f64,
        );
        let n = b * t;
        let m = b * self.masked_per_cell() as f64;
        3.0 * (l * (2.0 * n * (4.0 * e * e + 2.0 * e * f) + 4.0 * b * t * t * e)
            + 2.0 * m * e * self.vocab as f64)
    }
}

/// Dense bf16 tensor-core peak of known GPUs, FLOP/s.
fn bf16_peak(name: &str) -> Option<f64> {
    let n = name.to_uppercase();
    if n.contains("H100") || n.contains("H200") || n.contains("H800") {
        Some(989e12)
    } else if n.contains("A100") || n.contains("A800") {
        Some(312e12)
    } else if n.contains("L40S") {
        Some(362e12)
    } else {
        None
    }
}

/// (median seconds per step, last loss, peak device memory MiB in use).
fn anvil(dev: &Cuda, s: &Shape, warmup: usize, iters: usize) -> (f64, f64, f64) {
    let cfg = ModelConfig {
        architecture: Architecture::TransformerEncoder,
        hidden_dim: s.hidden,
        num_layers: s.layers,
        num_heads: s.heads,
        ffn_dim: Some(s.ffn),
        dropout: 0.0,
        max_seq_len: s.seq,
        activation: Activation::Gelu,
        use_expression_values: false,
        mask_ratio: MASK_RATIO,
        vocab_size: Some(s.vocab),
        ..ModelConfig::default()
    };
    let spec = DataSpec {
        vocab_size: s.vocab,
        values_are_bins: false,
    };
    let (free0, _) = dev.context().mem_get_info().expect("memory info");
    let mut model = model::build_on(dev.clone(), &cfg, spec, Precision::Bf16Mixed)
        .unwrap_or_else(|e| panic!("model: {e}"));
    let layout = model.layout().clone();
    let n = layout.total();
    let mut params = dev.upload(&layout.init_host(42));
    let mut grads = dev.zeros(n);
    let (mut m, mut v) = (dev.zeros(n), dev.zeros(n));
    let adam = AdamConfig::adamw(1e-4, 0.01);
    let b = synthetic::masked_gene_batch(s.batch, s.seq, s.vocab, s.masked_per_cell());
    let mut times = Vec::new();
    let mut loss = f64::NAN;
    let mut min_free = free0;
    for step in 0..warmup + iters {
        let t0 = Instant::now();
        let key = RngKey::new(42, step as u64, 0);
        let ls = model
            .train_batch(&params, &mut grads, &b, key, 1.0, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("train_batch: {e}"));
        dev.scale(&mut grads, 1.0 / ls.count.max(1.0));
        dev.clip_grad_norm(&mut grads, 1.0);
        dev.adam_step(
            &adam,
            step as u64 + 1,
            &mut params,
            &grads,
            &mut m,
            &mut v,
            &[],
        );
        dev.fill_zero(&mut grads);
        dev.synchronize();
        loss = ls.mean();
        if step >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        min_free = min_free.min(dev.context().mem_get_info().expect("memory info").0);
    }
    times.sort_by(f64::total_cmp);
    (
        times[times.len() / 2],
        loss,
        (free0 - min_free) as f64 / (1 << 20) as f64,
    )
}

fn json_num(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let no_torch = args.iter().any(|a| a == "--no-torch");
    let iters = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(20);
    if !Cuda::available() {
        println!("gpu_step: SKIPPED (no CUDA driver or device on this machine)");
        return;
    }
    let dev = Cuda::open(0).unwrap_or_else(|e| {
        eprintln!("gpu_step: a device is visible but could not be opened: {e}");
        std::process::exit(1)
    });
    let name = dev.describe();
    let peak = bf16_peak(&name);
    println!(
        "gpu_step on {name}; bf16 dense peak {}",
        peak.map_or("unknown".into(), |p| format!("{:.0} TFLOP/s", p / 1e12))
    );
    println!(
        "{:<15} {:<16} {:>12} {:>10} {:>8} {:>12} {:>10}",
        "shape", "impl", "tokens/s", "ms/step", "MFU", "peak MiB", "loss"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gpu_step_torch.py");
    for s in &SHAPES {
        let tokens = (s.batch * s.seq) as f64;
        let row = |imp: &str, secs: f64, mem: f64, loss: f64| {
            let mfu = peak.map_or("n/a".to_string(), |p| {
                format!("{:.1}%", 100.0 * s.flops() / secs / p)
            });
            println!(
                "{:<15} {:<16} {:>12.0} {:>10.1} {:>8} {:>12.0} {:>10.4}",
                s.name,
                imp,
                tokens / secs,
                secs * 1e3,
                mfu,
                mem,
                loss
            );
        };
        let (secs, loss, mem) = anvil(&dev, s, 3, iters);
        row("anvil", secs, mem, loss);
        if no_torch {
            continue;
        }
        for compile in ["0", "1"] {
            let out = Command::new(std::env::var("ANVIL_TORCH_PYTHON").unwrap_or("python3".into()))
                .arg(script)
                .args(
                    [s.layers, s.hidden, s.heads, s.ffn, s.seq, s.batch, s.vocab]
                        .map(|x| x.to_string()),
                )
                .args([
                    MASK_RATIO.to_string(),
                    "0.0".into(),
                    "3".into(),
                    iters.to_string(),
                ])
                .arg(compile)
                .output();
            let imp = if compile == "1" {
                "torch.compile"
            } else {
                "torch eager"
            };
            match out {
                Ok(o) if o.status.success() => {
                    let line = String::from_utf8_lossy(&o.stdout).to_string();
                    match (
                        json_num(&line, "median_ms"),
                        json_num(&line, "peak_mem_mb"),
                        json_num(&line, "last_loss"),
                    ) {
                        (Some(ms), Some(mem), Some(loss)) => row(imp, ms / 1e3, mem, loss),
                        _ => println!("{:<15} {imp:<16} unreadable output: {line}", s.name),
                    }
                }
                Ok(o) => println!(
                    "{:<15} {imp:<16} failed: {}",
                    s.name,
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
                Err(e) => println!("{:<15} {imp:<16} could not start python: {e}", s.name),
            }
        }
    }
}
