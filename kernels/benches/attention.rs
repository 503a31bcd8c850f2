//! Attention alone (issue 13): forward + backward of `kernels::ops::attention_*` against
//! PyTorch's `scaled_dot_product_attention` (attention_torch.py, 2 threads) on the same shape,
//! in the same run, for fp32 and bf16-mixed at dropout 0.1 and 0. Prints JSON lines and a table.
//!
//!     cargo bench -p kernels --bench attention [-- --iters N --only a|b --precision 32|bf16-mixed --dropout 0|0.1 --no-torch]
//!
//! Shapes: the model_step bench's (a) 16 sequences x 512, 4 heads of 32 and (b) Geneformer-6L,
//! 8 x 2048, 4 heads of 64; every key unpadded. Model FLOPs: forward 4·B·H·T²·d (Q·Kᵀ, P·V),
//! backward twice that (anvil's recomputation of S in backward not counted).

use std::process::Command;
use std::time::Instant;

use kernels::ops::attention::AttnOpts;
use kernels::ops::{attention_backward, attention_forward, AttnShape};
use kernels::rng::RngKey;
use kernels::Precision;

struct Shape {
    id: &'static str,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    iters: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        id: "a",
        batch: 16,
        seq: 512,
        heads: 4,
        head_dim: 32,
        iters: 5,
    },
    Shape {
        id: "b",
        batch: 8,
        seq: 2048,
        heads: 4,
        head_dim: 64,
        iters: 2,
    },
];

fn lcg(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1.0
        })
        .collect()
}

/// Best forward and backward milliseconds of anvil's attention.
fn anvil(s: &Shape, prec: Precision, dropout: f64, iters: usize) -> (f64, f64) {
    let shape = AttnShape {
        batch: s.batch,
        seq: s.seq,
        heads: s.heads,
        head_dim: s.head_dim,
    };
    let (n, e) = (s.batch * s.seq, s.heads * s.head_dim);
    let qkv = lcg(1, n * 3 * e);
    let dout = lcg(2, n * e);
    let mut out = vec![0f32; n * e];
    let mut lse = vec![0f32; s.heads * n];
    let mut dqkv = vec![0f32; n * 3 * e];
    let o = AttnOpts {
        dropout,
        key: RngKey::new(7, 0, 0),
        prec,
        ..Default::default()
    };
    let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
    for it in 0..iters + 1 {
        let t0 = Instant::now();
        attention_forward(&mut out, &mut lse, &qkv, shape, &o);
        let t1 = Instant::now();
        attention_backward(&mut dqkv, &dout, &out, &lse, &qkv, shape, &o);
        let t2 = Instant::now();
        if it > 0 {
            fwd = fwd.min((t1 - t0).as_secs_f64() * 1e3);
            bwd = bwd.min((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    assert!(dqkv.iter().all(|x| x.is_finite()));
    (fwd, bwd)
}

fn torch(s: &Shape, prec: &str, dropout: f64, iters: usize) -> Option<(f64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/attention_torch.py");
    let dims = [s.batch, s.seq, s.heads, s.head_dim].map(|x| x.to_string());
    let out = Command::new("python3")
        .arg(script)
        .args(dims)
        .args([
            dropout.to_string(),
            prec.to_string(),
            "1".into(),
            iters.to_string(),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "PyTorch child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    Some((v["fwd_ms"].as_f64()?, v["bwd_ms"].as_f64()?))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let iters: Option<usize> = flag("--iters").and_then(|v| v.parse().ok());
    let only = flag("--only").cloned();
    let no_torch = args.iter().any(|a| a == "--no-torch");
    // One precision or dropout only (for profiling one case).
    let only_prec = flag("--precision").cloned();
    let only_dropout: Option<f64> = flag("--dropout").and_then(|v| v.parse().ok());
    let mut rows = Vec::new();
    for s in &SHAPES {
        if only.as_deref().is_some_and(|o| o != s.id) {
            continue;
        }
        let it = iters.unwrap_or(s.iters);
        let gflop_fwd = 4.0 * (s.batch * s.heads * s.seq * s.seq * s.head_dim) as f64 / 1e9;
        for (pname, prec) in [("32", Precision::F32), ("bf16-mixed", Precision::Bf16Mixed)] {
            for dropout in [0.1, 0.0] {
                if only_prec.as_deref().is_some_and(|p| p != pname)
                    || only_dropout.is_some_and(|d| d != dropout)
                {
                    continue;
                }
                let (af, ab) = anvil(s, prec, dropout, it);
                let t = (!no_torch).then(|| torch(s, pname, dropout, it)).flatten();
                println!(
                    "{{\"bench\":\"attention\",\"shape\":\"{}\",\"precision\":\"{pname}\",\"dropout\":{dropout},\"gflop_fwd\":{gflop_fwd:.2},\"anvil_fwd_ms\":{af:.1},\"anvil_bwd_ms\":{ab:.1},\"torch_fwd_ms\":{},\"torch_bwd_ms\":{}}}",
                    s.id,
                    t.map_or("null".into(), |t| format!("{:.1}", t.0)),
                    t.map_or("null".into(), |t| format!("{:.1}", t.1)),
                );
                rows.push((s.id, pname, dropout, gflop_fwd, af, ab, t));
            }
        }
    }
    println!(
        "\nshape precision  drop  anvil fwd+bwd ms  GFLOP/s  torch fwd+bwd ms  GFLOP/s  speed-up"
    );
    for (id, p, d, g, af, ab, t) in rows {
        let (a, gf) = (af + ab, 3.0 * g);
        match t {
            Some((tf, tb)) => println!(
                "({id})   {p:<10} {d:<4} {a:>10.1} ({af:.1}+{ab:.1}) {:>7.1} {:>10.1} ({tf:.1}+{tb:.1}) {:>7.1}  {:.2}x",
                gf / a * 1e3,
                tf + tb,
                gf / (tf + tb) * 1e3,
                (tf + tb) / a
            ),
            None => println!("({id})   {p:<10} {d:<4} {a:>10.1} ({af:.1}+{ab:.1}) {:>7.1}", gf / a * 1e3),
        }
    }
}
