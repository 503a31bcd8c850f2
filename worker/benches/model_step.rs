//! Whole-model training throughput (issue 4): anvil's `transformer_encoder` against the same
//! model in PyTorch (`model_step_torch.py`), one optimizer step = forward + backward + gradient
//! clipping + AdamW, on this machine's cores, in one run.
//!
//!     cargo bench -p worker --bench model_step [-- --iters N] [-- --quick] [--only a|b]
//!         [--prec 32|bf16-mixed] [--no-torch] [--no-dropout0] [--torch-compile]
//!
//! `--torch-compile` also runs PyTorch under `torch.compile`; the faster of eager and compiled
//! is the peer (marked "c" in the table when it is the compiled one).
//!
//! Shapes: (a) 4 layers, hidden 128, 4 heads, ffn 512, seq 512, batch 16; (b) Geneformer-6L:
//! 6 layers, hidden 256, 4 heads, ffn 512, seq 2048, batch 8. Both with a 20,000-id vocabulary
//! and 15% of the positions masked; every cell full length. Precisions "32" and "bf16-mixed";
//! dropout 0.1 (as a real run) and 0 (PyTorch's fused attention applies only without dropout).
//!
//! Each (shape, precision, dropout) runs in its own child process — this executable re-run with
//! `--child …` for anvil, `python3 model_step_torch.py step …` for PyTorch, right after each
//! other — so a peak RSS is that configuration's alone (anvil: VmHWM of the child; PyTorch:
//! ru_maxrss). The run also measures the processor's GEMM peak per precision — the best of the
//! kernels' own matmul (f32, and bf16-mixed on AMX / AVX512_BF16) and PyTorch's `torch.mm` in
//! fp32 and bf16 on large square products — and reports each row's model FLOPs per second as a
//! fraction of the peak of its own precision:
//!
//!   model FLOPs per step = 3 · [ L · (2·N·(3E² + E² + 2·E·F) + 2·2·B·T²·E) + 2·M·E·V ]
//!
//! N = B·T tokens, E hidden, F ffn, L layers, M masked positions, V vocabulary. Per layer: the
//! in-projection (E→3E), out-projection (E→E), linear1 (E→F) and linear2 (F→E), plus the two
//! attention products Q·Kᵀ and P·V (2·B·T²·E each, summed over heads); the tied output head
//! only on the masked rows. ×3: backward costs two products per forward product. Embeddings,
//! norms, softmax, GELU, dropout and the optimizer are not counted, nor the recomputation of P
//! in anvil's attention backward (model FLOPs, not hardware FLOPs), so both sides are credited
//! with the same work per step.

#[path = "common/synthetic.rs"]
mod synthetic;

use std::process::Command;
use std::time::Instant;

use configs::scmodelforge::{Activation, Architecture, ModelConfig};
use kernels::optim::AdamConfig;
use kernels::rng::RngKey;
use kernels::{Cpu, Device, Precision};
use worker::model::{self, DataSpec};

#[derive(Clone, Copy)]
struct Shape {
    id: &'static str,
    name: &'static str,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
    seq: usize,
    batch: usize,
    vocab: usize,
    mask_ratio: f64,
    /// Warm-up steps and timed steps by default.
    warmup: usize,
    iters: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        id: "a",
        name: "4L_h128_s512_b16",
        layers: 4,
        hidden: 128,
        heads: 4,
        ffn: 512,
        seq: 512,
        batch: 16,
        vocab: 20_000,
        mask_ratio: 0.15,
        warmup: 1,
        iters: 5,
    },
    Shape {
        id: "b",
        name: "geneformer6L_h256_s2048_b8",
        layers: 6,
        hidden: 256,
        heads: 4,
        ffn: 512,
        seq: 2048,
        batch: 8,
        vocab: 20_000,
        mask_ratio: 0.15,
        warmup: 1,
        iters: 2,
    },
];

impl Shape {
    fn by_id(id: &str) -> Option<Shape> {
        SHAPES.iter().copied().find(|s| s.id == id || s.name == id)
    }

    fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// Masked positions per cell (the same count in every cell, on both sides).
    fn masked_per_cell(&self) -> usize {
        (self.mask_ratio * self.seq as f64).round() as usize
    }

    /// Model FLOPs of one training step (see the module docs).
    fn model_flops(&self) -> f64 {
        let (b, t, e, f) = (
            self.batch as f64,
            self.seq as f64,
            self.hidden as f64,
            self.ffn as f64,
        );
        let n = b * t;
        let m = (self.batch * self.masked_per_cell()) as f64;
        let linear = 2.0 * n * (3.0 * e * e + e * e + 2.0 * e * f);
        let attention = 2.0 * 2.0 * b * t * t * e;
        let head = 2.0 * m * e * self.vocab as f64;
        3.0 * (self.layers as f64 * (linear + attention) + head)
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// This process's peak resident set (VmHWM), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// User + system CPU seconds of this process (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// A full-length batch: genes uniform over the non-special ids, `masked_per_cell` distinct
/// positions per cell masked and hidden (input [MASK], label = the gene), as the trainer's
/// `hide_masked` leaves a batch.
/// Child process: times `warmup + iters` optimizer steps of one configuration and prints one
/// JSON line.
fn child(s: &Shape, prec_name: &str, dropout: f64, warmup: usize, iters: usize) {
    let prec = Precision::parse(prec_name)
        .unwrap_or_else(|| panic!("unknown precision {prec_name:?} (32 | bf16-mixed)"));
    let cfg = ModelConfig {
        architecture: Architecture::TransformerEncoder,
        hidden_dim: s.hidden,
        num_layers: s.layers,
        num_heads: s.heads,
        ffn_dim: Some(s.ffn),
        dropout,
        max_seq_len: s.seq,
        activation: Activation::Gelu,
        // Geneformer reads gene ranks only: no expression-value projection (nor on the
        // PyTorch side).
        use_expression_values: false,
        mask_ratio: s.mask_ratio,
        vocab_size: Some(s.vocab),
        ..ModelConfig::default()
    };
    let spec = DataSpec {
        vocab_size: s.vocab,
        values_are_bins: false,
    };
    let mut model = match model::build(&cfg, spec, prec) {
        Ok(m) => m,
        Err(e) => panic!("model: {e}"),
    };
    let layout = model.layout().clone();
    let n = layout.total();
    let dev = Cpu;
    let mut params: Vec<f32> = dev.upload(&layout.init_host(42));
    let mut grads: Vec<f32> = dev.zeros(n);
    let (mut m, mut v): (Vec<f32>, Vec<f32>) = (dev.zeros(n), dev.zeros(n));
    let adam = AdamConfig::adamw(1e-4, 0.01);
    let batch = synthetic::masked_gene_batch(s.batch, s.seq, s.vocab, s.masked_per_cell());

    // The trainer's step: gradient of the loss sum, divided by the target count, clipped at
    // 1.0, AdamW, gradients zeroed.
    let mut losses = Vec::new();
    let mut times = Vec::new();
    let (mut cpu0, mut wall0) = (0.0, Instant::now());
    for step in 0..warmup + iters {
        if step == warmup {
            (cpu0, wall0) = (cpu_seconds(), Instant::now());
        }
        let t0 = Instant::now();
        let key = RngKey::new(42, step as u64, 0);
        let ls = match model.train_batch(&params, &mut grads, &batch, key, 1.0, &mut |_, _| {}) {
            Ok(l) => l,
            Err(e) => panic!("train_batch: {e}"),
        };
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
        let secs = t0.elapsed().as_secs_f64();
        losses.push(ls.mean());
        if step >= warmup {
            times.push(secs * 1e3);
        }
    }
    // Share of the machine's threads this process got while timed (1.0 = all of them busy
    // for it the whole time): on a shared machine, how contended the measurement was.
    let threads = rayon::current_num_threads();
    let cpu_share = (cpu_seconds() - cpu0) / (wall0.elapsed().as_secs_f64() * threads as f64);
    println!(
        "{{\"impl\":\"anvil\",\"threads\":{threads},\"best_ms\":{:.1},\"median_ms\":{:.1},\"times_ms\":{:?},\"cpu_share\":{cpu_share:.2},\"masked\":{},\"first_loss\":{:.4},\"last_loss\":{:.4},\"peak_rss_mb\":{:.1},\"params\":{n}}}",
        min(&times),
        median(&times),
        times.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>(),
        s.batch * s.masked_per_cell(),
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN),
        peak_rss_mb(),
    );
}

/// A flat JSON object's numeric field (the children print flat objects).
fn json_num(line: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let i = line.find(&pat)? + pat.len();
    let rest = line[i..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs a child command and returns the last JSON line it printed.
fn run_json(cmd: &mut Command, what: &str) -> Option<String> {
    match cmd.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .map(str::to_string),
        Ok(o) => {
            eprintln!(
                "{what} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("{what} not run: {e}");
            None
        }
    }
}

fn torch_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/benches/model_step_torch.py")
}

/// GFLOP/s of a square f32 product through the CPU device's `matmul` (the linear layers' path;
/// `tb` = x·Wᵀ as in the forward).
fn gemm_gflops(prec: Precision, n: usize, tb: bool, iters: usize) -> f64 {
    let key = RngKey::new(7, 0, 0);
    let a: Vec<f32> = (0..n * n)
        .map(|i| key.bits(i as u64) as f32 / 4_294_967_296.0 - 0.5)
        .collect();
    let b: Vec<f32> = a.iter().rev().copied().collect();
    let mut c = vec![0.0f32; n * n];
    let mut run = || {
        let t0 = Instant::now();
        Cpu.matmul(prec, &mut c, &a, false, &b, tb, n, n, n, false);
        t0.elapsed().as_secs_f64()
    };
    run();
    let best = (0..iters).map(|_| run()).fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// What bf16-mixed costs around its products on the CPU backend: the rate of rounding a buffer
/// to bf16 (kept in f32, as the elementwise ops do), and an f32 vs bf16-mixed `matmul` (the bf16
/// GEMM, which converts its f32 operands as it packs them) at shape (b)'s in-projection
/// (x[N, E] · W[3E, E]ᵀ).
fn bf16_overhead(iters: usize) {
    let n = 1 << 24;
    let key = RngKey::new(9, 0, 0);
    let src: Vec<f32> = (0..n)
        .map(|i| key.bits(i as u64) as f32 / 4_294_967_296.0 - 0.5)
        .collect();
    let mut buf = src.clone();
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..iters)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let copy = best(&mut || buf.copy_from_slice(&src));
    let round = best(&mut || {
        buf.copy_from_slice(&src);
        Cpu.round(Precision::Bf16Mixed, &mut buf);
    });
    let (tokens, e) = (8 * 2048, 256);
    let x = src[..tokens * e].to_vec();
    let w = src[tokens * e..tokens * e + 3 * e * e].to_vec();
    let mut y = vec![0.0f32; tokens * 3 * e];
    let mut mm = |p: Precision| {
        best(&mut || Cpu.matmul(p, &mut y, &x, false, &w, true, tokens, 3 * e, e, false))
    };
    let (f32_s, bf16_s) = (mm(Precision::F32), mm(Precision::Bf16Mixed));
    println!(
        "{{\"bench\":\"bf16_overhead\",\"elements\":{n},\"copy_ns_per_elem\":{:.2},\"copy_and_round_ns_per_elem\":{:.2},\"matmul_shape\":[{tokens},{e},{}],\"matmul_f32_ms\":{:.2},\"matmul_bf16_mixed_ms\":{:.2}}}",
        copy / n as f64 * 1e9,
        round / n as f64 * 1e9,
        3 * e,
        f32_s * 1e3,
        bf16_s * 1e3,
    );
}

/// The best GEMM GFLOP/s seen in the run, per precision.
#[derive(Default)]
struct Peaks {
    f32: f64,
    bf16: f64,
}

impl Peaks {
    fn note(&mut self, prec: Precision, gflops: f64) {
        let p = match prec {
            Precision::F32 => &mut self.f32,
            Precision::Bf16Mixed => &mut self.bf16,
            Precision::F16Mixed => return, // not benchmarked here
        };
        *p = p.max(gflops);
    }

    fn of(&self, prec: Precision) -> f64 {
        match prec {
            Precision::F32 => self.f32,
            Precision::Bf16Mixed => self.bf16,
            Precision::F16Mixed => f64::NAN,
        }
    }
}

fn parse_prec(name: &str) -> Precision {
    Precision::parse(name).unwrap_or_else(|| panic!("unknown precision {name:?} (32 | bf16-mixed)"))
}

/// One configuration: the JSON lines both children printed.
struct Row {
    shape: Shape,
    prec: String,
    dropout: f64,
    warmup: usize,
    iters: usize,
    anvil: String,
    torch: Option<String>,
}

impl Row {
    fn anvil(&self, key: &str) -> Option<f64> {
        json_num(&self.anvil, key)
    }
    fn torch(&self, key: &str) -> Option<f64> {
        self.torch.as_deref().and_then(|l| json_num(l, key))
    }
}

fn main() {
    // The worker binary's allocator setting and thread pool (this thread one of rayon's
    // workers), so the step is timed as training runs it.
    worker::alloc::keep_freed_memory();
    worker::threads::main_thread_joins_the_pool();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let has = |name: &str| args.iter().any(|a| a == name);

    if let Some(i) = args.iter().position(|a| a == "--child") {
        let a = &args[i + 1..];
        let shape = Shape::by_id(&a[0]).expect("shape");
        let num = |k: usize| a[k].parse::<f64>().expect("number");
        child(&shape, &a[1], num(2), num(3) as usize, num(4) as usize);
        return;
    }

    let quick = has("--quick");
    let iters: Option<usize> = flag("--iters").and_then(|v| v.parse().ok());
    let only = flag("--only").cloned();
    let precs: Vec<String> = match flag("--prec") {
        Some(p) => vec![p.clone()],
        None => vec!["32".into(), "bf16-mixed".into()],
    };
    let no_torch = has("--no-torch");
    let torch_compile = has("--torch-compile");
    let exe = std::env::current_exe().expect("current exe");
    let load_start = load_average();
    let started = Instant::now();

    // The GEMM peak per precision: the kernels' own matmul here, PyTorch's `mm` below.
    let gemm_iters = if quick { 2 } else { 5 };
    let mut peaks = Peaks::default();
    for name in ["32", "bf16-mixed"] {
        let prec = parse_prec(name);
        for (n, tb) in [(1024, false), (2048, false), (2048, true)] {
            let g = gemm_gflops(prec, n, tb, gemm_iters);
            println!(
                "{{\"bench\":\"gemm_peak\",\"impl\":\"anvil\",\"precision\":\"{name}\",\"n\":{n},\"b_transposed\":{tb},\"gflops\":{g:.1}}}"
            );
            peaks.note(prec, g);
        }
    }
    let torch_gemm = (!no_torch)
        .then(|| {
            run_json(
                Command::new("python3").arg(torch_script()).args([
                    "gemm",
                    "2048",
                    &gemm_iters.to_string(),
                ]),
                "PyTorch GEMM",
            )
        })
        .flatten();
    if let Some(l) = &torch_gemm {
        println!("{{\"bench\":\"gemm_peak\",{}", &l[1..]);
        if let Some(g) = json_num(l, "fp32_gflops") {
            peaks.note(Precision::F32, g);
        }
        if let Some(g) = json_num(l, "bf16_gflops") {
            peaks.note(Precision::Bf16Mixed, g);
        }
    }
    println!(
        "{{\"bench\":\"env\",\"threads\":{},\"gemm_peak_f32_gflops\":{:.1},\"gemm_peak_bf16_gflops\":{:.1},\"load_average\":\"{load_start}\"}}",
        rayon::current_num_threads(),
        peaks.f32,
        peaks.bf16,
    );

    if precs.iter().any(|p| p == "bf16-mixed") {
        bf16_overhead(gemm_iters);
    }

    let mut rows = Vec::new();
    for s in SHAPES {
        if only.as_deref().is_some_and(|o| o != s.id && o != s.name) {
            continue;
        }
        let (warmup, n_iters) = match (iters, quick) {
            (Some(n), _) => (s.warmup, n),
            (None, true) => (1, 1),
            (None, false) => (s.warmup, s.iters),
        };
        let mut dropouts = vec![0.1];
        if !has("--no-dropout0") {
            dropouts.push(0.0);
        }
        for prec in &precs {
            for &dropout in &dropouts {
                // The machine is shared: the peak is re-measured before every configuration
                // and the best figure of the whole run is the one fractions are taken of.
                let p = parse_prec(prec);
                let g = gemm_gflops(p, 2048, true, 3);
                println!(
                    "{{\"bench\":\"gemm_peak\",\"impl\":\"anvil\",\"precision\":\"{prec}\",\"n\":2048,\"b_transposed\":true,\"gflops\":{g:.1},\"before\":\"{} {prec} {dropout}\"}}",
                    s.name
                );
                peaks.note(p, g);
                let mine = run_json(
                    Command::new(&exe).args([
                        "--child",
                        s.id,
                        prec,
                        &dropout.to_string(),
                        &warmup.to_string(),
                        &n_iters.to_string(),
                    ]),
                    "anvil child",
                );
                let Some(mine) = mine else { continue };
                let torch_run = |compiled: bool| {
                    let dims = [s.layers, s.hidden, s.heads, s.ffn, s.seq, s.batch, s.vocab]
                        .map(|x| x.to_string());
                    run_json(
                        Command::new("python3")
                            .arg(torch_script())
                            .arg("step")
                            .args(dims)
                            .args([
                                s.mask_ratio.to_string(),
                                dropout.to_string(),
                                prec.clone(),
                                warmup.to_string(),
                                n_iters.to_string(),
                            ])
                            .env("ANVIL_TORCH_COMPILE", if compiled { "1" } else { "0" }),
                        "PyTorch child",
                    )
                };
                let mut theirs = (!no_torch).then(|| torch_run(false)).flatten();
                // With --torch-compile, PyTorch's faster way (eager or compiled) is the peer.
                if !no_torch && torch_compile {
                    if let Some(c) = torch_run(true) {
                        eprintln!("  pytorch (torch.compile): {c}");
                        let best = |j: &str| json_num(j, "best_ms").unwrap_or(f64::MAX);
                        if theirs.as_deref().is_none_or(|e| best(&c) < best(e)) {
                            if let Some(e) = &theirs {
                                eprintln!("  pytorch (eager, slower): {e}");
                            }
                            theirs = Some(c);
                        }
                    }
                }
                eprintln!("  anvil:   {mine}");
                if let Some(t) = &theirs {
                    eprintln!("  pytorch: {t}");
                }
                rows.push(Row {
                    shape: s,
                    prec: prec.clone(),
                    dropout,
                    warmup,
                    iters: n_iters,
                    anvil: mine,
                    torch: theirs,
                });
            }
        }
    }

    let fmt =
        |x: Option<f64>, digits: usize| x.map_or("null".to_string(), |v| format!("{v:.digits$}"));
    for r in &rows {
        let (flops, tok) = (r.shape.model_flops(), r.shape.tokens() as f64);
        let peak = peaks.of(parse_prec(&r.prec));
        let side = |ms: Option<f64>, median: Option<f64>, mb: Option<f64>, cpu: Option<f64>| {
            format!(
                "{{\"ms_per_step\":{},\"median_ms\":{},\"tokens_per_s\":{},\"peak_mb\":{},\"model_gflops\":{},\"frac_of_peak\":{},\"cpu_share\":{}}}",
                fmt(ms, 1),
                fmt(median, 1),
                fmt(ms.map(|t| tok / (t / 1e3)), 0),
                fmt(mb, 0),
                fmt(ms.map(|t| flops / (t / 1e3) / 1e9), 1),
                fmt(ms.map(|t| flops / (t / 1e3) / 1e9 / peak), 3),
                fmt(cpu, 2),
            )
        };
        let (a, t) = (r.anvil("best_ms"), r.torch("best_ms"));
        println!(
            "{{\"bench\":\"model_step\",\"shape\":\"{}\",\"precision\":\"{}\",\"dropout\":{},\"warmup\":{},\"iters\":{},\"tokens_per_step\":{},\"model_gflop_per_step\":{:.1},\"gemm_peak_gflops\":{peak:.1},\"anvil\":{},\"pytorch\":{},\"speedup\":{}}}",
            r.shape.name,
            r.prec,
            r.dropout,
            r.warmup,
            r.iters,
            r.shape.tokens(),
            flops / 1e9,
            side(a, r.anvil("median_ms"), r.anvil("peak_rss_mb"), r.anvil("cpu_share")),
            side(t, r.torch("median_ms"), r.torch("peak_rss_mb"), r.torch("cpu_share")),
            fmt(a.zip(t).map(|(a, t)| t / a), 2),
        );
    }

    println!(
        "\nGEMM peak (best of the kernels' matmul and torch.mm in the run): f32 {:.1}, bf16 {:.1} GFLOP/s; anvil% and torch% are of the row's own precision's peak; load average {load_start} at start, {} at end; {:.0} s total",
        peaks.f32,
        peaks.bf16,
        load_average(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<27} {:<10} {:>4} {:>10} {:>10} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7} {:>9}",
        "shape",
        "precision",
        "drop",
        "anvil ms",
        "torch ms",
        "anvil t/s",
        "torch t/s",
        "speedup",
        "anvil MB",
        "torch MB",
        "anvil%",
        "torch%",
        "cpu a/t"
    );
    for r in &rows {
        let flops = r.shape.model_flops();
        let tok = r.shape.tokens() as f64;
        let peak = peaks.of(parse_prec(&r.prec));
        let pct = |ms: f64| 100.0 * flops / (ms / 1e3) / 1e9 / peak;
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("-".into(), f);
        let (a, t) = (r.anvil("best_ms").unwrap_or(f64::NAN), r.torch("best_ms"));
        println!(
            "{:<27} {:<10} {:>4} {:>10.0} {:>10} {:>9.0} {:>9} {:>7} {:>8.0} {:>8} {:>6.1}% {:>7} {:>9}",
            r.shape.name,
            r.prec,
            r.dropout,
            a,
            opt(t, &|t| format!(
                "{t:.0}{}",
                if r.torch.as_deref().is_some_and(|j| j.contains("\"compiled\": true")) {
                    " c"
                } else {
                    ""
                }
            )),
            tok / (a / 1e3),
            opt(t, &|t| format!("{:.0}", tok / (t / 1e3))),
            opt(t, &|t| format!("{:.2}x", t / a)),
            r.anvil("peak_rss_mb").unwrap_or(f64::NAN),
            opt(r.torch("peak_rss_mb"), &|m| format!("{m:.0}")),
            pct(a),
            opt(t, &|t| format!("{:.1}%", pct(t))),
            format!(
                "{}/{}",
                opt(r.anvil("cpu_share"), &|c| format!("{c:.2}")),
                opt(r.torch("cpu_share"), &|c| format!("{c:.2}"))
            ),
        );
    }
}
