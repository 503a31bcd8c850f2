//! The pose UNet's training step on the CPU (issue 10's speed goal): the model of
//! configs/sleap_synth_single_instance.yaml (filters 16, rate 2, max stride 16, output stride 2,
//! 3 nodes) at batch 4 on 128x128 grayscale, anvil against the same network in PyTorch
//! (`pose_step_torch.py`, as many threads as rayon), measured in the same run:
//!
//! * per conv layer, forward and forward + backward (dx when the model needs it, dW, db), at
//!   the exact shapes of the model; PyTorch the same `nn.Conv2d` with `x.requires_grad` as in
//!   the model (the first layer's input needs no gradient);
//! * the whole step: forward, MSE loss, backward, Adam (anvil: `UNetRun` + `pose_loss` +
//!   `adam_step`, as `worker train` runs it without the data pipeline; PyTorch: the same
//!   layers as an `nn.Module`, `F.mse_loss`, `torch.optim.Adam`), split into phases.
//!
//! Times are the median of `--iters` (default 30) after warm-up: the machines this runs on are
//! shared, so the median is steadier than the mean. anvil's step also reports `cpu_ms`, the
//! process CPU time per step, which other jobs' load moves less than wall time (for A/B runs of
//! two builds). No timed assertions.
//!
//!     cargo bench -p worker --bench pose_step [-- --iters N --no-torch --only-step --bf16]
//!
//! `--bf16` builds anvil's UNet in bf16-mixed (the convolutions' GEMMs on bf16 operands, AMX or
//! AVX512_BF16 where the CPU has them) instead of f32; sleap-nn trains in f32 only, so this is
//! anvil against itself, and the PyTorch rows stay f32.
//!
//! On a GPU (`--features cuda`, `-- --cuda`): the whole step on CUDA against PyTorch on the
//! same GPU (per-layer rows are CPU only); `--batch N --side S` size it (defaults 4 and 128;
//! `scripts/gpu-check.sh` uses 16 at 256).
//!
//! The Python is `$ANVIL_TORCH_PYTHON`, else the sleap-nn venv's, else `python3`.

use std::process::Command;
use std::time::Instant;

use configs::pose_net::UNetPlan;
use configs::SleapNnConfig;
use kernels::backend::{Conv2dShape, ConvDevice};
use kernels::optim::AdamConfig;
use kernels::{Cpu, ParamView, Precision};
use worker::pose::loss::pose_loss;
use worker::pose::unet::{UNetModel, UNetRun};

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../configs/sleap_synth_single_instance.yaml"
);
const NODES: usize = 3;
const BATCH: usize = 4;
const SIDE: usize = 128;

/// One convolution of the model at its input size.
struct Layer {
    name: String,
    c_in: usize,
    c_out: usize,
    k: usize,
    hw: usize,
    /// Whether the model propagates a gradient to its input (all but the first layer).
    needs_dx: bool,
}

/// The network as the torch script rebuilds it: encoder blocks (pool first?, convs), middle
/// convs, decoder blocks (skip channels, refine convs), head; convs as [c_in, c_out, k].
fn torch_spec(plan: &UNetPlan) -> String {
    let convs = |v: &[configs::pose_net::ConvPlan]| {
        let items: Vec<String> = v
            .iter()
            .map(|c| format!("[{},{},{}]", c.c_in, c.c_out, c.k))
            .collect();
        format!("[{}]", items.join(","))
    };
    let enc: Vec<String> = plan
        .encoder
        .iter()
        .map(|b| format!("[{},{}]", b.pool_first, convs(&b.convs)))
        .collect();
    let dec: Vec<String> = plan
        .decoder
        .iter()
        .map(|b| {
            let skip = b.skip.map_or("null".to_string(), |(e, _)| e.to_string());
            format!("[{skip},{}]", convs(&b.refine))
        })
        .collect();
    let h = &plan.head.conv;
    format!(
        "{{\"enc\":[{}],\"middle\":{},\"dec\":[{}],\"head\":[{},{},{}]}}",
        enc.join(","),
        convs(&plan.middle),
        dec.join(","),
        h.c_in,
        h.c_out,
        h.k
    )
}

fn layers(plan: &UNetPlan) -> Vec<Layer> {
    let mut v = Vec::new();
    let mut push = |c: &configs::pose_net::ConvPlan, stride: usize, needs_dx: bool| {
        v.push(Layer {
            name: c.name.rsplit('.').next().unwrap_or(&c.name).to_string(),
            c_in: c.c_in,
            c_out: c.c_out,
            k: c.k,
            hw: SIDE / stride,
            needs_dx,
        })
    };
    for (bi, b) in plan.encoder.iter().enumerate() {
        for (i, c) in b.convs.iter().enumerate() {
            push(c, b.stride, !(bi == 0 && i == 0));
        }
    }
    for c in &plan.middle {
        push(c, plan.max_stride, true);
    }
    for b in &plan.decoder {
        for c in &b.refine {
            push(c, b.stride, true);
        }
    }
    push(&plan.head.conv, plan.head.output_stride, true);
    v
}

/// CPU seconds used by the whole process so far (all threads): under load from other jobs
/// this moves much less than wall time, so A/B comparisons on a shared machine read it too.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fill(len: usize, mul: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * mul) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// (forward ms, forward + backward ms) of one layer, medians of `iters`.
fn anvil_layer(l: &Layer, iters: usize, prec: Precision) -> (f64, f64) {
    let dev = Cpu;
    let s = Conv2dShape {
        n: BATCH,
        c_in: l.c_in,
        h: l.hw,
        w: l.hw,
        c_out: l.c_out,
        k: l.k,
        stride: 1,
        pad: Conv2dShape::same_pad(l.k),
    };
    let (xl, yl, wl) = (
        BATCH * l.c_in * l.hw * l.hw,
        BATCH * l.c_out * l.hw * l.hw,
        l.c_out * l.c_in * l.k * l.k,
    );
    let x = fill(xl, 7919);
    let dy = fill(yl, 104729);
    let params: Vec<f32> = (0..wl + l.c_out)
        .map(|i| ((i * 31) % 97) as f32 / 970.0)
        .collect();
    let wv = ParamView { offset: 0, len: wl };
    let bv = Some(ParamView {
        offset: wl,
        len: l.c_out,
    });
    let mut y = vec![0f32; yl];
    let mut dx = vec![0f32; xl];
    let mut grads = vec![0f32; params.len()];
    let (mut fwd, mut all) = (Vec::new(), Vec::new());
    for it in 0..iters + 2 {
        let t = Instant::now();
        dev.conv2d_forward(prec, &mut y, &x, &params, wv, bv, s);
        let f = t.elapsed().as_secs_f64();
        let dxo = l.needs_dx.then_some(&mut dx);
        dev.conv2d_backward(prec, dxo, &mut grads, &dy, &x, &params, wv, bv, s);
        let a = t.elapsed().as_secs_f64();
        if it >= 2 {
            fwd.push(f * 1e3);
            all.push(a * 1e3);
        }
    }
    (median(fwd), median(all))
}

/// Median milliseconds of the whole step and of its phases: forward, loss, backward, optimizer
/// (the gradient zeroing, global norm and Adam, as `worker train` runs them), and the median
/// process CPU milliseconds of a step. On a GPU each phase ends with a read that waits for the
/// device (the loss reads the maps anyway).
fn anvil_step<D: ConvDevice<f32>>(
    dev: &D,
    model: &UNetModel,
    iters: usize,
    batch: usize,
    side: usize,
) -> [f64; 6] {
    let n = model.layout().total();
    let mut params = dev.upload(&model.layout().init_host::<f32>(0));
    let mut grads = dev.zeros(n);
    let (mut m, mut v) = (dev.zeros(n), dev.zeros(n));
    let input = fill(batch * side * side, 7919)
        .into_iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect::<Vec<_>>();
    let mut run = UNetRun::new(model, dev);
    let mut dout_mem = D::Mem::default();
    let adam = AdamConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
    };
    let mut dout = Vec::new();
    let mut target = Vec::new();
    let mut phases: [Vec<f64>; 6] = Default::default();
    for it in 0..iters + 3 {
        let cpu0 = process_cpu_s();
        let t0 = Instant::now();
        let y = run.forward(&params, &input, batch, side, side).unwrap();
        let y = dev.read(y, 0..dev.len(y));
        let t1 = Instant::now();
        if target.is_empty() {
            target = fill(y.len(), 131).iter().map(|v| v.abs()).collect();
        }
        dout.resize(y.len(), 0.0);
        let hw = y.len() / (batch * NODES);
        pose_loss(&y, &target, batch, NODES, hw, None, Some(&mut dout));
        dev.resize(&mut dout_mem, dout.len());
        dev.write(&mut dout_mem, 0, &dout);
        let t2 = Instant::now();
        dev.fill_zero(&mut grads);
        run.backward(&params, &mut grads, &dout_mem).unwrap();
        std::hint::black_box(dev.read(&grads, 0..1));
        let t3 = Instant::now();
        std::hint::black_box(dev.global_norm(&grads));
        dev.adam_step(
            &adam,
            it as u64 + 1,
            &mut params,
            &grads,
            &mut m,
            &mut v,
            &[],
        );
        std::hint::black_box(dev.read(&params, 0..1));
        let t4 = Instant::now();
        let cpu = (process_cpu_s() - cpu0) * 1e3;
        if it >= 3 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            for (p, val) in phases.iter_mut().zip([
                ms(t0, t4),
                ms(t0, t1),
                ms(t1, t2),
                ms(t2, t3),
                ms(t3, t4),
                cpu,
            ]) {
                p.push(val);
            }
        }
    }
    phases.map(median)
}

#[cfg(feature = "cuda")]
fn cuda_step(model: &UNetModel, iters: usize, batch: usize, side: usize) -> [f64; 6] {
    let dev = kernels::backend::cuda::Cuda::open(0).unwrap_or_else(|e| panic!("--cuda: {e}"));
    println!("{{\"bench\":\"gpu\",\"device\":{:?}}}", dev.describe());
    anvil_step(&dev, model, iters, batch, side)
}

#[cfg(not(feature = "cuda"))]
fn cuda_step(_: &UNetModel, _: usize, _: usize, _: usize) -> [f64; 6] {
    panic!("--cuda needs a build with `--features cuda`")
}

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

/// The torch script's stdout (JSON lines), or why there is none.
fn torch(
    spec: &str,
    iters: usize,
    only_step: bool,
    batch: usize,
    side: usize,
    device: &str,
) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pose_step_torch.py");
    let out = Command::new(python())
        .arg(script)
        .arg(spec)
        .args([
            batch.to_string(),
            side.to_string(),
            iters.to_string(),
            rayon::current_num_threads().to_string(),
            (only_step as u8).to_string(),
            device.to_string(),
        ])
        .output()
        .map_err(|e| format!("could not start python: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn main() {
    // As the worker binary does (`worker train`): without it every step page-faults its
    // activation buffers afresh (~10% of this step in the kernel). And its thread pool: this
    // thread one of rayon's workers.
    worker::alloc::keep_freed_memory();
    worker::threads::main_thread_joins_the_pool();
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let no_torch = args.iter().any(|a| a == "--no-torch");
    let cuda = args.iter().any(|a| a == "--cuda");
    let only_step = cuda || args.iter().any(|a| a == "--only-step");
    let number = |flag: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (batch, side) = (number("--batch", BATCH), number("--side", SIDE));
    let cfg: SleapNnConfig = configs::Sources::from_file(std::path::Path::new(CONFIG))
        .and_then(|s| s.load_as())
        .unwrap_or_else(|e| panic!("{CONFIG}: {e}"));
    let plan = UNetPlan::from_config(&cfg, NODES).unwrap_or_else(|e| panic!("{CONFIG}: {e}"));
    let device = if cuda { "cuda" } else { "cpu" };
    println!(
        "{{\"bench\":\"env\",\"device\":\"{device}\",\"threads\":{},\"iters\":{iters},\"batch\":{batch},\"side\":{side}}}",
        rayon::current_num_threads()
    );
    let prec = if args.iter().any(|a| a == "--bf16") {
        Precision::Bf16Mixed
    } else {
        Precision::F32
    };
    let model = UNetModel::new(plan.clone(), prec);
    let [step, fwd, loss, bwd, opt, cpu] = if cuda {
        cuda_step(&model, iters, batch, side)
    } else {
        anvil_step(&Cpu, &model, iters, batch, side)
    };
    println!(
        "{{\"bench\":\"step\",\"impl\":\"anvil\",\"step_ms\":{step:.2},\"forward_ms\":{fwd:.2},\"loss_ms\":{loss:.2},\"backward_ms\":{bwd:.2},\"optimizer_ms\":{opt:.2},\"cpu_ms\":{cpu:.2}}}"
    );
    if !only_step {
        let mut sum = (0.0, 0.0);
        for l in layers(&plan) {
            let (f, a) = anvil_layer(&l, iters, prec);
            sum = (sum.0 + f, sum.1 + a);
            println!(
                "{{\"bench\":\"layer\",\"impl\":\"anvil\",\"layer\":\"{}\",\"c_in\":{},\"c_out\":{},\"k\":{},\"hw\":{},\"fwd_ms\":{f:.3},\"fwd_bwd_ms\":{a:.3}}}",
                l.name, l.c_in, l.c_out, l.k, l.hw
            );
        }
        println!(
            "{{\"bench\":\"layers_total\",\"impl\":\"anvil\",\"fwd_ms\":{:.2},\"fwd_bwd_ms\":{:.2}}}",
            sum.0, sum.1
        );
    }
    if no_torch {
        return;
    }
    match torch(&torch_spec(&plan), iters, only_step, batch, side, device) {
        Ok(out) => print!("{out}"),
        Err(e) => println!("{{\"bench\":\"step\",\"impl\":\"pytorch\",\"skipped\":{e:?}}}"),
    }
}
