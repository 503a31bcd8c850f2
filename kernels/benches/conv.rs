//! Benchmark of conv2d forward+backward (im2col + GEMM) at the pose UNet's shapes (3x3,
//! stride 1, "same" padding, bias), printing JSON lines with GFLOP/s, and PyTorch's time for
//! the same shapes and precisions measured in the same run right after each (an inline torch
//! script, as many threads as rayon; bf16 is `torch.autocast("cpu", bfloat16)`). Both report
//! the fastest of N iterations after a warm-up, since the machines this runs on are shared.
//! No timed assertions.
//!
//!     cargo bench -p kernels --bench conv [-- --iters N --no-torch]
//!
//! The Python is `$ANVIL_TORCH_PYTHON`, else the sleap-nn venv's (/var/tmp/sleapnn-venv), else
//! `python3`.

use std::process::Command;
use std::time::Instant;

use kernels::backend::{Conv2dShape, ConvDevice};
use kernels::{Cpu, ParamView, Precision};

/// (name, batch, c_in, h=w, c_out)
const SHAPES: [(&str, usize, usize, usize, usize); 3] = [
    ("unet_c32_192", 4, 32, 192, 32),
    ("unet_c64_96", 4, 64, 96, 64),
    ("unet_c1_384_to16", 4, 1, 384, 16),
];

const TORCH: &str = r#"
import sys, time, torch
n, ci, hw, co, iters, threads, prec = sys.argv[1:8]
n, ci, hw, co, iters, threads = map(int, (n, ci, hw, co, iters, threads))
torch.set_num_threads(threads)
torch.manual_seed(0)
conv = torch.nn.Conv2d(ci, co, 3, padding="same", bias=True)
x = torch.randn(n, ci, hw, hw, requires_grad=True)
dy = torch.randn(n, co, hw, hw)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(prec == "bf16")):
        y = conv(x)
    y.backward(dy.to(y.dtype))
step()
best = float("inf")
for _ in range(iters):
    t = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - t)
print(best * 1e3)
"#;

fn python() -> String {
    if let Ok(p) = std::env::var("ANVIL_TORCH_PYTHON") {
        return p;
    }
    let venv = "/var/tmp/sleapnn-venv/bin/python";
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

/// PyTorch's forward+backward milliseconds, or why there is none.
fn torch_ms(s: &Conv2dShape, iters: usize, prec: &str) -> Result<f64, String> {
    let args = [
        s.n,
        s.c_in,
        s.h,
        s.c_out,
        iters,
        rayon::current_num_threads(),
    ];
    let out = Command::new(python())
        .arg("-c")
        .arg(TORCH)
        .args(args.iter().map(|v| v.to_string()))
        .arg(prec)
        .output()
        .map_err(|e| format!("could not start python: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("unreadable torch output: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let no_torch = args.iter().any(|a| a == "--no-torch");
    println!(
        "{{\"bench\":\"env\",\"threads\":{},\"iters\":{iters},\"bf16_gemm\":\"{:?}\"}}",
        rayon::current_num_threads(),
        kernels::bf16gemm::path()
    );
    let dev = Cpu;
    for (name, n, c_in, hw, c_out) in SHAPES {
        let s = Conv2dShape {
            n,
            c_in,
            h: hw,
            w: hw,
            c_out,
            k: 3,
            stride: 1,
            pad: Conv2dShape::same_pad(3),
        };
        let (xl, yl, wl) = (n * c_in * hw * hw, n * c_out * hw * hw, c_out * c_in * 9);
        let x: Vec<f32> = (0..xl)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let dy: Vec<f32> = (0..yl)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let params: Vec<f32> = (0..wl + c_out)
            .map(|i| ((i * 31) % 97) as f32 / 970.0)
            .collect();
        let wv = ParamView { offset: 0, len: wl };
        let bv = Some(ParamView {
            offset: wl,
            len: c_out,
        });
        let mut y = vec![0f32; yl];
        let mut dx = vec![0f32; xl];
        let mut grads = vec![0f32; params.len()];
        // Forward, dx and dW each 2·n·c_out·c_in·9·h·w.
        let flop_fwd = 2.0 * (n * c_out * c_in * 9 * hw * hw) as f64;
        for (prec, label) in [(Precision::F32, "fp32"), (Precision::Bf16Mixed, "bf16")] {
            let mut run = |fwd: &mut f64, all: &mut f64| {
                let t = Instant::now();
                dev.conv2d_forward(prec, &mut y, &x, &params, wv, bv, s);
                *fwd += t.elapsed().as_secs_f64();
                dev.conv2d_backward(prec, Some(&mut dx), &mut grads, &dy, &x, &params, wv, bv, s);
                *all += t.elapsed().as_secs_f64();
            };
            run(&mut 0.0, &mut 0.0);
            let (mut fwd, mut all) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..iters {
                let (mut f, mut a) = (0.0, 0.0);
                run(&mut f, &mut a);
                (fwd, all) = (fwd.min(f), all.min(a));
            }
            // The backward's split: the weight gradient alone (no dx), the rest is dx.
            let mut dw = f64::INFINITY;
            for _ in 0..iters {
                let t = Instant::now();
                dev.conv2d_backward(prec, None, &mut grads, &dy, &x, &params, wv, bv, s);
                dw = dw.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{{\"bench\":\"conv2d\",\"impl\":\"anvil\",\"shape\":\"{name}\",\"prec\":\"{label}\",\"n\":{n},\"c_in\":{c_in},\"hw\":{hw},\"c_out\":{c_out},\"fwd_ms\":{:.1},\"dw_db_ms\":{:.1},\"fwd_bwd_ms\":{:.1},\"fwd_gflops\":{:.1},\"fwd_bwd_gflops\":{:.1}}}",
                fwd * 1e3,
                dw * 1e3,
                all * 1e3,
                flop_fwd / fwd / 1e9,
                3.0 * flop_fwd / all / 1e9
            );
            if no_torch {
                continue;
            }
            match torch_ms(&s, iters, label) {
                Ok(ms) => println!(
                    "{{\"bench\":\"conv2d\",\"impl\":\"pytorch\",\"shape\":\"{name}\",\"prec\":\"{label}\",\"fwd_bwd_ms\":{ms:.1},\"fwd_bwd_gflops\":{:.1},\"anvil_speedup\":{:.2}}}",
                    3.0 * flop_fwd / (ms / 1e3) / 1e9,
                    ms / 1e3 / all
                ),
                Err(e) => println!(
                    "{{\"bench\":\"conv2d\",\"impl\":\"pytorch\",\"shape\":\"{name}\",\"prec\":\"{label}\",\"skipped\":{:?}}}",
                    e
                ),
            }
        }
    }
}
