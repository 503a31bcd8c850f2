//! GEMM GFLOP/s at transformer linear-layer shapes, in one run: anvil's f32 matmul (faer),
//! anvil's emulated bf16 (operands rounded to bf16 values in f32, then the f32 GEMM: the
//! bf16-mixed path before the bf16 GEMM), anvil's bf16 GEMM on each microkernel the CPU has
//! (AMX, AVX512_BF16), and PyTorch's `torch.mm` in f32 and bf16 (scripts/bench_torch_mm.py,
//! 2 threads) when python3 with torch is present. No timed assertions.
//!
//!     cargo bench -p kernels --bench bf16_gemm [-- --iters N --tokens M --no-torch
//!         --only-bf16 --path amx|avx512_bf16 --dims IN,OUT]
//!
//! `--only-bf16` skips anvil's f32 and emulated runs (for profiling), `--path` runs one
//! microkernel, `--dims` one layer shape.
//!
//! For each (in, out) the three products of a linear layer over M tokens: y = x·Wᵀ
//! (M x out x in), dx = dy·W (M x in x out), dW = dyᵀ·x (out x in x M). Best of `--iters`
//! (default 5) after a warm-up; rayon's default thread count. First the machine's
//! instruction-bound peaks (f32 FMA, vdpbf16ps, AMX tdpbf16ps; all threads at once) for the
//! share of peak.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use kernels::bf16gemm::{self, Bf16Path, Peak};
use kernels::ops::matmul;
use kernels::precision::rounded;
use kernels::Precision;

#[derive(Clone, Copy)]
struct Case {
    label: &'static str,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
}

fn best(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn torch(iters: usize, cases: &[Case]) -> HashMap<(usize, usize, usize, bool, bool, String), f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_torch_mm.py");
    let specs: Vec<String> = cases
        .iter()
        .map(|c| format!("{},{},{},{},{}", c.m, c.n, c.k, c.ta as u8, c.tb as u8))
        .collect();
    let mut out = HashMap::new();
    match Command::new("python3")
        .arg(script)
        .arg(iters.to_string())
        .args(&specs)
        .output()
    {
        Ok(o) if o.status.success() => {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() != 7 {
                    continue;
                }
                let p = |i: usize| f[i].parse::<usize>().unwrap_or(0);
                if let Ok(g) = f[6].parse::<f64>() {
                    out.insert(
                        (p(0), p(1), p(2), p(3) == 1, p(4) == 1, f[5].to_string()),
                        g,
                    );
                }
            }
        }
        Ok(o) => eprintln!(
            "torch baseline failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("torch baseline not run: {e}"),
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let iters = value("--iters").unwrap_or(5);
    let tokens = value("--tokens").unwrap_or(8192);
    let no_torch = args.iter().any(|a| a == "--no-torch");
    let threads = rayon::current_num_threads();
    let only_bf16 = args.iter().any(|a| a == "--only-bf16");
    let text = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let want_path = text("--path");
    let want_dims = text("--dims");

    let mut paths = Vec::new();
    if bf16gemm::amx_supported() {
        paths.push(Bf16Path::Amx);
    } else {
        eprintln!("SKIPPED: bf16 GEMM amx (CPU lacks amx_tile/amx_bf16 or the OS permission)");
    }
    if bf16gemm::avx512_bf16_supported() {
        paths.push(Bf16Path::Avx512);
    } else {
        eprintln!("SKIPPED: bf16 GEMM avx512_bf16 (CPU lacks avx512_bf16)");
    }

    let dims = [
        (128, 128),
        (256, 256),
        (512, 512),
        (1024, 1024),
        (128, 512),
        (512, 128),
    ];
    paths.retain(|p| want_path.as_ref().is_none_or(|w| w == p.name()));
    let mut cases = Vec::new();
    for &(i, o) in &dims {
        if want_dims.as_ref().is_some_and(|w| *w != format!("{i},{o}")) {
            continue;
        }
        let m = tokens;
        cases.push(Case {
            label: "y=x·Wᵀ",
            m,
            n: o,
            k: i,
            ta: false,
            tb: true,
        });
        cases.push(Case {
            label: "dx=dy·W",
            m,
            n: i,
            k: o,
            ta: false,
            tb: false,
        });
        cases.push(Case {
            label: "dW=dyᵀ·x",
            m: o,
            n: i,
            k: m,
            ta: true,
            tb: false,
        });
    }
    // Instruction-bound peaks of the whole machine (every rayon thread at once, summed).
    let peak = |what: Peak, rounds: usize| -> f64 {
        (0..3)
            .map(|_| {
                rayon::broadcast(|_| bf16gemm::thread_peak_gflops(what, rounds))
                    .iter()
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
    };
    let mut peaks = vec![("f32 FMA (zmm)", peak(Peak::F32Fma, 5_000_000))];
    if bf16gemm::avx512_bf16_supported() {
        peaks.push(("vdpbf16ps (zmm)", peak(Peak::Avx512Bf16, 2_000_000)));
    }
    if bf16gemm::amx_supported() {
        peaks.push(("AMX tdpbf16ps", peak(Peak::Amx, 200_000)));
    }
    for (name, g) in &peaks {
        println!("instruction peak, {threads} threads: {name} {g:.0} GFLOP/s");
        eprintln!(
            "{{\"bench\":\"peak\",\"what\":\"{name}\",\"threads\":{threads},\"gflops\":{g:.1}}}"
        );
    }
    let tch = if no_torch {
        HashMap::new()
    } else {
        torch(iters, &cases)
    };
    println!(
        "| product | M | N | K | anvil f32 | anvil bf16 emulated | {} | torch f32 | torch bf16 |",
        paths
            .iter()
            .map(|p| format!("anvil bf16 {}", p.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|{}", " --- |".repeat(9 + paths.len() - 1));
    for c in &cases {
        let (m, n, k) = (c.m, c.n, c.k);
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let mut cbuf = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let g = |s: f64| flops / s / 1e9;
        let f32_s = if only_bf16 {
            f64::NAN
        } else {
            best(iters, || {
                matmul(
                    Precision::F32,
                    &mut cbuf,
                    &a,
                    c.ta,
                    &b,
                    c.tb,
                    m,
                    n,
                    k,
                    false,
                )
            })
        };
        let emu_s = if only_bf16 {
            f64::NAN
        } else {
            best(iters, || {
                let ar = rounded(Precision::Bf16Mixed, &a);
                let br = rounded(Precision::Bf16Mixed, &b);
                matmul(
                    Precision::F32,
                    &mut cbuf,
                    &ar,
                    c.ta,
                    &br,
                    c.tb,
                    m,
                    n,
                    k,
                    false,
                )
            })
        };
        let lda = if c.ta { m } else { k };
        let ldb = if c.tb { k } else { n };
        let mut row = format!(
            "| {} | {m} | {n} | {k} | {:.0} | {:.0} |",
            c.label,
            g(f32_s),
            g(emu_s)
        );
        let mut json = format!(
            "{{\"bench\":\"gemm\",\"product\":\"{}\",\"m\":{m},\"n\":{n},\"k\":{k},\"threads\":{threads},\"anvil_f32\":{:.1},\"anvil_bf16_emulated\":{:.1}",
            c.label,
            g(f32_s),
            g(emu_s)
        );
        for &p in &paths {
            let s = best(iters, || {
                bf16gemm::gemm(
                    p, &mut cbuf, n, &a, lda, c.ta, &b, ldb, c.tb, m, n, k, false, true,
                )
            });
            row += &format!(" {:.0} |", g(s));
            json += &format!(",\"anvil_bf16_{}\":{:.1}", p.name(), g(s));
        }
        for dt in ["f32", "bf16"] {
            match tch.get(&(m, n, k, c.ta, c.tb, dt.to_string())) {
                Some(v) => {
                    row += &format!(" {v:.0} |");
                    json += &format!(",\"torch_{dt}\":{v:.1}");
                }
                None => row += " - |",
            }
        }
        println!("{row}");
        eprintln!("{json}}}");
    }
}
