//! Benchmark of the CPU compute core, printing JSON lines (no timed assertions anywhere):
//!  - GEMM GFLOP/s at the linear-layer shapes of two models (forward x·Wᵀ, dx = dy·W,
//!    dW = dyᵀ·x);
//!  - forward+backward time of one pre-norm encoder layer at those shapes, and the same for
//!    PyTorch (scripts/bench_torch_encoder.py, 2 threads) when python3 with torch is present.
//!
//!     cargo bench -p kernels --bench encoder [-- --iters N --dropout P --no-torch --only NAME]

use std::process::Command;
use std::time::Instant;

use kernels::modules::{EncoderLayerConfig, TransformerEncoderLayer};
use kernels::ops::{matmul, Activation, SeqLayout};
use kernels::rng::RngKey;
use kernels::{Cpu, ParamLayout, Precision};

struct Shape {
    name: &'static str,
    batch: usize,
    seq: usize,
    d_model: usize,
    heads: usize,
    ffn: usize,
}

const SHAPES: [Shape; 2] = [
    // quickstart-style: 4 layers, hidden 128, ffn 512, seq 512, batch 16
    Shape {
        name: "small_h128_s512",
        batch: 16,
        seq: 512,
        d_model: 128,
        heads: 4,
        ffn: 512,
    },
    // Geneformer-6L: 6 layers, hidden 256, 4 heads, ffn 512, seq 2048 (batch 8)
    Shape {
        name: "geneformer_h256_s2048",
        batch: 8,
        seq: 2048,
        d_model: 256,
        heads: 4,
        ffn: 512,
    },
];

fn best_of(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let k = RngKey::new(seed, 0, 0);
    (0..n)
        .map(|i| k.bits(i as u64) as f32 / 2_147_483_648.0 - 1.0)
        .collect()
}

fn gemm_bench(s: &Shape, iters: usize) {
    let n = s.batch * s.seq;
    let (e, f) = (s.d_model, s.ffn);
    // (layer, in, out) of every linear in the layer.
    for (layer, i, o) in [
        ("in_proj", e, 3 * e),
        ("out_proj", e, e),
        ("linear1", e, f),
        ("linear2", f, e),
    ] {
        let x = fill(n * i, 1);
        let w = fill(o * i, 2);
        let dy = fill(n * o, 3);
        let mut y = vec![0.0f32; n * o];
        let mut dx = vec![0.0f32; n * i];
        let mut dw = vec![0.0f32; o * i];
        let flop = 2.0 * (n * i * o) as f64;
        let p = Precision::F32;
        for (kind, secs) in [
            (
                "fwd_x_wT",
                best_of(iters, || {
                    matmul(p, &mut y, &x, false, &w, true, n, o, i, false)
                }),
            ),
            (
                "bwd_dx_dy_w",
                best_of(iters, || {
                    matmul(p, &mut dx, &dy, false, &w, false, n, i, o, false)
                }),
            ),
            (
                "bwd_dw_dyT_x",
                best_of(iters, || {
                    matmul(p, &mut dw, &dy, true, &x, false, o, i, n, true)
                }),
            ),
        ] {
            println!(
                "{{\"bench\":\"gemm\",\"model\":\"{}\",\"layer\":\"{layer}\",\"kind\":\"{kind}\",\"n\":{n},\"in\":{i},\"out\":{o},\"ms\":{:.3},\"gflops\":{:.1}}}",
                s.name,
                secs * 1e3,
                flop / secs / 1e9
            );
        }
    }
}

fn layer_bench(s: &Shape, iters: usize, dropout: f64) -> f64 {
    let cfg = EncoderLayerConfig {
        d_model: s.d_model,
        nhead: s.heads,
        dim_feedforward: s.ffn,
        dropout,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-5,
        causal: false,
        precision: Precision::F32,
    };
    let mut layout = ParamLayout::new();
    let layer = match TransformerEncoderLayer::new(&mut layout, "encoder.layers.0", cfg) {
        Ok(l) => l,
        Err(e) => panic!("benchmark config: {e}"),
    };
    let dev = Cpu;
    let params: Vec<f32> = layout.init_host(0);
    let mut grads = vec![0.0f32; layout.total()];
    let (b, t, e) = (s.batch, s.seq, s.d_model);
    let x = fill(b * t * e, 4);
    let r = fill(b * t * e, 5);
    let seqs = SeqLayout::packed(vec![t; b]);
    let mut dx = vec![0.0f32; b * t * e];
    let mut acts = layer.alloc_acts(&dev);
    let mut step = 0u64;
    let mut fwd_s = f64::INFINITY;
    let secs = best_of(iters, || {
        step += 1;
        let key = RngKey::new(0, step, 0);
        let t0 = Instant::now();
        if let Err(e) = layer.forward(&dev, &params, &mut acts, &x, &seqs, key) {
            panic!("forward: {e}");
        }
        fwd_s = fwd_s.min(t0.elapsed().as_secs_f64());
        layer.backward(&dev, &params, &mut grads, &mut acts, &r, &mut dx, key);
    });
    println!(
        "{{\"bench\":\"encoder_layer\",\"impl\":\"anvil\",\"model\":\"{}\",\"batch\":{b},\"seq\":{t},\"d_model\":{e},\"heads\":{},\"ffn\":{},\"dropout\":{dropout},\"fwd_ms\":{:.2},\"fwd_bwd_ms\":{:.2},\"tokens_per_s\":{:.0}}}",
        s.name,
        s.heads,
        s.ffn,
        fwd_s * 1e3,
        secs * 1e3,
        (b * t) as f64 / secs
    );
    secs
}

fn torch_bench(names: &[&str], iters: usize, dropout: f64) -> Vec<(String, f64)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench_torch_encoder.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(iters.to_string())
        .arg(dropout.to_string())
        .args(names)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next()?.to_string();
                let ms: f64 = it.next()?.parse().ok()?;
                Some((name, ms / 1e3))
            })
            .collect(),
        Ok(o) => {
            eprintln!(
                "torch baseline failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("torch baseline not run: {e}");
            Vec::new()
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let iters: usize = flag("--iters").and_then(|v| v.parse().ok()).unwrap_or(3);
    let dropout: f64 = flag("--dropout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let only = flag("--only").cloned();
    let no_torch = args.iter().any(|a| a == "--no-torch");
    let no_gemm = args.iter().any(|a| a == "--no-gemm");
    println!(
        "{{\"bench\":\"env\",\"threads\":{},\"iters\":{iters}}}",
        rayon::current_num_threads()
    );
    let shapes: Vec<&Shape> = SHAPES
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
        .collect();
    // Each shape: anvil, then PyTorch right after, so both see similar machine load.
    for s in &shapes {
        if !no_gemm {
            gemm_bench(s, iters);
        }
        let mine = layer_bench(s, iters, dropout);
        if no_torch {
            continue;
        }
        for (name, theirs) in torch_bench(&[s.name], iters, dropout) {
            println!(
                "{{\"bench\":\"encoder_layer\",\"impl\":\"pytorch\",\"model\":\"{name}\",\"dropout\":{dropout},\"fwd_bwd_ms\":{:.2},\"tokens_per_s\":{:.0},\"anvil_speedup\":{:.2}}}",
                theirs * 1e3,
                (s.batch * s.seq) as f64 / theirs,
                theirs / mine
            );
        }
    }
}
