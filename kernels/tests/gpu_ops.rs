//! The GPU op suite: each `Device` and `ConvDevice` op run on the CUDA backend and on the CPU backend with the
//! same random inputs, results compared within the precision's tolerance (f32: 1e-4 relative
//! to the largest magnitude, since sums run in other orders; bf16/fp16: 2e-2).
//!
//! `cargo test --release -p kernels --features cuda --test gpu_ops`. Its own harness: where no
//! device can be opened every case prints `SKIPPED` with the reason and the summary counts
//! them as skipped (set ANVIL_REQUIRE_GPU=1 to make that a failure, as scripts/gpu-check.sh
//! does).

use kernels::backend::cuda::suite::{self, Case};
use kernels::backend::cuda::Cuda;
use kernels::backend::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
use kernels::ops::attention::AttnOpts;
use kernels::ops::{Activation, AdamConfig, AttnShape, SeqLayout};
use kernels::rng::RngKey;
use kernels::{Cpu, Device, ParamView, Precision};

/// Deterministic values in [-scale, scale).
fn rand(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = kernels::rng::lowbias32(i as u32 ^ seed.wrapping_mul(0x9E37_79B9));
            (h as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Outputs of one case, by name, as host vectors.
type Outputs = Vec<(&'static str, Vec<f32>)>;

fn compare(cpu: &Outputs, gpu: &Outputs, tol: f32) -> Result<(), String> {
    for ((name, a), (_, b)) in cpu.iter().zip(gpu) {
        if a.len() != b.len() {
            return Err(format!(
                "{name}: {} values on CPU, {} on GPU",
                a.len(),
                b.len()
            ));
        }
        let mag = a.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if x.is_nan() != y.is_nan() || (x - y).abs() > tol * mag {
                return Err(format!(
                    "{name}[{i}]: CPU {x} GPU {y} (tolerance {tol} x {mag})"
                ));
            }
        }
    }
    Ok(())
}

fn matmul<D: Device<f32>>(d: &D, prec: Precision) -> Outputs {
    let (m, n, k) = (37, 45, 67);
    let mut out = Outputs::new();
    for (ta, tb, name) in [
        (false, false, "nn"),
        (true, false, "tn"),
        (false, true, "nt"),
        (true, true, "tt"),
    ] {
        let a = d.upload(&rand(m * k, 1, 1.0));
        let b = d.upload(&rand(k * n, 2, 1.0));
        let mut c = d.upload(&rand(m * n, 3, 1.0));
        d.matmul(prec, &mut c, &a, ta, &b, tb, m, n, k, true);
        out.push((name, d.download(&c)));
    }
    // An empty sum (k = 0): written as zeros, or left alone when accumulating.
    let (a, b) = (d.zeros(0), d.zeros(0));
    let mut c = d.upload(&rand(m * n, 4, 1.0));
    d.matmul(prec, &mut c, &a, false, &b, false, m, n, 0, true);
    out.push(("k0_accumulate", d.download(&c)));
    d.matmul(prec, &mut c, &a, false, &b, false, m, n, 0, false);
    out.push(("k0_write", d.download(&c)));
    out
}

fn linear<D: Device<f32>>(d: &D, prec: Precision) -> Outputs {
    let (n, i, o) = (50, 24, 40);
    let params = d.upload(&rand(o * i + o + 7, 4, 0.5));
    let (w, b) = (
        ParamView {
            offset: 7,
            len: o * i,
        },
        ParamView {
            offset: 7 + o * i,
            len: o,
        },
    );
    let x = d.upload(&rand(n * i, 5, 1.0));
    let mut y = d.zeros(n * o);
    d.linear_forward(prec, &mut y, &x, &params, w, Some(b), n, i, o);
    let dy = d.upload(&rand(n * o, 6, 1.0));
    let mut dx = d.upload(&rand(n * i, 7, 1.0));
    let mut grads = d.upload(&rand(o * i + o + 7, 8, 0.1));
    d.linear_backward(
        prec,
        Some(&mut dx),
        true,
        &mut grads,
        &dy,
        &x,
        &params,
        w,
        Some(b),
        n,
        i,
        o,
    );
    vec![
        ("y", d.download(&y)),
        ("dx", d.download(&dx)),
        ("grads", d.download(&grads)),
    ]
}

fn layernorm<D: Device<f32>>(d: &D) -> Outputs {
    let (n, c) = (33, 300);
    let params = d.upload(&rand(2 * c, 9, 1.0));
    let (g, b) = (
        ParamView { offset: 0, len: c },
        ParamView { offset: c, len: c },
    );
    let x = d.upload(&rand(n * c, 10, 2.0));
    let (mut y, mut mean, mut rstd) = (d.zeros(n * c), d.zeros(n), d.zeros(n));
    d.layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &params, g, b, n, c, 1e-5);
    let dy = d.upload(&rand(n * c, 11, 1.0));
    let mut dx = d.zeros(n * c);
    let mut grads = d.zeros(2 * c);
    d.layernorm_backward(
        &mut dx, false, &mut grads, &dy, &x, &mean, &rstd, &params, g, b, n, c,
    );
    vec![
        ("y", d.download(&y)),
        ("mean", d.download(&mean)),
        ("rstd", d.download(&rstd)),
        ("dx", d.download(&dx)),
        ("grads", d.download(&grads)),
    ]
}

fn embeddings<D: Device<f32>>(d: &D) -> Outputs {
    let (vocab, max_len, dim, n) = (50, 20, 16, 70);
    let total = vocab * dim + max_len * dim + 2 * dim;
    let params = d.upload(&rand(total, 12, 1.0));
    let gene = ParamView {
        offset: 0,
        len: vocab * dim,
    };
    let pos_v = ParamView {
        offset: vocab * dim,
        len: max_len * dim,
    };
    let vw = ParamView {
        offset: vocab * dim + max_len * dim,
        len: dim,
    };
    let vb = ParamView {
        offset: vw.offset + dim,
        len: dim,
    };
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7) % vocab as u32).collect();
    let pos: Vec<u32> = (0..n as u32).map(|i| i % max_len as u32).collect();
    let values = d.upload(&rand(n, 13, 3.0));
    let mut out = d.zeros(n * dim);
    d.token_embedding_forward(
        &mut out,
        &ids,
        &pos,
        &params,
        gene,
        pos_v,
        Some((vw, vb, &values)),
        dim,
    )
    .expect("forward");
    let dout = d.upload(&rand(n * dim, 14, 1.0));
    let mut grads = d.zeros(total);
    d.token_embedding_backward(
        &mut grads,
        &dout,
        &ids,
        &pos,
        gene,
        pos_v,
        Some((vw, vb, &values)),
        dim,
    )
    .expect("backward");
    let mut plain = d.zeros(n * dim);
    d.embedding_forward(&mut plain, &ids, &params, gene, dim)
        .expect("embedding");
    d.embedding_backward(&mut grads, gene, &dout, &ids, dim)
        .expect("embedding backward");
    // Out-of-range ids are an error on both backends, before any launch.
    assert!(d
        .embedding_forward(&mut plain, &[vocab as u32], &params, gene, dim)
        .is_err());
    vec![
        ("token", d.download(&out)),
        ("plain", d.download(&plain)),
        ("grads", d.download(&grads)),
    ]
}

fn rows<D: Device<f32>>(d: &D) -> Outputs {
    let dim = 24;
    let x = d.upload(&rand(30 * dim, 15, 1.0));
    let rows = [3usize, 0, 29, 3, 17];
    let mut g = d.zeros(rows.len() * dim);
    d.gather_rows(&mut g, &x, &rows, dim);
    let mut dst = d.upload(&rand(30 * dim, 16, 1.0));
    d.scatter_rows(&mut dst, &g, &rows, dim, true);
    let mut dst2 = d.zeros(30 * dim);
    d.scatter_rows(&mut dst2, &g, &[1, 2, 3, 4, 5], dim, false);
    let mut mean = d.zeros(3 * dim);
    d.mean_rows(&mut mean, &x, &[1, 2, 3, 10, 11], &[0, 3, 3, 5], dim);
    vec![
        ("gather", d.download(&g)),
        ("scatter_add", d.download(&dst)),
        ("scatter", d.download(&dst2)),
        ("mean", d.download(&mean)),
    ]
}

fn attention<D: Device<f32>>(
    d: &D,
    head_dim: usize,
    causal: bool,
    dropout: f64,
    prec: Precision,
) -> Outputs {
    let s = AttnShape {
        batch: 3,
        seq: 77,
        heads: 2,
        head_dim,
    };
    let e = s.embed();
    // Sequence 0 unpadded, 1 padded after 40 keys, 2 with a padding key inside as well.
    let mut pad = vec![false; s.batch * s.seq];
    for j in 40..s.seq {
        pad[s.seq + j] = true;
    }
    pad[2 * s.seq + 5] = true;
    let o = AttnOpts {
        key_pad: Some(&pad),
        packed: None,
        causal,
        dropout,
        key: RngKey::new(11, 3, 2),
        prec,
    };
    let qkv = d.upload(&rand(s.batch * s.seq * 3 * e, 17, 1.5));
    let mut out = d.zeros(s.batch * s.seq * e);
    let mut lse = d.zeros(s.batch * s.heads * s.seq);
    d.attention_forward(&mut out, &mut lse, &qkv, s, &o);
    let dout = d.upload(&rand(s.batch * s.seq * e, 18, 1.0));
    let mut dqkv = d.zeros(s.batch * s.seq * 3 * e);
    d.attention_backward(&mut dqkv, &dout, &out, &lse, &qkv, s, &o);
    vec![
        ("out", d.download(&out)),
        ("lse", d.download(&lse)),
        ("dqkv", d.download(&dqkv)),
    ]
}

/// Packed sequences (lengths 77, 40, 0, 13): the GPU runs them through its padded kernel, the
/// CPU natively; the two agree, dropout masks included.
fn attention_packed<D: Device<f32>>(d: &D, head_dim: usize, causal: bool, dropout: f64) -> Outputs {
    let layout = SeqLayout::packed([77, 40, 0, 13]);
    let s = layout.attn_shape(2, head_dim);
    let (key_pad, packed) = layout.masks();
    let o = AttnOpts {
        key_pad,
        packed,
        causal,
        dropout,
        key: RngKey::new(12, 4, 1),
        ..AttnOpts::default()
    };
    let (n, e) = (layout.rows(), s.embed());
    let qkv = d.upload(&rand(n * 3 * e, 27, 1.5));
    let mut out = d.zeros(n * e);
    let mut lse = d.zeros(n * s.heads);
    d.attention_forward(&mut out, &mut lse, &qkv, s, &o);
    let dout = d.upload(&rand(n * e, 28, 1.0));
    let mut dqkv = d.zeros(n * 3 * e);
    d.attention_backward(&mut dqkv, &dout, &out, &lse, &qkv, s, &o);
    vec![
        ("out", d.download(&out)),
        ("lse", d.download(&lse)),
        ("dqkv", d.download(&dqkv)),
    ]
}

fn elementwise<D: Device<f32>>(d: &D) -> Outputs {
    let n = 5000;
    let x = d.upload(&rand(n, 19, 4.0));
    let dy = d.upload(&rand(n, 20, 1.0));
    let mut out = Outputs::new();
    for (act, name, dname) in [
        (Activation::Gelu, "gelu", "gelu_backward"),
        (Activation::Relu, "relu", "relu_backward"),
    ] {
        let mut y = d.zeros(n);
        d.activation_forward(act, &mut y, &x);
        let mut dx = d.zeros(n);
        d.activation_backward(act, &mut dx, &dy, &x);
        out.push((name, d.download(&y)));
        out.push((dname, d.download(&dx)));
    }
    let mut dr = d.upload(&rand(n, 21, 1.0));
    d.dropout_forward(&mut dr, 0.3, RngKey::new(5, 6, 7));
    out.push(("dropout", d.download(&dr)));
    let mut r = d.zeros(n);
    d.residual_forward(&mut r, &x, &dy);
    d.add_inplace(&mut r, &x);
    d.scale(&mut r, 0.37);
    out.push(("residual_add_scale", d.download(&r)));
    let mut rb = d.upload(&rand(n, 22, 3.0));
    d.round(Precision::Bf16Mixed, &mut rb);
    out.push(("round_bf16", d.download(&rb)));
    let mut rh = d.upload(&rand(n, 23, 3.0));
    d.round(Precision::F16Mixed, &mut rh);
    out.push(("round_fp16", d.download(&rh)));
    out
}

fn losses<D: Device<f32>>(d: &D) -> Outputs {
    let (n, v) = (40, 1000);
    let logits = d.upload(&rand(n * v, 24, 5.0));
    let targets: Vec<i64> = (0..n as i64)
        .map(|i| {
            if i % 7 == 3 {
                -100
            } else {
                (i * 31) % v as i64
            }
        })
        .collect();
    let mut dl = d.zeros(n * v);
    let loss = d
        .cross_entropy(&mut dl, &logits, &targets, n, v, 1.5)
        .expect("cross entropy");
    let y = d.upload(&rand(300, 25, 2.0));
    let t = d.upload(&rand(300, 26, 2.0));
    let mut dy = d.zeros(300);
    let se = d
        .squared_error_sum(Some(&mut dy), &y, &t, 0.25)
        .expect("squared error");
    vec![
        ("ce_loss", vec![loss as f32]),
        ("ce_grad", d.download(&dl)),
        ("se_sum", vec![se as f32]),
        ("se_grad", d.download(&dy)),
    ]
}

fn optimizer<D: Device<f32>>(d: &D) -> Outputs {
    let n = 70_000;
    let mut p = d.upload(&rand(n, 27, 1.0));
    let mut g = d.upload(&rand(n, 28, 0.5));
    let (mut m, mut v) = (d.zeros(n), d.zeros(n));
    let cfg = AdamConfig::adamw(1e-3, 0.01);
    let norm = d.clip_grad_norm(&mut g, 1.0);
    for t in 1..=3 {
        d.adam_step(
            &cfg,
            t,
            &mut p,
            &g,
            &mut m,
            &mut v,
            &[10..20, 40_000..40_010],
        );
    }
    // One parameter group (fine-tuning's head): only 30_000..60_000 moves.
    d.adam_step_in(
        &cfg,
        4,
        30_000..60_000,
        &mut p,
        &g,
        &mut m,
        &mut v,
        30_000,
        &[10..20, 40_000..40_010],
    );
    // The same group with compact moments (only what trains, as under LoRA).
    let (mut mc, mut vc) = (d.zeros(30_000), d.zeros(30_000));
    d.adam_step_in(
        &cfg,
        1,
        30_000..60_000,
        &mut p,
        &g,
        &mut mc,
        &mut vc,
        0,
        &[10..20, 40_000..40_010],
    );
    let finite = d.all_finite(&p) as u8 as f32;
    let mut bad = d.upload(&rand(100, 29, 1.0));
    d.scale(&mut bad, f64::INFINITY);
    let not_finite = d.all_finite(&bad) as u8 as f32;
    vec![
        ("norm", vec![norm as f32, d.global_norm(&g) as f32]),
        ("params", d.download(&p)),
        ("exp_avg", d.download(&m)),
        ("exp_avg_sq", d.download(&v)),
        ("exp_avg_compact", d.download(&mc)),
        ("exp_avg_sq_compact", d.download(&vc)),
        ("finite", vec![finite, not_finite]),
    ]
}

/// Buffers: resize keeps the prefix and zero-fills, copy and read see the same bytes.
fn buffers<D: Device<f32>>(d: &D) -> Outputs {
    let mut a = d.upload(&rand(100, 30, 1.0));
    d.resize(&mut a, 150);
    d.resize(&mut a, 60);
    d.resize(&mut a, 90);
    let mut b = d.zeros(120);
    d.copy(&mut b, &a);
    let part = d.read(&b, 50..100).into_owned();
    let mut z = d.upload(&rand(10, 31, 1.0));
    d.fill_zero(&mut z);
    vec![
        ("resized", d.download(&a)),
        ("copied", d.download(&b)),
        ("read", part),
        ("zeroed", d.download(&z)),
    ]
}

/// A case comparing the CPU's outputs (first) with the GPU's within `tol`.
/// The embedding ops after a prefetch of other arrays (a stale one), then with their ids and
/// positions prefetched (copied ahead on the copy stream): the same results as the CPU both
/// times, the first uploaded at the op, the second from the staged copies (hits counted).
fn prefetched_batch_arrays(g: &Cuda) -> Result<(), String> {
    let bytes = |x: &[u32]| x.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>();
    let (vocab, max_len, n) = (50u32, 20u32, 70u32);
    let ids: Vec<u32> = (0..n).map(|i| (i * 7) % vocab).collect();
    let pos: Vec<u32> = (0..n).map(|i| i % max_len).collect();
    let cpu = embeddings(&Cpu);
    for (what, staged) in [("stale prefetch", false), ("prefetched", true)] {
        let (hits, _) = g.prefetch_counts();
        if staged {
            g.prefetch(&[&bytes(&ids), &bytes(&pos)]);
        } else {
            let other: Vec<u32> = ids.iter().map(|i| (i + 1) % vocab).collect();
            g.prefetch(&[&bytes(&other)]);
        }
        let gpu = embeddings(g);
        compare(&cpu, &gpu, 1e-5).map_err(|e| format!("{what}: {e}"))?;
        let (after, _) = g.prefetch_counts();
        // ids and positions in two token ops, ids in two plain ones.
        let want = if staged { 6 } else { 0 };
        if after - hits < want || (!staged && after != hits) {
            return Err(format!(
                "{what}: {} staged arrays used, expected {want}",
                after - hits
            ));
        }
    }
    Ok(())
}

/// A weight `[a, b, k, k]` and bias `[c_out]` in one parameter buffer, and random gradients to
/// accumulate into (so `+=` is checked, not only `=`).
fn conv_params<D: Device<f32>>(
    d: &D,
    wlen: usize,
    c_out: usize,
    bias: bool,
) -> (D::Mem, D::Mem, ParamView, Option<ParamView>) {
    let total = wlen + if bias { c_out } else { 0 };
    let w = ParamView {
        offset: 0,
        len: wlen,
    };
    let b = bias.then_some(ParamView {
        offset: wlen,
        len: c_out,
    });
    (
        d.upload(&rand(total, 40, 0.5)),
        d.upload(&rand(total, 41, 0.1)),
        w,
        b,
    )
}

fn conv2d<D: ConvDevice<f32>>(d: &D, prec: Precision, s: Conv2dShape, bias: bool) -> Outputs {
    let (p, mut g, w, b) = conv_params(d, s.c_out * s.c_in * s.k * s.k, s.c_out, bias);
    let x = d.upload(&rand(s.n * s.c_in * s.h * s.w, 42, 1.0));
    let ylen = s.n * s.c_out * s.h_out() * s.w_out();
    let mut y = d.zeros(ylen);
    d.conv2d_forward(prec, &mut y, &x, &p, w, b, s);
    let dy = d.upload(&rand(ylen, 43, 1.0));
    let mut dx = d.upload(&rand(x_len(&s), 44, 1.0));
    d.conv2d_backward(prec, Some(&mut dx), &mut g, &dy, &x, &p, w, b, s);
    // Without dx (a first layer): only the parameter gradients, accumulated again.
    d.conv2d_backward(prec, None, &mut g, &dy, &x, &p, w, b, s);
    vec![
        ("y", d.download(&y)),
        ("dx", d.download(&dx)),
        ("grads", d.download(&g)),
    ]
}

fn x_len(s: &Conv2dShape) -> usize {
    s.n * s.c_in * s.h * s.w
}

fn conv_transpose2d<D: ConvDevice<f32>>(
    d: &D,
    prec: Precision,
    s: ConvTranspose2dShape,
) -> Outputs {
    let (p, mut g, w, b) = conv_params(d, s.c_in * s.c_out * s.k * s.k, s.c_out, true);
    let x = d.upload(&rand(s.n * s.c_in * s.h * s.w, 45, 1.0));
    let ylen = s.n * s.c_out * s.h_out() * s.w_out();
    let mut y = d.zeros(ylen);
    d.conv_transpose2d_forward(prec, &mut y, &x, &p, w, b, s);
    let dy = d.upload(&rand(ylen, 46, 1.0));
    let mut dx = d.zeros(s.n * s.c_in * s.h * s.w);
    d.conv_transpose2d_backward(prec, Some(&mut dx), &mut g, &dy, &x, &p, w, b, s);
    vec![
        ("y", d.download(&y)),
        ("dx", d.download(&dx)),
        ("grads", d.download(&g)),
    ]
}

/// `ties`: inputs on a coarse grid, so windows hold equal maxima and the first-maximum rule
/// decides where the gradient goes.
fn maxpool<D: ConvDevice<f32>>(d: &D, s: Pool2dShape, ties: bool) -> Outputs {
    let mut xs = rand(s.n * s.c * s.h * s.w, 47, 1.0);
    if ties {
        xs.iter_mut().for_each(|v| *v = (*v * 2.0).round());
    }
    let x = d.upload(&xs);
    let ylen = s.n * s.c * s.h_out() * s.w_out();
    let mut y = d.zeros(ylen);
    d.maxpool2d_forward(&mut y, &x, s);
    let dy = d.upload(&rand(ylen, 48, 1.0));
    let mut dx = d.upload(&rand(xs.len(), 49, 1.0));
    d.maxpool2d_backward(&mut dx, &dy, &x, s);
    vec![("y", d.download(&y)), ("dx", d.download(&dx))]
}

fn upsample<D: ConvDevice<f32>>(
    d: &D,
    nc: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
) -> Outputs {
    let x = d.upload(&rand(nc * h * w, 50, 1.0));
    let mut y = d.zeros(nc * ho * wo);
    d.upsample_bilinear2d_forward(&mut y, &x, nc, h, w, ho, wo);
    let dy = d.upload(&rand(nc * ho * wo, 51, 1.0));
    let mut dx = d.upload(&rand(nc * h * w, 52, 1.0));
    d.upsample_bilinear2d_backward(&mut dx, &dy, nc, h, w, ho, wo);
    vec![("y", d.download(&y)), ("dx", d.download(&dx))]
}

fn concat<D: ConvDevice<f32>>(d: &D) -> Outputs {
    let (ca, cb, n, hw) = (3, 2, 2, 12);
    let a = d.upload(&rand(n * ca * hw, 53, 1.0));
    let b = d.upload(&rand(n * cb * hw, 54, 1.0));
    let mut out = d.zeros(n * (ca + cb) * hw);
    d.concat_channels(&mut out, &a, ca, &b, cb, n, hw);
    let mut o = vec![("cat", d.download(&out))];
    for (acc_a, acc_b, name) in [
        (false, false, "split_write"),
        (true, false, "split_add_a"),
        (false, true, "split_add_b"),
    ] {
        let mut da = d.upload(&rand(n * ca * hw, 55, 1.0));
        let mut db = d.upload(&rand(n * cb * hw, 56, 1.0));
        d.split_channels(&mut da, acc_a, &mut db, acc_b, &out, ca, cb, n, hw);
        let mut both = d.download(&da);
        both.extend(d.download(&db));
        o.push((name, both));
    }
    o
}

#[allow(clippy::too_many_arguments)]
fn conv_shape(
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: [usize; 4],
) -> Conv2dShape {
    Conv2dShape {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
    }
}

fn case(name: &str, tol: f32, f: impl Fn(&Cuda) -> (Outputs, Outputs) + 'static) -> Case<'static> {
    (
        name.to_string(),
        Box::new(move |g| {
            let (cpu, gpu) = f(g);
            compare(&cpu, &gpu, tol)
        }),
    )
}

fn cases() -> Vec<Case<'static>> {
    let mut v = Vec::new();
    for (prec, tol, tag) in [
        (Precision::F32, 1e-4, "f32"),
        (Precision::Bf16Mixed, 2e-2, "bf16"),
        (Precision::F16Mixed, 2e-3, "fp16"),
    ] {
        v.push(case(&format!("matmul_{tag}"), tol, move |g| {
            (matmul(&Cpu, prec), matmul(g, prec))
        }));
        v.push(case(&format!("linear_{tag}"), tol, move |g| {
            (linear(&Cpu, prec), linear(g, prec))
        }));
    }
    v.push(case("layernorm", 1e-4, |g| (layernorm(&Cpu), layernorm(g))));
    v.push(case("embeddings", 1e-5, |g| {
        (embeddings(&Cpu), embeddings(g))
    }));
    v.push((
        "prefetched_batch_arrays".to_string(),
        Box::new(prefetched_batch_arrays),
    ));
    v.push(case("rows", 1e-6, |g| (rows(&Cpu), rows(g))));
    for dh in [16, 32, 64, 128] {
        for (causal, dropout, prec, tol) in [
            (false, 0.0, Precision::F32, 1e-4),
            (true, 0.0, Precision::F32, 1e-4),
            (false, 0.1, Precision::F32, 1e-4),
            (true, 0.1, Precision::Bf16Mixed, 3e-2),
        ] {
            let name = format!(
                "attention_d{dh}{}{}_{}",
                if causal { "_causal" } else { "" },
                if dropout > 0.0 { "_dropout" } else { "" },
                if prec == Precision::F32 {
                    "f32"
                } else {
                    "bf16"
                }
            );
            v.push(case(&name, tol, move |g| {
                (
                    attention(&Cpu, dh, causal, dropout, prec),
                    attention(g, dh, causal, dropout, prec),
                )
            }));
        }
    }
    for (causal, dropout) in [(false, 0.0), (true, 0.1)] {
        let name = format!(
            "attention_packed_d32{}",
            if causal { "_causal_dropout" } else { "" }
        );
        v.push(case(&name, 1e-4, move |g| {
            (
                attention_packed(&Cpu, 32, causal, dropout),
                attention_packed(g, 32, causal, dropout),
            )
        }));
    }
    v.push(case("elementwise", 1e-5, |g| {
        (elementwise(&Cpu), elementwise(g))
    }));
    v.push(case("losses", 1e-5, |g| (losses(&Cpu), losses(g))));
    v.push(case("optimizer", 1e-5, |g| (optimizer(&Cpu), optimizer(g))));
    v.push(case("buffers", 0.0, |g| (buffers(&Cpu), buffers(g))));
    // The pose family's image ops: the UNet's shapes (3x3 "same", 1x1 heads, a single-channel
    // first layer without bias, sleap-nn's transposed conv k3 s2 p1 op1) and odd ones (stride 2
    // with uneven padding, an even kernel, non-square sizes).
    let convs = [
        (
            "conv3x3_same",
            conv_shape(2, 5, 9, 7, 6, 3, 1, Conv2dShape::same_pad(3)),
            true,
        ),
        (
            "conv1x1_head",
            conv_shape(3, 8, 6, 5, 4, 1, 1, [0; 4]),
            true,
        ),
        (
            "conv3x3_first_layer_no_bias",
            conv_shape(2, 1, 8, 8, 4, 3, 1, Conv2dShape::same_pad(3)),
            false,
        ),
        (
            "conv3x3_stride2",
            conv_shape(2, 4, 10, 9, 3, 3, 2, [1, 0, 1, 0]),
            true,
        ),
        (
            "conv4x4_same",
            conv_shape(1, 3, 7, 6, 2, 4, 1, Conv2dShape::same_pad(4)),
            true,
        ),
    ];
    for (prec, tol, tag) in [
        (Precision::F32, 1e-4, "f32"),
        (Precision::Bf16Mixed, 2e-2, "bf16"),
    ] {
        for (name, s, bias) in convs {
            v.push(case(&format!("{name}_{tag}"), tol, move |g| {
                (conv2d(&Cpu, prec, s, bias), conv2d(g, prec, s, bias))
            }));
        }
        for (name, s) in [
            (
                "conv_transpose3x3_s2",
                ConvTranspose2dShape {
                    n: 2,
                    c_in: 5,
                    h: 4,
                    w: 3,
                    c_out: 3,
                    k: 3,
                    stride: 2,
                    pad: 1,
                    output_padding: 1,
                },
            ),
            (
                "conv_transpose2x2_s2",
                ConvTranspose2dShape {
                    n: 2,
                    c_in: 3,
                    h: 5,
                    w: 4,
                    c_out: 4,
                    k: 2,
                    stride: 2,
                    pad: 0,
                    output_padding: 0,
                },
            ),
        ] {
            v.push(case(&format!("{name}_{tag}"), tol, move |g| {
                (
                    conv_transpose2d(&Cpu, prec, s),
                    conv_transpose2d(g, prec, s),
                )
            }));
        }
    }
    let overlapping = Pool2dShape {
        n: 2,
        c: 2,
        h: 7,
        w: 6,
        k: 3,
        stride: 1,
        pad: [1, 1, 1, 1],
        zero_pad: false,
    };
    for (name, s, ties) in [
        (
            "maxpool_same_zero_pad",
            Pool2dShape::same(2, 3, 7, 6, 2, 2),
            false,
        ),
        (
            "maxpool_same_ties",
            Pool2dShape::same(2, 3, 8, 6, 2, 2),
            true,
        ),
        ("maxpool_overlapping_neg_inf_pad", overlapping, false),
        (
            "maxpool_overlapping_ties",
            Pool2dShape {
                zero_pad: true,
                ..overlapping
            },
            true,
        ),
    ] {
        v.push(case(name, 1e-6, move |g| {
            (maxpool(&Cpu, s, ties), maxpool(g, s, ties))
        }));
    }
    for (name, (nc, h, w, ho, wo)) in [
        ("upsample_bilinear_2x", (6, 5, 4, 10, 8)),
        ("upsample_bilinear_uneven", (3, 5, 7, 8, 3)),
    ] {
        v.push(case(name, 1e-5, move |g| {
            (
                upsample(&Cpu, nc, h, w, ho, wo),
                upsample(g, nc, h, w, ho, wo),
            )
        }));
    }
    v.push(case("concat_split_channels", 0.0, |g| {
        (concat(&Cpu), concat(g))
    }));
    v
}

fn main() {
    suite::run("GPU op suite", cases());
}
