//! The image ops ([`crate::ops::conv`]): every backward against central finite differences in
//! f64, every forward against a direct loop, and the large (multi-block, parallel) paths
//! against the adjoint identity ⟨J·v, r⟩ = ⟨v, Jᵀ·r⟩.

use crate::backend::conv::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
use crate::backend::{Cpu, Device};
use crate::gradcheck_tests::{assert_close, dot, fd, rand};
use crate::ops::conv::*;
use crate::params::ParamView;
use crate::Precision;

const F32: Precision = Precision::F32;

/// Direct conv2d: y[n,o,y,x] = b[o] + Σ W[o,i,ky,kx]·x[n,i,y·s+ky−pt, x·s+kx−pl].
fn naive_conv(x: &[f64], w: &[f64], b: Option<&[f64]>, s: Conv2dShape) -> Vec<f64> {
    let (ho, wo, k) = (s.h_out(), s.w_out(), s.k);
    let mut y = vec![0.0; s.n * s.c_out * ho * wo];
    for n in 0..s.n {
        for o in 0..s.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for i in 0..s.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * s.c_in + i) * s.h + iy as usize) * s.w + ix as usize];
                                acc += w[((o * s.c_in + i) * k + ky) * k + kx] * xv;
                            }
                        }
                    }
                    y[((n * s.c_out + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// Direct transposed conv: every x[n,i,iy,ix]·W[i,o,ky,kx] added at (iy·s+ky−p, ix·s+kx−p).
fn naive_conv_t(x: &[f64], w: &[f64], b: Option<&[f64]>, s: ConvTranspose2dShape) -> Vec<f64> {
    let (ho, wo, k) = (s.h_out(), s.w_out(), s.k);
    let mut y = vec![0.0; s.n * s.c_out * ho * wo];
    for n in 0..s.n {
        for o in 0..s.c_out {
            for p in 0..ho * wo {
                y[(n * s.c_out + o) * ho * wo + p] = b.map_or(0.0, |b| b[o]);
            }
        }
        for i in 0..s.c_in {
            for iy in 0..s.h {
                for ix in 0..s.w {
                    let xv = x[((n * s.c_in + i) * s.h + iy) * s.w + ix];
                    for o in 0..s.c_out {
                        for ky in 0..k {
                            for kx in 0..k {
                                let oy = (iy * s.stride + ky) as isize - s.pad as isize;
                                let ox = (ix * s.stride + kx) as isize - s.pad as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                y[((n * s.c_out + o) * ho + oy as usize) * wo + ox as usize] +=
                                    xv * w[((i * s.c_out + o) * k + ky) * k + kx];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

fn conv_case(s: Conv2dShape, bias: bool, seed: u64) {
    let (ho, wo) = (s.h_out(), s.w_out());
    let x = rand(s.n * s.c_in * s.h * s.w, seed);
    let w = rand(s.c_out * s.c_in * s.k * s.k, seed + 1);
    let b = rand(s.c_out, seed + 2);
    let b = bias.then_some(&b[..]);
    let r = rand(s.n * s.c_out * ho * wo, seed + 3);
    let fwd = |x: &[f64], w: &[f64], b: Option<&[f64]>| {
        let mut y = vec![0.0; s.n * s.c_out * ho * wo];
        conv2d_forward(F32, &mut y, x, w, b, s);
        y
    };
    assert_close(
        "conv2d y",
        &fwd(&x, &w, b),
        &naive_conv(&x, &w, b, s),
        1e-12,
    );
    let mut dx = vec![7.0; x.len()];
    let mut dw = vec![0.5; w.len()];
    let mut db = vec![0.25; s.c_out];
    conv2d_backward(
        F32,
        Some(&mut dx),
        &mut dw,
        bias.then_some(&mut db[..]),
        &r,
        &x,
        &w,
        s,
    );
    assert_close("conv2d dx", &dx, &fd(&x, |x| dot(&fwd(x, &w, b), &r)), 1e-7);
    // Parameter gradients accumulate onto what was there.
    let want_dw: Vec<f64> = fd(&w, |w| dot(&fwd(&x, w, b), &r))
        .iter()
        .map(|g| g + 0.5)
        .collect();
    assert_close("conv2d dw", &dw, &want_dw, 1e-7);
    if let Some(b) = b {
        let want_db: Vec<f64> = fd(b, |b| dot(&fwd(&x, &w, Some(b)), &r))
            .iter()
            .map(|g| g + 0.25)
            .collect();
        assert_close("conv2d db", &db, &want_db, 1e-7);
    } else {
        assert!(db.iter().all(|&v| v == 0.25), "db untouched without a bias");
    }
    // dx is optional and the parameter gradients do not depend on it.
    let mut dw2 = vec![0.5; w.len()];
    conv2d_backward(F32, None, &mut dw2, None, &r, &x, &w, s);
    assert_eq!(dw, dw2);
}

fn conv(n: usize, c_in: usize, h: usize, w: usize, c_out: usize, k: usize) -> Conv2dShape {
    Conv2dShape {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride: 1,
        pad: Conv2dShape::same_pad(k),
    }
}

#[test]
fn conv2d_same_padding_matches_direct_loop_and_fd() {
    conv_case(conv(2, 3, 5, 6, 4, 3), true, 10);
    // One image: the GEMMs run in parallel instead of the images.
    conv_case(conv(1, 2, 7, 4, 3, 3), false, 20);
    // Even kernel: "same" pads 0 before and 1 after.
    conv_case(conv(2, 2, 6, 5, 3, 2), true, 30);
}

#[test]
fn conv2d_k1_stride2_and_asymmetric_pads_match_fd() {
    conv_case(conv(3, 3, 4, 5, 2, 1), true, 40);
    let mut s = conv(1, 2, 7, 5, 3, 3);
    s.stride = 2;
    s.pad = [1, 0, 2, 1];
    conv_case(s, false, 50);
    let mut s = conv(3, 2, 6, 7, 2, 3);
    s.stride = 2;
    s.pad = [0, 2, 0, 0];
    conv_case(s, true, 60);
    let mut s = conv(2, 1, 5, 5, 2, 1);
    s.stride = 2;
    s.pad = [0, 0, 0, 0];
    conv_case(s, true, 70);
}

/// From 32 input channels (8 with c_out·k ≥ 24), stride 1 computes dx as a correlation with the
/// flipped weight.
#[test]
fn conv2d_wide_input_dx_through_the_flipped_weight_matches_fd() {
    conv_case(conv(1, 32, 4, 5, 2, 3), true, 80);
    // From 8 input channels when c_out·k is wide enough for the row-shift unfolding and the
    // image has at least ROWS_MIN_PIXELS (9 x 8 = 72): forward, flipped dx and the weight
    // gradient by row shifts, with images in parallel (2 images) and with one image (one
    // accumulator, parallel GEMMs).
    conv_case(conv(2, 8, 9, 8, 9, 3), true, 95);
    conv_case(conv(1, 8, 9, 8, 9, 3), false, 96);
    // The same channels on a 5 x 6 image: full unfolding, dx by GEMM and fold.
    conv_case(conv(2, 8, 5, 6, 9, 3), true, 97);
    conv_case(conv(2, 32, 3, 4, 3, 2), false, 85);
    let mut s = conv(1, 33, 4, 3, 2, 3);
    s.pad = [2, 0, 0, 1];
    conv_case(s, true, 90);
}

fn conv_t_case(s: ConvTranspose2dShape, bias: bool, seed: u64) {
    let (ho, wo) = (s.h_out(), s.w_out());
    let x = rand(s.n * s.c_in * s.h * s.w, seed);
    let w = rand(s.c_in * s.c_out * s.k * s.k, seed + 1);
    let b = rand(s.c_out, seed + 2);
    let b = bias.then_some(&b[..]);
    let r = rand(s.n * s.c_out * ho * wo, seed + 3);
    let fwd = |x: &[f64], w: &[f64], b: Option<&[f64]>| {
        let mut y = vec![9.0; s.n * s.c_out * ho * wo];
        conv_transpose2d_forward(F32, &mut y, x, w, b, s);
        y
    };
    assert_close(
        "convT y",
        &fwd(&x, &w, b),
        &naive_conv_t(&x, &w, b, s),
        1e-12,
    );
    let mut dx = vec![7.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; s.c_out];
    conv_transpose2d_backward(
        F32,
        Some(&mut dx),
        &mut dw,
        bias.then_some(&mut db[..]),
        &r,
        &x,
        &w,
        s,
    );
    assert_close("convT dx", &dx, &fd(&x, |x| dot(&fwd(x, &w, b), &r)), 1e-7);
    assert_close("convT dw", &dw, &fd(&w, |w| dot(&fwd(&x, w, b), &r)), 1e-7);
    if let Some(b) = b {
        let want = fd(b, |b| dot(&fwd(&x, &w, Some(b)), &r));
        assert_close("convT db", &db, &want, 1e-7);
    }
}

#[test]
fn conv_transpose2d_matches_direct_loop_and_fd() {
    let s = |n, c_in, h, w, c_out, k, stride, pad, output_padding| ConvTranspose2dShape {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
        output_padding,
    };
    // The UNet's upsampling: k3, stride 2, pad 1, output_padding 1 (doubles the size).
    let up = s(2, 3, 3, 4, 2, 3, 2, 1, 1);
    assert_eq!((up.h_out(), up.w_out()), (6, 8));
    conv_t_case(up, true, 100);
    conv_t_case(s(1, 2, 4, 3, 3, 3, 2, 1, 1), false, 110);
    conv_t_case(s(3, 2, 3, 3, 2, 2, 2, 0, 0), true, 120);
    conv_t_case(s(2, 2, 3, 2, 3, 3, 1, 1, 0), true, 130);
    conv_t_case(s(1, 1, 2, 3, 2, 4, 3, 1, 2), true, 140);
    conv_t_case(s(2, 2, 3, 3, 2, 1, 1, 0, 0), false, 150);
}

/// The UNet's size (several im2col blocks per image, images in parallel and not) against the
/// adjoint identities: ⟨dx, v⟩ = ⟨r, conv(v)⟩ and ⟨dW, V⟩ = ⟨r, conv_V(x)⟩ (no bias).
#[test]
fn conv2d_large_blocks_satisfy_the_adjoint_identity() {
    for (n, c_in, h, w, seed) in [
        (1, 8, 70, 66, 200),
        (3, 8, 70, 66, 210),
        (2, 32, 40, 37, 220),
        // Row-shift path with four row blocks per image (64·3 rows of 66 pixels).
        (2, 64, 70, 66, 230),
    ] {
        let s = conv(n, c_in, h, w, 5, 3);
        let (ho, wo) = (s.h_out(), s.w_out());
        let x = rand(n * c_in * h * w, seed);
        let w = rand(5 * c_in * 9, seed + 1);
        let r = rand(n * 5 * ho * wo, seed + 2);
        let (v, wv) = (rand(x.len(), seed + 3), rand(w.len(), seed + 4));
        let fwd = |x: &[f64], w: &[f64]| {
            let mut y = vec![0.0; r.len()];
            conv2d_forward(F32, &mut y, x, w, None, s);
            y
        };
        assert_close("large y", &fwd(&x, &w), &naive_conv(&x, &w, None, s), 1e-12);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        conv2d_backward(F32, Some(&mut dx), &mut dw, None, &r, &x, &w, s);
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
        assert!(rel(dot(&dx, &v), dot(&r, &fwd(&v, &w))) < 1e-10);
        assert!(rel(dot(&dw, &wv), dot(&r, &fwd(&x, &wv))) < 1e-10);
    }
}

/// Two im2col blocks per image (16·9 rows, 2700 pixels), the second starting mid-row.
#[test]
fn conv_transpose2d_large_blocks_satisfy_the_adjoint_identity() {
    let s = ConvTranspose2dShape {
        n: 2,
        c_in: 8,
        h: 60,
        w: 45,
        c_out: 16,
        k: 3,
        stride: 2,
        pad: 1,
        output_padding: 1,
    };
    let x = rand(2 * 8 * 60 * 45, 300);
    let w = rand(8 * 16 * 9, 301);
    let r = rand(2 * 16 * s.h_out() * s.w_out(), 302);
    let (v, wv) = (rand(x.len(), 303), rand(w.len(), 304));
    let fwd = |x: &[f64], w: &[f64]| {
        let mut y = vec![0.0; r.len()];
        conv_transpose2d_forward(F32, &mut y, x, w, None, s);
        y
    };
    assert_close(
        "large yT",
        &fwd(&x, &w),
        &naive_conv_t(&x, &w, None, s),
        1e-12,
    );
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    conv_transpose2d_backward(F32, Some(&mut dx), &mut dw, None, &r, &x, &w, s);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    assert!(rel(dot(&dx, &v), dot(&r, &fwd(&v, &w))) < 1e-10);
    assert!(rel(dot(&dw, &wv), dot(&r, &fwd(&x, &wv))) < 1e-10);
}

#[test]
fn conv2d_bf16_mixed_rounds_the_operands() {
    let s = conv(2, 3, 6, 5, 4, 3);
    let x = rand(2 * 3 * 30, 400);
    let w = rand(4 * 3 * 9, 401);
    let round = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .map(|&a| crate::precision::round_bf16(a as f32) as f64)
            .collect()
    };
    let mut y = vec![0.0; 2 * 4 * 30];
    conv2d_forward(Precision::Bf16Mixed, &mut y, &x, &w, None, s);
    let want = naive_conv(&round(&x), &round(&w), None, s);
    assert_close("bf16 conv", &y, &want, 1e-12);
    assert!(
        y.iter()
            .zip(naive_conv(&x, &w, None, s))
            .any(|(a, b)| (a - b).abs() > 1e-6),
        "rounding changed something"
    );
}

/// Direct max-pool over the padded plane (padding 0 or skipped), first maximum wins.
fn naive_pool(x: &[f64], s: Pool2dShape) -> Vec<f64> {
    let (ho, wo) = (s.h_out(), s.w_out());
    let mut y = vec![0.0; s.n * s.c * ho * wo];
    for p in 0..s.n * s.c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f64::NEG_INFINITY;
                for ky in 0..s.k {
                    for kx in 0..s.k {
                        let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                        let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                        let inside = iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize;
                        let v = if inside {
                            x[(p * s.h + iy as usize) * s.w + ix as usize]
                        } else if s.zero_pad {
                            0.0
                        } else {
                            continue;
                        };
                        m = m.max(v);
                    }
                }
                y[(p * ho + oy) * wo + ox] = m;
            }
        }
    }
    y
}

fn pool_case(s: Pool2dShape, seed: u64) {
    let x = rand(s.n * s.c * s.h * s.w, seed);
    let r = rand(s.n * s.c * s.h_out() * s.w_out(), seed + 1);
    let fwd = |x: &[f64]| {
        let mut y = vec![0.0; r.len()];
        maxpool2d_forward(&mut y, x, s);
        y
    };
    assert_close("pool y", &fwd(&x), &naive_pool(&x, s), 0.0);
    let mut dx = vec![3.0; x.len()];
    maxpool2d_backward(&mut dx, &r, &x, s);
    assert_close("pool dx", &dx, &fd(&x, |x| dot(&fwd(x), &r)), 1e-7);
}

#[test]
fn maxpool2d_matches_direct_loop_and_fd() {
    // sleap-nn's MaxPool2dWithSamePadding(2, 2) on odd sizes: one zero row/column after.
    let same = Pool2dShape::same(2, 3, 5, 7, 2, 2);
    assert_eq!(same.pad, [0, 1, 0, 1]);
    assert_eq!((same.h_out(), same.w_out()), (3, 4));
    pool_case(same, 500);
    assert_eq!(Pool2dShape::same(1, 1, 6, 8, 2, 2).pad, [0; 4]);
    pool_case(Pool2dShape::same(1, 2, 6, 8, 2, 2), 510);
    // PyTorch's own padding (−∞), overlapping windows.
    let s = Pool2dShape {
        n: 2,
        c: 2,
        h: 5,
        w: 6,
        k: 3,
        stride: 2,
        pad: [1, 1, 1, 1],
        zero_pad: false,
    };
    pool_case(s, 520);
    pool_case(
        Pool2dShape {
            k: 2,
            stride: 1,
            pad: [0, 1, 1, 0],
            zero_pad: true,
            ..s
        },
        530,
    );
}

#[test]
fn maxpool2d_padded_zero_wins_over_negatives_and_ties_go_first() {
    // [[-1, -2, -3]] pooled 2x2/2 with same padding: windows {-1,-2,0,0} and {-3,0,0,0}.
    let s = Pool2dShape::same(1, 1, 1, 3, 2, 2);
    let x = [-1.0f64, -2.0, -3.0];
    let mut y = [9.0; 2];
    maxpool2d_forward(&mut y, &x, s);
    assert_eq!(y, [0.0, 0.0]);
    let mut dx = [9.0; 3];
    maxpool2d_backward(&mut dx, &[1.0, 1.0], &x, s);
    assert_eq!(dx, [0.0; 3], "a padded zero passes no gradient");
    // With −∞ padding the real values win.
    let s = Pool2dShape {
        zero_pad: false,
        ..s
    };
    maxpool2d_forward(&mut y, &x, s);
    assert_eq!(y, [-1.0, -3.0]);
    // Ties: the first in row-major order takes the gradient.
    let s = Pool2dShape::same(1, 1, 2, 2, 2, 2);
    let mut dx = [0.0; 4];
    maxpool2d_backward(&mut dx, &[5.0], &[0.5, 1.0, 1.0, 1.0], s);
    assert_eq!(dx, [0.0, 5.0, 0.0, 0.0]);
}

/// The 2x2 / stride 2 windows of the UNet (a path of their own) and the general loop agree on
/// NaN (wins, the last one in scan order takes the gradient) and on ties (the first).
#[test]
fn maxpool2d_nan_and_ties_agree_between_the_2x2_path_and_the_general_loop() {
    let nan = f64::NAN;
    // Two planes 2x4: windows {1, nan, 0, 2}, {3, 3, 3, 3}; {nan, 1, nan, 0}, {-1, -1, -2, -1}.
    let x = [
        1.0, nan, 3.0, 3.0, 0.0, 2.0, 3.0, 3.0, //
        nan, 1.0, -1.0, -1.0, nan, 0.0, -2.0, -1.0,
    ];
    let plain = Pool2dShape::same(1, 2, 2, 4, 2, 2);
    assert_eq!(plain.pad, [0; 4]);
    // The same windows through the general loop: far-side padding that no window reaches.
    let general = Pool2dShape {
        pad: [0, 1, 0, 1],
        zero_pad: false,
        ..plain
    };
    assert_eq!((general.h_out(), general.w_out()), (1, 2));
    let dy = [10.0, 20.0, 30.0, 40.0];
    for s in [plain, general] {
        let mut y = [0.0; 4];
        maxpool2d_forward(&mut y, &x, s);
        assert!(y[0].is_nan() && y[2].is_nan(), "NaN wins: {y:?}");
        assert_eq!((y[1], y[3]), (3.0, -1.0));
        let mut dx = [7.0; 16];
        maxpool2d_backward(&mut dx, &dy, &x, s);
        let want = [
            0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 40.0, 0.0, 30.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(dx, want, "{s:?}");
    }
}

/// PyTorch's bilinear (align_corners=False) written directly from the formula.
fn naive_bilinear(x: &[f64], nc: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f64> {
    let tap = |d: usize, n_in: usize, n_out: usize| {
        let src = ((d as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, src - i0 as f64)
    };
    let mut y = vec![0.0; nc * ho * wo];
    for p in 0..nc {
        for oy in 0..ho {
            let (y0, y1, ly) = tap(oy, h, ho);
            for ox in 0..wo {
                let (x0, x1, lx) = tap(ox, w, wo);
                let at = |yy: usize, xx: usize| x[(p * h + yy) * w + xx];
                y[(p * ho + oy) * wo + ox] = (1.0 - ly)
                    * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
                    + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1));
            }
        }
    }
    y
}

#[test]
fn upsample_bilinear2d_matches_formula_and_fd() {
    for (nc, h, w, ho, wo, seed) in [
        (2, 3, 4, 6, 8, 600),
        (1, 5, 5, 9, 11, 610),
        (3, 4, 6, 3, 5, 620),
        (1, 1, 3, 2, 6, 630),
    ] {
        let x = rand(nc * h * w, seed);
        let r = rand(nc * ho * wo, seed + 1);
        let fwd = |x: &[f64]| {
            let mut y = vec![0.0; r.len()];
            upsample_bilinear2d_forward(&mut y, x, nc, h, w, ho, wo);
            y
        };
        assert_close(
            "bilinear y",
            &fwd(&x),
            &naive_bilinear(&x, nc, h, w, ho, wo),
            1e-12,
        );
        let mut dx = vec![1.0; x.len()];
        upsample_bilinear2d_backward(&mut dx, &r, nc, h, w, ho, wo);
        assert_close("bilinear dx", &dx, &fd(&x, |x| dot(&fwd(x), &r)), 1e-7);
    }
}

#[test]
fn concat_and_split_channels_are_adjoint() {
    let (n, ca, cb, hw) = (3, 2, 1, 4);
    let a = rand(n * ca * hw, 700);
    let b = rand(n * cb * hw, 701);
    let mut out = vec![0.0; n * (ca + cb) * hw];
    concat_channels(&mut out, &a, ca, &b, cb, n, hw);
    for i in 0..n {
        let img = &out[i * (ca + cb) * hw..(i + 1) * (ca + cb) * hw];
        assert_eq!(&img[..ca * hw], &a[i * ca * hw..(i + 1) * ca * hw]);
        assert_eq!(&img[ca * hw..], &b[i * cb * hw..(i + 1) * cb * hw]);
    }
    let (mut da, mut db) = (vec![1.0; a.len()], vec![1.0; b.len()]);
    split_channels(&mut da, false, &mut db, true, &out, ca, cb, n, hw);
    assert_eq!(da, a);
    let want: Vec<f64> = b.iter().map(|v| v + 1.0).collect();
    assert_eq!(db, want);
}

/// The CPU backend forwards to the slice ops with the parameter views (weight and bias taken
/// from and accumulated into the right places of the flat buffers).
#[test]
fn cpu_backend_conv_uses_the_parameter_views() {
    let dev = Cpu;
    let s = conv(2, 3, 5, 4, 2, 3);
    let x: Vec<f32> = rand(2 * 3 * 20, 800).iter().map(|&v| v as f32).collect();
    let wv = ParamView {
        offset: 5,
        len: 2 * 3 * 9,
    };
    let bv = ParamView { offset: 1, len: 2 };
    let params: Vec<f32> = rand(5 + 54, 801).iter().map(|&v| v as f32).collect();
    let mut y = Device::<f32>::zeros(&dev, 2 * 2 * 20);
    dev.conv2d_forward(F32, &mut y, &x, &params, wv, Some(bv), s);
    let mut want = vec![0.0f32; y.len()];
    conv2d_forward(F32, &mut want, &x, &params[5..], Some(&params[1..3]), s);
    assert_eq!(y, want);
    let dy: Vec<f32> = rand(y.len(), 802).iter().map(|&v| v as f32).collect();
    let mut grads = vec![0.0f32; params.len()];
    let mut dx = vec![0.0f32; x.len()];
    dev.conv2d_backward(
        F32,
        Some(&mut dx),
        &mut grads,
        &dy,
        &x,
        &params,
        wv,
        Some(bv),
        s,
    );
    let (mut dw, mut db, mut dx2) = (vec![0.0f32; 54], vec![0.0f32; 2], vec![0.0f32; x.len()]);
    conv2d_backward(
        F32,
        Some(&mut dx2),
        &mut dw,
        Some(&mut db),
        &dy,
        &x,
        &params[5..],
        s,
    );
    assert_eq!((&grads[1..3], &grads[5..], &dx), (&db[..], &dw[..], &dx2));
    assert_eq!((grads[0], grads[3], grads[4]), (0.0, 0.0, 0.0));
}

/// bf16-mixed in f32 at a width where the bf16 GEMM kernel runs (every GEMM dimension ≥ 32,
/// where the CPU has one): the same as f64 arithmetic on bf16-rounded operands, up to f32
/// accumulation; forward, dx (both the flipped-weight and the scatter paths) and dW.
#[test]
fn conv2d_bf16_mixed_in_f32_matches_rounded_f64() {
    let bf = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .map(|&a| crate::precision::round_bf16(a as f32) as f64)
            .collect()
    };
    let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|&a| a as f32).collect() };
    let widen = |v: &[f32]| -> Vec<f64> { v.iter().map(|&a| a as f64).collect() };
    for (c_in, seed) in [(32, 900), (8, 910)] {
        let s = conv(2, c_in, 9, 11, 32, 3);
        let x = bf(&rand(2 * c_in * 99, seed));
        let w = bf(&rand(32 * c_in * 9, seed + 1));
        let r = bf(&rand(2 * 32 * 99, seed + 2));
        let mut y = vec![0f32; r.len()];
        let bf16 = Precision::Bf16Mixed;
        conv2d_forward(bf16, &mut y, &f32s(&x), &f32s(&w), None, s);
        assert_close("bf16 y", &widen(&y), &naive_conv(&x, &w, None, s), 1e-5);
        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
        let (xf, wf, rf) = (f32s(&x), f32s(&w), f32s(&r));
        conv2d_backward(bf16, Some(&mut dx), &mut dw, None, &rf, &xf, &wf, s);
        let (mut dx64, mut dw64) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        conv2d_backward(F32, Some(&mut dx64), &mut dw64, None, &r, &x, &w, s);
        assert_close("bf16 dx", &widen(&dx), &dx64, 1e-5);
        assert_close("bf16 dw", &widen(&dw), &dw64, 1e-5);
    }
}

#[test]
#[should_panic(expected = "conv2d_forward: weight has 53 values, the shape needs 54")]
fn conv2d_names_a_short_buffer() {
    let s = conv(1, 3, 4, 4, 2, 3);
    let mut y = vec![0.0; 2 * 16];
    conv2d_forward(F32, &mut y, &[0.0; 48], &[0.0; 53], None, s);
}
