//! Every backward against central finite differences in f64, and forwards against naive
//! references.

use crate::backend::{Cpu, Device};
use crate::modules::{EncoderLayerConfig, TransformerEncoderLayer};
use crate::ops::attention::AttnOpts;
use crate::ops::*;
use crate::params::{ParamLayout, ParamView};
use crate::rng::RngKey;
use crate::Precision;

/// Deterministic values in [-1, 1).
pub(crate) fn rand(n: usize, seed: u64) -> Vec<f64> {
    let k = RngKey::new(seed, 99, 7);
    (0..n)
        .map(|i| k.bits(i as u64) as f64 / 2_147_483_648.0 - 1.0)
        .collect()
}

/// Central differences of `f` with respect to every element of `x`.
pub(crate) fn fd(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let o = x[i];
            x[i] = o + h;
            let lp = f(&x);
            x[i] = o - h;
            let lm = f(&x);
            x[i] = o;
            (lp - lm) / (2.0 * h)
        })
        .collect()
}

#[track_caller]
pub(crate) fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |a, &b| a.max(b.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: analytic {g} vs numeric {w} (scale {scale})"
        );
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn linear_backward_matches_fd() {
    let (n, i, o) = (5, 4, 3);
    let (x, w, b, r) = (rand(n * i, 1), rand(o * i, 2), rand(o, 3), rand(n * o, 4));
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; n * o];
        linear_forward(Precision::F32, &mut y, x, w, Some(b), n, i, o);
        dot(&y, &r)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; n * i], vec![0.0; o * i], vec![0.0; o]);
    linear_backward(
        Precision::F32,
        Some(&mut dx),
        false,
        &mut dw,
        Some(&mut db),
        &r,
        &x,
        &w,
        n,
        i,
        o,
    );
    assert_close("dx", &dx, &fd(&x, |x| loss(x, &w, &b)), 1e-7);
    assert_close("dw", &dw, &fd(&w, |w| loss(&x, w, &b)), 1e-7);
    assert_close("db", &db, &fd(&b, |b| loss(&x, &w, b)), 1e-7);
    // Forward against the naive triple loop.
    let mut y = vec![0.0; n * o];
    linear_forward(Precision::F32, &mut y, &x, &w, Some(&b), n, i, o);
    for r in 0..n {
        for c in 0..o {
            let want = b[c] + (0..i).map(|k| x[r * i + k] * w[c * i + k]).sum::<f64>();
            assert!((y[r * o + c] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn matmul_transposes_and_large_parallel() {
    // Big enough to take faer's parallel path; all four transpose combinations.
    let (m, n, k) = (67, 45, 130);
    let a = rand(m * k, 5);
    let b = rand(k * n, 6);
    let naive = |ta: bool, tb: bool, a: &[f64], b: &[f64]| {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        let av = if ta { a[p * m + i] } else { a[i * k + p] };
                        let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                        av * bv
                    })
                    .sum();
            }
        }
        c
    };
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut c = vec![0.0; m * n];
        matmul(Precision::F32, &mut c, &a, ta, &b, tb, m, n, k, false);
        assert_close("matmul", &c, &naive(ta, tb, &a, &b), 1e-12);
    }
}

#[test]
fn bf16_mixed_linear_rounds_operands_only() {
    let (n, i, o) = (3, 8, 2);
    let x: Vec<f32> = rand(n * i, 7).iter().map(|&v| v as f32).collect();
    let w: Vec<f32> = rand(o * i, 8).iter().map(|&v| v as f32).collect();
    let mut y = vec![0.0f32; n * o];
    linear_forward(Precision::Bf16Mixed, &mut y, &x, &w, None, n, i, o);
    let rb = crate::precision::round_bf16;
    for r in 0..n {
        for c in 0..o {
            let want: f64 = (0..i)
                .map(|k| rb(x[r * i + k]) as f64 * rb(w[c * i + k]) as f64)
                .sum();
            assert!(
                (y[r * o + c] as f64 - want).abs() < 1e-5,
                "{} {}",
                y[r * o + c],
                want
            );
        }
    }
    let mut y32 = vec![0.0f32; n * o];
    linear_forward(Precision::F32, &mut y32, &x, &w, None, n, i, o);
    assert_ne!(y, y32, "bf16 rounding changed nothing");
}

#[test]
fn layernorm_forward_naive_and_backward_fd() {
    let (n, c) = (4, 7);
    let (x, g, b, r) = (rand(n * c, 11), rand(c, 12), rand(c, 13), rand(n * c, 14));
    let fwd = |x: &[f64], g: &[f64], b: &[f64]| {
        let (mut y, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut y, &mut m, &mut s, x, g, b, n, c, 1e-5);
        (y, m, s)
    };
    let (y, m, s) = fwd(&x, &g, &b);
    for row in 0..n {
        let xr = &x[row * c..(row + 1) * c];
        let mu = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            let want = (xr[j] - mu) / (var + 1e-5).sqrt() * g[j] + b[j];
            assert!((y[row * c + j] - want).abs() < 1e-12);
        }
    }
    let loss = |x: &[f64], g: &[f64], b: &[f64]| dot(&fwd(x, g, b).0, &r);
    let (mut dx, mut dg, mut db) = (vec![0.5; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm_backward(&mut dx, false, &mut dg, &mut db, &r, &x, &m, &s, &g, n, c);
    assert_close("dx", &dx, &fd(&x, |x| loss(x, &g, &b)), 1e-6);
    assert_close("dgamma", &dg, &fd(&g, |g| loss(&x, g, &b)), 1e-6);
    assert_close("dbeta", &db, &fd(&b, |b| loss(&x, &g, b)), 1e-6);
    // The parallel path (more than PAR_MIN elements) agrees with the serial one row by row.
    let (n2, c2) = (300, 128);
    let x2 = rand(n2 * c2, 15);
    let (g2, b2) = (rand(c2, 16), rand(c2, 17));
    let (mut y2, mut m2, mut s2) = (vec![0.0; n2 * c2], vec![0.0; n2], vec![0.0; n2]);
    layernorm_forward(&mut y2, &mut m2, &mut s2, &x2, &g2, &b2, n2, c2, 1e-5);
    let (mut y3, mut m3, mut s3) = (vec![0.0; c2], vec![0.0; 1], vec![0.0; 1]);
    layernorm_forward(
        &mut y3,
        &mut m3,
        &mut s3,
        &x2[c2 * 299..],
        &g2,
        &b2,
        1,
        c2,
        1e-5,
    );
    assert_close("parallel row", &y2[c2 * 299..], &y3, 1e-14);
}

#[test]
fn embedding_scatter_add_and_bad_index() {
    let (v, d) = (5, 3);
    let w = rand(v * d, 21);
    let idx = [1u32, 3, 1, 0];
    let r = rand(idx.len() * d, 22);
    let loss = |w: &[f64]| {
        let mut out = vec![0.0; idx.len() * d];
        embedding_forward(&mut out, &idx, w, v, d).expect("valid indices");
        dot(&out, &r)
    };
    let mut dw = vec![0.0; v * d];
    embedding_backward(&mut dw, &r, &idx, v, d).expect("valid indices");
    assert_close("dW", &dw, &fd(&w, loss), 1e-8);
    let mut out = vec![0.0; d];
    assert!(embedding_forward(&mut out, &[5], &w, v, d).is_err());
    assert!(embedding_backward(&mut dw, &r[..d], &[7], v, d).is_err());
    assert!(embedding_forward(&mut out, &[0], &w, v, 0).is_err());
}

/// Straightforward attention: materialize S, mask, softmax, multiply.
fn naive_attention(qkv: &[f64], s: AttnShape, pad: Option<&[bool]>, causal: bool) -> Vec<f64> {
    let (t, dh, e) = (s.seq, s.head_dim, s.embed());
    let mut out = vec![0.0; s.batch * t * e];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let at =
                |i: usize, part: usize, d: usize| qkv[(b * t + i) * 3 * e + part * e + h * dh + d];
            for i in 0..t {
                let mut sc: Vec<f64> = (0..t)
                    .map(|j| {
                        let masked = (causal && j > i) || pad.is_some_and(|p| p[b * t + j]);
                        if masked {
                            f64::NEG_INFINITY
                        } else {
                            (0..dh).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>()
                                / (dh as f64).sqrt()
                        }
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                sc.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
                for d in 0..dh {
                    out[(b * t + i) * e + h * dh + d] = (0..t).map(|j| sc[j] * at(j, 2, d)).sum();
                }
            }
        }
    }
    out
}

fn attn_fwd(qkv: &[f64], s: AttnShape, o: &AttnOpts) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; s.batch * s.seq * s.embed()];
    let mut lse = vec![0.0; s.batch * s.heads * s.seq];
    attention_forward(&mut out, &mut lse, qkv, s, o);
    (out, lse)
}

#[test]
fn attention_forward_matches_naive() {
    // seq 150 spans three query blocks; padding at the end of sequence 0 and in the middle of 1.
    let s = AttnShape {
        batch: 2,
        seq: 150,
        heads: 2,
        head_dim: 4,
    };
    let qkv = rand(s.batch * s.seq * 3 * s.embed(), 31);
    let mut pad = vec![false; 2 * 150];
    pad[100..150].fill(true);
    pad[150 + 20..150 + 25].fill(true);
    for causal in [false, true] {
        for p in [None, Some(&pad[..])] {
            let o = AttnOpts {
                key_pad: p,
                causal,
                ..Default::default()
            };
            let (out, _) = attn_fwd(&qkv, s, &o);
            assert_close(
                "attention",
                &out,
                &naive_attention(&qkv, s, p, causal),
                1e-12,
            );
        }
    }
}

#[test]
fn attention_backward_matches_fd() {
    let s = AttnShape {
        batch: 2,
        seq: 6,
        heads: 2,
        head_dim: 3,
    };
    let qkv = rand(s.batch * s.seq * 3 * s.embed(), 41);
    let r = rand(s.batch * s.seq * s.embed(), 42);
    let mut pad = [false; 12];
    pad[4] = true;
    pad[5] = true;
    pad[8] = true;
    for (causal, dropout, with_pad) in [
        (false, 0.0, true),
        (true, 0.0, false),
        (true, 0.3, true),
        (false, 0.3, false),
    ] {
        let o = AttnOpts {
            key_pad: with_pad.then_some(&pad[..]),
            packed: None,
            causal,
            dropout,
            key: RngKey::new(5, 6, 7),
            prec: Precision::F32,
        };
        let (out, lse) = attn_fwd(&qkv, s, &o);
        let mut dqkv = vec![1.0; qkv.len()];
        attention_backward(&mut dqkv, &r, &out, &lse, &qkv, s, &o);
        let num = fd(&qkv, |q| dot(&attn_fwd(q, s, &o).0, &r));
        assert_close(
            &format!("dqkv causal={causal} p={dropout}"),
            &dqkv,
            &num,
            1e-6,
        );
    }
    // Dropout on the attention weights really drops something.
    let o = AttnOpts {
        dropout: 0.5,
        key: RngKey::new(1, 2, 3),
        ..Default::default()
    };
    assert_ne!(
        attn_fwd(&qkv, s, &o).0,
        attn_fwd(&qkv, s, &AttnOpts::default()).0
    );
}

/// Packed sequences `lens` as (layout, padded key mask of [B, max], packed row → padded row).
fn packed_case(
    lens: &[usize],
    heads: usize,
    head_dim: usize,
) -> (SeqLayout, Vec<bool>, Vec<usize>) {
    let layout = SeqLayout::packed(lens.iter().copied());
    let t = layout.attn_shape(heads, head_dim).seq;
    let (mut pad, mut rows) = (vec![true; lens.len() * t], Vec::new());
    for (b, &l) in lens.iter().enumerate() {
        for j in 0..l {
            pad[b * t + j] = false;
            rows.push(b * t + j);
        }
    }
    (layout, pad, rows)
}

#[test]
fn packed_attention_matches_naive_and_fd() {
    // 150 spans three query blocks; an empty sequence in between.
    let (layout, pad, rows) = packed_case(&[150, 0, 37, 64], 2, 4);
    let s = layout.attn_shape(2, 4);
    let (n, e) = (layout.rows(), s.embed());
    let qkv = rand(n * 3 * e, 33);
    let mut qkv_padded = vec![0.0; s.batch * s.seq * 3 * e];
    crate::ops::scatter_rows(&mut qkv_padded, &qkv, &rows, 3 * e, false);
    for causal in [false, true] {
        let o = AttnOpts {
            packed: layout.masks().1,
            causal,
            ..Default::default()
        };
        let mut out = vec![0.0; n * e];
        let mut lse = vec![0.0; n * s.heads];
        attention_forward(&mut out, &mut lse, &qkv, s, &o);
        let want = naive_attention(&qkv_padded, s, Some(&pad), causal);
        let mut want_packed = vec![0.0; n * e];
        crate::ops::gather_rows(&mut want_packed, &want, &rows, e);
        assert_close("packed attention", &out, &want_packed, 1e-12);
    }
    // Backward against finite differences, with and without dropout.
    let (layout, _, _) = packed_case(&[4, 0, 3, 1], 2, 3);
    let s = layout.attn_shape(2, 3);
    let (n, e) = (layout.rows(), s.embed());
    let qkv = rand(n * 3 * e, 43);
    let r = rand(n * e, 44);
    let fwd = |q: &[f64], o: &AttnOpts| {
        let mut out = vec![0.0; n * e];
        let mut lse = vec![0.0; n * s.heads];
        attention_forward(&mut out, &mut lse, q, s, o);
        (out, lse)
    };
    for (causal, dropout) in [(false, 0.0), (true, 0.0), (false, 0.3), (true, 0.3)] {
        let o = AttnOpts {
            packed: layout.masks().1,
            causal,
            dropout,
            key: RngKey::new(5, 6, 7),
            ..Default::default()
        };
        let (out, lse) = fwd(&qkv, &o);
        let mut dqkv = vec![1.0; qkv.len()];
        attention_backward(&mut dqkv, &r, &out, &lse, &qkv, s, &o);
        let num = fd(&qkv, |q| dot(&fwd(q, &o).0, &r));
        assert_close(
            &format!("packed dqkv causal={causal} p={dropout}"),
            &dqkv,
            &num,
            1e-6,
        );
    }
}

/// The route a device without a packed kernel takes (CUDA): through the padded kernel, which
/// must give the native packed result, dropout masks included.
#[test]
fn packed_attention_through_the_padded_kernel_matches_native() {
    use crate::backend::packed_attention::{backward_via_padding, forward_via_padding};
    let (layout, _, _) = packed_case(&[77, 40, 0, 13], 2, 8);
    let s = layout.attn_shape(2, 8);
    let (n, e) = (layout.rows(), s.embed());
    let qkv = rand(n * 3 * e, 53);
    let dout = rand(n * e, 54);
    for (causal, dropout) in [(false, 0.0), (true, 0.0), (false, 0.3), (true, 0.3)] {
        let o = AttnOpts {
            packed: layout.masks().1,
            causal,
            dropout,
            key: RngKey::new(3, 4, 5),
            ..Default::default()
        };
        let run = |via_padding: bool| {
            let (mut out, mut lse) = (vec![0.0; n * e], vec![0.0; n * s.heads]);
            let mut dqkv = vec![0.0; n * 3 * e];
            if via_padding {
                forward_via_padding(&Cpu, &mut out, &mut lse, &qkv, s, &o);
                backward_via_padding(&Cpu, &mut dqkv, &dout, &out, &lse, &qkv, s, &o);
            } else {
                attention_forward(&mut out, &mut lse, &qkv, s, &o);
                attention_backward(&mut dqkv, &dout, &out, &lse, &qkv, s, &o);
            }
            (out, lse, dqkv)
        };
        let (native, padded) = (run(false), run(true));
        assert_close("out", &padded.0, &native.0, 1e-12);
        assert_close("lse", &padded.1, &native.1, 1e-12);
        assert_close("dqkv", &padded.2, &native.2, 1e-12);
    }
}

#[test]
fn fully_masked_rows_give_zero_output_and_grad() {
    let s = AttnShape {
        batch: 1,
        seq: 3,
        heads: 1,
        head_dim: 2,
    };
    let qkv = rand(3 * 6, 51);
    let pad = [true; 3];
    let o = AttnOpts {
        key_pad: Some(&pad),
        ..Default::default()
    };
    let (out, lse) = attn_fwd(&qkv, s, &o);
    assert!(out.iter().all(|&v| v == 0.0));
    let mut d = vec![1.0; qkv.len()];
    attention_backward(&mut d, &[1.0; 6], &out, &lse, &qkv, s, &o);
    assert!(d.iter().all(|&v| v == 0.0));
}

#[test]
fn activations_match_fd_and_known_values() {
    let x: Vec<f64> = rand(40, 61).iter().map(|v| v * 4.0).collect();
    let r = rand(40, 62);
    for act in [Activation::Gelu, Activation::Relu] {
        let f = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            activation_forward(act, &mut y, x);
            dot(&y, &r)
        };
        let mut dx = vec![0.0; 40];
        activation_backward(act, &mut dx, &r, &x);
        assert_close(&format!("{act:?}"), &dx, &fd(&x, f), 1e-7);
    }
    // Exact (erf) GELU, as torch.nn.GELU(): gelu(1) = 0.8413447460685429, gelu(-2) = -0.0455002638963584.
    let mut y = [0.0f64; 2];
    gelu_forward(&mut y, &[1.0, -2.0]);
    assert!((y[0] - 0.841_344_746_068_542_9).abs() < 1e-15);
    assert!((y[1] + 0.045_500_263_896_358_4).abs() < 1e-15);
}

#[test]
fn dropout_is_keyed_and_backward_uses_same_mask() {
    let x = vec![1.0f32; 100_000];
    let k = RngKey::new(3, 10, 2);
    let mut a = x.clone();
    dropout_forward(&mut a, 0.25, k);
    let mut b = x.clone();
    dropout_forward(&mut b, 0.25, k);
    assert_eq!(a, b);
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / 1e5;
    assert!((kept - 0.75).abs() < 0.01, "{kept}");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let mut c = x.clone();
    dropout_forward(&mut c, 0.25, RngKey::new(3, 11, 2));
    assert_ne!(a, c);
    let mut g = x.clone();
    dropout_backward(&mut g, 0.25, k);
    assert_eq!(g, a);
    let mut none = x.clone();
    dropout_forward(&mut none, 0.0, k);
    assert_eq!(none, x);
}

#[test]
fn residual_and_add() {
    let mut out = vec![0.0f64; 3];
    residual_forward(&mut out, &[1.0, 2.0, 3.0], &[0.5, 0.5, 0.5]);
    assert_eq!(out, vec![1.5, 2.5, 3.5]);
    add_inplace(&mut out, &[1.0, 1.0, 1.0]);
    assert_eq!(out, vec![2.5, 3.5, 4.5]);
}

#[test]
fn cross_entropy_value_grad_and_ignore() {
    let (n, v) = (4, 5);
    let z = rand(n * v, 71);
    let t = [2i64, IGNORE_INDEX, 0, 4];
    let mut dz = vec![0.0; n * v];
    let loss = cross_entropy(&mut dz, &z, &t, n, v, 1.0).expect("valid targets");
    // By hand: mean over the three non-ignored rows of lse − z[target].
    let want: f64 = [0usize, 2, 3]
        .iter()
        .map(|&r| {
            let row = &z[r * v..(r + 1) * v];
            row.iter().map(|x| x.exp()).sum::<f64>().ln() - row[t[r] as usize]
        })
        .sum::<f64>()
        / 3.0;
    assert!((loss - want).abs() < 1e-12);
    let num = fd(&z, |z| {
        let mut d = vec![0.0; n * v];
        cross_entropy(&mut d, z, &t, n, v, 1.0).unwrap_or(f64::NAN)
    });
    assert_close("dlogits", &dz, &num, 1e-7);
    assert!(dz[v..2 * v].iter().all(|&x| x == 0.0));
    assert!(cross_entropy(&mut dz, &z, &[5, 0, 0, 0], n, v, 1.0).is_err());
    assert!(cross_entropy(&mut dz, &z, &[-1, 0, 0, 0], n, v, 1.0).is_err());
    assert!(cross_entropy(&mut dz, &z, &[0, 0], n, v, 1.0).is_err());
}

#[test]
fn mse_value_and_grad() {
    let (x, y) = (rand(9, 81), rand(9, 82));
    let mut dx = vec![0.0; 9];
    let l = mse(&mut dx, &x, &y, 1.0).expect("same length");
    let want = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / 9.0;
    assert!((l - want).abs() < 1e-14);
    let num = fd(&x, |x| mse(&mut [0.0; 9], x, &y, 1.0).unwrap_or(f64::NAN));
    assert_close("dmse", &dx, &num, 1e-7);
    assert!(mse(&mut dx, &x, &y[..3], 1.0).is_err());
}

fn rand32(n: usize, seed: u64) -> Vec<f32> {
    rand(n, seed).iter().map(|&v| v as f32).collect()
}

fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn token_embedding_matches_naive_and_fd() {
    let (vocab, max_len, d) = (6, 5, 3);
    let ids = [1u32, 4, 4, 0, 5];
    let pos = [0u32, 1, 2, 1, 4];
    let n = ids.len();
    let (g, p, w, b) = (
        rand(vocab * d, 31),
        rand(max_len * d, 32),
        rand(d, 33),
        rand(d, 34),
    );
    let vals = rand(n, 35);
    let r = rand(n * d, 36);
    let fwd = |g: &[f64], p: &[f64], w: &[f64], b: &[f64], with_values: bool| {
        let mut out = vec![0.0; n * d];
        let value = with_values.then_some((w, b, &vals[..]));
        token_embedding_forward(&mut out, &ids, &pos, g, p, value, d).expect("in range");
        out
    };
    let out = fwd(&g, &p, &w, &b, true);
    for k in 0..n {
        let (i, t) = (ids[k] as usize, pos[k] as usize);
        for c in 0..d {
            let want = g[i * d + c] + p[t * d + c] + w[c] * vals[k] + b[c];
            assert!((out[k * d + c] - want).abs() < 1e-14);
        }
    }
    for with_values in [true, false] {
        let loss =
            |g: &[f64], p: &[f64], w: &[f64], b: &[f64]| dot(&fwd(g, p, w, b, with_values), &r);
        let (mut dg, mut dp, mut dw, mut db) = (
            vec![0.0; g.len()],
            vec![0.0; p.len()],
            vec![0.0; d],
            vec![0.0; d],
        );
        let dvalue = with_values.then_some((&mut dw[..], &mut db[..], &vals[..]));
        token_embedding_backward(&mut dg, &mut dp, dvalue, &r, &ids, &pos, d).expect("in range");
        assert_close("dgene", &dg, &fd(&g, |g| loss(g, &p, &w, &b)), 1e-8);
        assert_close("dpos", &dp, &fd(&p, |p| loss(&g, p, &w, &b)), 1e-8);
        if with_values {
            assert_close("dw", &dw, &fd(&w, |w| loss(&g, &p, w, &b)), 1e-8);
            assert_close("db", &db, &fd(&b, |b| loss(&g, &p, &w, b)), 1e-8);
        }
    }
    let mut out = vec![0.0; d];
    assert!(token_embedding_forward(&mut out, &[6], &[0], &g, &p, None, d).is_err());
    assert!(token_embedding_forward(&mut out, &[0], &[5], &g, &p, None, d).is_err());
    assert!(token_embedding_forward(&mut out, &[0, 1], &[0], &g, &p, None, d).is_err());
    let (mut dg, mut dp) = (vec![0.0; g.len()], vec![0.0; p.len()]);
    assert!(token_embedding_backward(&mut dg, &mut dp, None, &r[..d], &[9], &[0], d).is_err());
}

/// The loops the worker's TokenEmbedding ran before the op existed (gene scale 1.0), on the
/// flat buffers.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn old_token_embedding(
    params: &[f32],
    grads: &mut [f32],
    views: (ParamView, ParamView, Option<(ParamView, ParamView)>),
    ids: &[u32],
    pos: &[u32],
    values: &[f32],
    dout: &[f32],
    d: usize,
) -> Vec<f32> {
    let (gene, ptab, value) = views;
    let gs = 1.0f32;
    let mut out = vec![0.0f32; ids.len() * d];
    let (g, p) = (&params[gene.range()], &params[ptab.range()]);
    for (n, row) in out.chunks_exact_mut(d).take(ids.len()).enumerate() {
        let (id, t) = (ids[n] as usize, pos[n] as usize);
        let (gr, pr) = (&g[id * d..(id + 1) * d], &p[t * d..(t + 1) * d]);
        for k in 0..d {
            row[k] = gs * gr[k] + pr[k];
        }
        if let Some((w, b)) = value {
            let (w, b) = (&params[w.range()], &params[b.range()]);
            let v = values[n];
            for k in 0..d {
                row[k] += w[k] * v + b[k];
            }
        }
    }
    for (n, dr) in dout.chunks_exact(d).take(ids.len()).enumerate() {
        let (id, t) = (ids[n] as usize, pos[n] as usize);
        let off = gene.offset + id * d;
        for k in 0..d {
            grads[off + k] += gs * dr[k];
        }
        let off = ptab.offset + t * d;
        for k in 0..d {
            grads[off + k] += dr[k];
        }
    }
    if let Some((w, b)) = value {
        let mut dw = vec![0.0f32; d];
        let mut db = vec![0.0f32; d];
        for (n, dr) in dout.chunks_exact(d).take(ids.len()).enumerate() {
            let v = values[n];
            for k in 0..d {
                dw[k] += dr[k] * v;
                db[k] += dr[k];
            }
        }
        for k in 0..d {
            grads[w.offset + k] += dw[k];
            grads[b.offset + k] += db[k];
        }
    }
    out
}

#[test]
fn token_embedding_device_op_equals_the_old_loops_bit_for_bit() {
    let (vocab, max_len, d, n) = (50, 40, 24, 300);
    let mut l = ParamLayout::new();
    let gene = l.add("g", &[vocab, d], crate::Init::Zeros);
    let ptab = l.add("p", &[max_len, d], crate::Init::Zeros);
    let w = l.add("w", &[d, 1], crate::Init::Zeros);
    let b = l.add("b", &[d], crate::Init::Zeros);
    let params = rand32(l.total(), 41);
    let ids: Vec<u32> = (0..n).map(|i| (i * 7 % vocab) as u32).collect();
    let pos: Vec<u32> = (0..n).map(|i| (i % max_len) as u32).collect();
    let values: Vec<f32> = rand32(n, 42).iter().map(|v| v.abs() * 9.0).collect();
    let dout = rand32(n * d, 43);
    let dev = Cpu;
    for value in [Some((w, b)), None] {
        // Gradients start non-zero, as under gradient accumulation.
        let start = rand32(l.total(), 44);
        let mut old_grads = start.clone();
        let views = (gene, ptab, value);
        let want = old_token_embedding(
            &params,
            &mut old_grads,
            views,
            &ids,
            &pos,
            &values,
            &dout,
            d,
        );
        let vals = dev.upload(&values);
        let value = value.map(|(w, b)| (w, b, &vals));
        let mut out: Vec<f32> = dev.zeros(n * d);
        dev.token_embedding_forward(&mut out, &ids, &pos, &params, gene, ptab, value, d)
            .expect("in range");
        same_bits("forward", &out, &want);
        let mut grads = start.clone();
        dev.token_embedding_backward(&mut grads, &dout, &ids, &pos, gene, ptab, value, d)
            .expect("in range");
        same_bits("backward", &grads, &old_grads);
    }
}

#[test]
fn gather_scatter_rows_are_adjoint() {
    let (d, rows) = (3, [4usize, 0, 4, 2]);
    let x = rand(5 * d, 51);
    let r = rand(rows.len() * d, 52);
    let gather = |x: &[f64]| {
        let mut out = vec![0.0; rows.len() * d];
        gather_rows(&mut out, x, &rows, d);
        out
    };
    let out = gather(&x);
    for (k, &row) in rows.iter().enumerate() {
        assert_eq!(out[k * d..(k + 1) * d], x[row * d..(row + 1) * d]);
    }
    // d(r·gather(x))/dx = scatter-add of r (row 4 twice).
    let mut dx = vec![0.0; x.len()];
    scatter_rows(&mut dx, &r, &rows, d, true);
    assert_close("scatter-add", &dx, &fd(&x, |x| dot(&gather(x), &r)), 1e-9);
    // Without accumulate the rows are written (the last write of a repeated row wins).
    let mut dst = vec![7.0; x.len()];
    scatter_rows(&mut dst, &r, &rows[..2], d, false);
    assert_eq!(dst[4 * d..5 * d], r[..d]);
    assert_eq!(dst[..d], r[d..2 * d]);
    assert!(dst[d..4 * d].iter().all(|&v| v == 7.0));
}

#[test]
fn mean_rows_matches_fd_and_the_old_pooling_loop() {
    let (d, rows, offsets) = (2, [0usize, 2, 3, 1], [0usize, 3, 3, 4]);
    let x = rand(4 * d, 61);
    let r = rand(3 * d, 62);
    let mean = |x: &[f64]| {
        let mut out = vec![9.0; 3 * d];
        mean_rows(&mut out, x, &rows, &offsets, d);
        out
    };
    let out = mean(&x);
    for c in 0..d {
        assert!((out[c] - (x[c] + x[2 * d + c] + x[3 * d + c]) / 3.0).abs() < 1e-15);
        assert_eq!(out[d + c], 0.0, "an empty group is 0");
        assert_eq!(out[2 * d + c], x[d + c]);
    }
    let num = fd(&x, |x| dot(&mean(x), &r));
    let mut want = vec![0.0; x.len()];
    for (g, w) in offsets.windows(2).enumerate() {
        for &row in &rows[w[0]..w[1]] {
            for c in 0..d {
                want[row * d + c] += r[g * d + c] / (w[1] - w[0]) as f64;
            }
        }
    }
    assert_close("dmean", &want, &num, 1e-8);
    // The encoder's mean pooling over the real tokens, as it was written before the op.
    let (b, t, d) = (3, 20, 16);
    let h = rand32(b * t * d, 63);
    let pad: Vec<bool> = (0..b * t).map(|i| i % t >= t - 3 * (i / t) - 1).collect();
    let mut old = vec![0.0f32; b * d];
    for r in 0..b {
        let o = &mut old[r * d..(r + 1) * d];
        let mut n = 0usize;
        for j in 0..t {
            if !pad[r * t + j] {
                n += 1;
                let row = &h[(r * t + j) * d..(r * t + j + 1) * d];
                o.iter_mut().zip(row).for_each(|(a, b)| *a += *b);
            }
        }
        let inv = 1.0 / n.max(1) as f32;
        o.iter_mut().for_each(|a| *a *= inv);
    }
    let (mut all, mut offs) = (Vec::new(), vec![0]);
    for r in 0..b {
        all.extend((0..t).map(|j| r * t + j).filter(|&i| !pad[i]));
        offs.push(all.len());
    }
    let mut out = vec![0.0f32; b * d];
    mean_rows(&mut out, &h, &all, &offs, d);
    same_bits("mean pooling", &out, &old);
}

#[test]
fn squared_error_sum_matches_fd_and_the_old_loop() {
    let (y, t) = (rand(7, 71), rand(7, 72));
    let mut dy = vec![0.0; 7];
    let s = squared_error_sum(Some(&mut dy), &y, &t, 0.75).expect("same length");
    let want: f64 = y.iter().zip(&t).map(|(a, b)| (a - b).powi(2)).sum();
    assert!((s - want).abs() < 1e-14);
    let num = fd(&y, |y| {
        0.75 * squared_error_sum(None, y, &t, 0.0).unwrap_or(f64::NAN)
    });
    assert_close("dy", &dy, &num, 1e-7);
    assert!(squared_error_sum(None, &y, &t[..3], 1.0).is_err());
    assert!(squared_error_sum(Some(&mut dy[..2]), &y, &t, 1.0).is_err());
    // The masked autoencoder's loop before the op: f32 differences, f64 squares.
    let (y, t) = (rand32(500, 73), rand32(500, 74));
    let scale = 0.37f32;
    let old_sum: f64 = (0..y.len())
        .map(|i| {
            let e = (y[i] - t[i]) as f64;
            e * e
        })
        .sum();
    let old_dy: Vec<f32> = (0..y.len()).map(|i| 2.0 * scale * (y[i] - t[i])).collect();
    let mut dy = vec![0.0f32; y.len()];
    let s = squared_error_sum(Some(&mut dy), &y, &t, scale as f64).expect("same length");
    assert_eq!(s.to_bits(), old_sum.to_bits());
    same_bits("dy", &dy, &old_dy);
}

#[test]
fn scale_and_all_finite_over_parallel_chunks() {
    // Larger than one parallel chunk: the same as the trainer's sequential loop, bit for bit.
    let g = rand32(100_000, 81);
    let factor = 1.0 / (65536.0 * 37.0);
    let f = factor as f32;
    let want: Vec<f32> = g.iter().map(|&x| x * f).collect();
    let mut got = g.clone();
    scale(&mut got, factor);
    same_bits("scale", &got, &want);
    assert!(all_finite(&got));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = g.clone();
        x[77_777] = bad;
        assert!(!all_finite(&x));
    }
    let x = [3.0f64, 4.0];
    assert_eq!(global_norm(&x), 5.0);
}

fn small_layer(
    act: Activation,
    causal: bool,
    dropout: f64,
) -> (ParamLayout, TransformerEncoderLayer) {
    let mut l = ParamLayout::new();
    let cfg = EncoderLayerConfig {
        d_model: 8,
        nhead: 2,
        dim_feedforward: 12,
        dropout,
        activation: act,
        layer_norm_eps: 1e-5,
        causal,
        precision: Precision::F32,
    };
    let layer =
        TransformerEncoderLayer::new(&mut l, "encoder.layers.0", cfg).expect("valid config");
    (l, layer)
}

#[test]
fn encoder_layer_backward_matches_fd() {
    let (b, t, e) = (2, 5, 8);
    let mut pad = vec![false; b * t];
    pad[3] = true;
    pad[4] = true;
    for (act, causal, dropout) in [
        (Activation::Gelu, false, 0.0),
        (Activation::Relu, true, 0.2),
    ] {
        let (layout, layer) = small_layer(act, causal, dropout);
        let dev = Cpu;
        // Non-trivial LayerNorm affine and biases so their gradients are exercised.
        let params: Vec<f64> = rand(layout.total(), 91).iter().map(|v| v * 0.5).collect();
        let x = rand(b * t * e, 92);
        let r = rand(b * t * e, 93);
        let key = RngKey::new(1, 2, 0);
        let seqs = SeqLayout::Padded {
            batch: b,
            seq: t,
            key_pad: Some(pad.clone()),
        };
        let mut acts = layer.alloc_acts(&dev);
        let loss =
            |p: &Vec<f64>, x: &Vec<f64>, acts: &mut crate::modules::EncoderActs<Vec<f64>>| {
                layer
                    .forward(&dev, p, acts, x, &seqs, key)
                    .expect("shapes match");
                dot(&acts.out, &r)
            };
        loss(&params, &x, &mut acts);
        let mut grads = vec![0.0; layout.total()];
        let mut dx = vec![0.0; b * t * e];
        layer.backward(&dev, &params, &mut grads, &mut acts, &r, &mut dx, key);
        let mut acts2 = layer.alloc_acts(&dev);
        let num_x = fd(&x, |xx| loss(&params, &xx.to_vec(), &mut acts2));
        assert_close("encoder dx", &dx, &num_x, 1e-6);
        let num_p = fd(&params, |pp| loss(&pp.to_vec(), &x, &mut acts2));
        for entry in layout.entries() {
            let rg = entry.view().range();
            assert_close(&entry.name, &grads[rg.clone()], &num_p[rg], 1e-6);
        }
    }
}

#[test]
fn encoder_layer_rejects_bad_shapes() {
    let (layout, layer) = small_layer(Activation::Gelu, false, 0.0);
    let dev = Cpu;
    let params: Vec<f32> = layout.init_host(0);
    let mut acts = layer.alloc_acts(&dev);
    let key = RngKey::new(0, 0, 0);
    let seqs = SeqLayout::packed([5, 5]);
    assert!(layer
        .forward(&dev, &params, &mut acts, &vec![0.0f32; 10], &seqs, key)
        .is_err());
    let x = vec![0.0f32; 80];
    let short_mask = SeqLayout::Padded {
        batch: 2,
        seq: 5,
        key_pad: Some(vec![false; 3]),
    };
    assert!(layer
        .forward(&dev, &params, &mut acts, &x, &short_mask, key)
        .is_err());
    assert!(layer
        .forward(&dev, &params, &mut acts, &x, &seqs, key)
        .is_ok());
    let mut l2 = ParamLayout::new();
    let mut cfg = layer.cfg;
    cfg.nhead = 3;
    assert!(TransformerEncoderLayer::new(&mut l2, "x", cfg).is_err());
    let mut c0 = layer.cfg;
    c0.d_model = 0;
    assert!(TransformerEncoderLayer::new(&mut l2, "x", c0).is_err());
    let mut c1 = layer.cfg;
    c1.dropout = 1.0;
    assert!(TransformerEncoderLayer::new(&mut l2, "x", c1).is_err());
}

#[test]
fn f32_encoder_layer_agrees_with_f64() {
    let (b, t, e) = (2, 70, 8);
    let (layout, layer) = small_layer(Activation::Gelu, false, 0.1);
    let p64: Vec<f64> = layout.init_host(3);
    let p32: Vec<f32> = p64.iter().map(|&v| v as f32).collect();
    let x64 = rand(b * t * e, 101);
    let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
    let key = RngKey::new(4, 5, 6);
    let dev = Cpu;
    let mut a64 = layer.alloc_acts(&dev);
    let mut a32 = layer.alloc_acts(&dev);
    layer
        .forward(&dev, &p64, &mut a64, &x64, &SeqLayout::packed([t; 2]), key)
        .expect("ok");
    layer
        .forward(&dev, &p32, &mut a32, &x32, &SeqLayout::packed([t; 2]), key)
        .expect("ok");
    let o32: Vec<f64> = Device::<f32>::download(&dev, &a32.out)
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_close("f32 vs f64", &o32, &a64.out, 1e-5);
}

#[test]
fn bf16_mixed_encoder_layer_is_close_to_fp32() {
    let (b, t, e) = (2, 9, 8);
    let mut outs = Vec::new();
    let mut grads_all = Vec::new();
    for prec in [Precision::F32, Precision::Bf16Mixed, Precision::F16Mixed] {
        let mut l = ParamLayout::new();
        let cfg = EncoderLayerConfig {
            d_model: e,
            nhead: 2,
            dim_feedforward: 12,
            dropout: 0.0,
            activation: Activation::Gelu,
            layer_norm_eps: 1e-5,
            causal: true,
            precision: prec,
        };
        let layer = TransformerEncoderLayer::new(&mut l, "", cfg).expect("config");
        let p: Vec<f32> = l.init_host(9);
        let x: Vec<f32> = rand(b * t * e, 111).iter().map(|&v| v as f32).collect();
        let dev = Cpu;
        let mut acts = layer.alloc_acts(&dev);
        let key = RngKey::new(0, 0, 0);
        layer
            .forward(&dev, &p, &mut acts, &x, &SeqLayout::packed([t; 2]), key)
            .expect("forward");
        let mut g = vec![0.0f32; l.total()];
        let mut dx = vec![0.0f32; x.len()];
        layer.backward(&dev, &p, &mut g, &mut acts, &x, &mut dx, key);
        outs.push(acts.out.iter().map(|&v| v as f64).collect::<Vec<_>>());
        grads_all.push(g.iter().map(|&v| v as f64).collect::<Vec<_>>());
    }
    // bf16 has 8 mantissa bits (rel. ~4e-3 per operand), fp16 11: close to fp32, not equal.
    assert_close("bf16 out", &outs[1], &outs[0], 3e-2);
    assert_close("fp16 out", &outs[2], &outs[0], 5e-3);
    assert_close("bf16 grads", &grads_all[1], &grads_all[0], 5e-2);
    assert_ne!(outs[1], outs[0]);
    assert_ne!(outs[2], outs[1]);
}
