//! The CUDA image kernels (`kernels/cuda/conv.cu`) executed on the host, against the CPU ops.
//!
//! Every kernel in conv.cu is a grid-stride loop with one thread per output element and no
//! shared memory, so with one thread (`gtid() = 0`, `gstride() = 1`) it is plain C++: this test
//! compiles the file with the system C++ compiler behind a small prelude that stands in for the
//! CUDA built-ins, loads it, and checks each kernel's index arithmetic where no GPU exists. The
//! convolutions are composed as `backend/cuda/conv.rs` composes them (unfold, GEMM, fold), with
//! a plain host GEMM standing in for cuBLASLt. The GPU suite (`gpu_ops`) checks the same ops on
//! a device.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use kernels::backend::{Conv2dShape, ConvTranspose2dShape, Pool2dShape};
use kernels::ops::conv as cpu;
use kernels::Precision;
use libloading::{Library, Symbol};

const PRELUDE: &str = r#"
#include <cmath>
#include <cstddef>
typedef unsigned int u32;
typedef unsigned long long u64;
#define __global__
#define __device__
#define __forceinline__ inline
#define NEG_INF (-INFINITY)
static inline size_t gtid() { return 0; }
static inline size_t gstride() { return 1; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
"#;

/// conv.cu compiled for the host and loaded, once per test binary.
fn kernels() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(build)
}

fn build() -> Library {
    let dir = std::env::temp_dir().join(format!("anvil-conv-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("conv_host.cpp");
    let source = format!(
        "{PRELUDE}\n#line 1 \"conv.cu\"\n{}",
        include_str!("../cuda/conv.cu")
    );
    std::fs::write(&src, source).expect("write source");
    let lib: PathBuf = dir.join("libconv_host.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",
            "-shared",
            "-fPIC",
            "-o",
        ])
        .arg(&lib)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("the C++ compiler `{cxx}` could not be run ({e}); it comes with build-essential")
        });
    assert!(
        out.status.success(),
        "conv.cu does not compile as host C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: a library we just built, with no initializers of its own.
    let l = unsafe { Library::new(&lib) }.expect("load the host build of conv.cu");
    let _ = std::fs::remove_dir_all(&dir);
    l
}

fn rand(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = kernels::rng::lowbias32(i as u32 ^ seed.wrapping_mul(0x9E37_79B9));
            (h as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[track_caller]
fn close(what: &str, want: &[f32], got: &[f32], tol: f32) {
    assert_eq!(want.len(), got.len(), "{what}: lengths");
    let mag = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        assert!(
            (a - b).abs() <= tol * mag,
            "{what}[{i}]: CPU op {a}, CUDA kernel {b} (tolerance {tol} x {mag})"
        );
    }
}

/// c[m, n] (+)= op(a) · op(b), row-major, as the backend's cuBLASLt call is specified.
#[allow(clippy::too_many_arguments)]
fn gemm(
    c: &mut [f32],
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    acc: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let v = if acc { c[i * n + j] as f64 + s } else { s };
            c[i * n + j] = v as f32;
        }
    }
}

/// The geometry arguments (c, h, w, ho, wo, k, s, pt, pl) the kernels take.
type Geom = [u32; 9];

fn conv_geom(s: &Conv2dShape) -> Geom {
    [
        s.c_in,
        s.h,
        s.w,
        s.h_out(),
        s.w_out(),
        s.k,
        s.stride,
        s.pad[0],
        s.pad[2],
    ]
    .map(|v| v as u32)
}

fn transpose_geom(s: &ConvTranspose2dShape) -> Geom {
    [
        s.c_out,
        s.h_out(),
        s.w_out(),
        s.h,
        s.w,
        s.k,
        s.stride,
        s.pad,
        s.pad,
    ]
    .map(|v| v as u32)
}

type Im2col =
    unsafe extern "C" fn(*mut f32, *const f32, u32, u32, u32, u32, u32, u32, u32, u32, u32);
type Col2im = unsafe extern "C" fn(
    *mut f32,
    *const f32,
    *const f32,
    i32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
);

struct Conv<'l> {
    im2col: Symbol<'l, Im2col>,
    col2im: Symbol<'l, Col2im>,
    fill: Symbol<'l, unsafe extern "C" fn(*mut f32, *const f32, u64, u64, u64)>,
}

impl<'l> Conv<'l> {
    fn new(l: &'l Library) -> Self {
        // SAFETY: the symbols' types are the kernels' signatures in conv.cu.
        unsafe {
            Conv {
                im2col: l.get(b"conv_im2col").expect("conv_im2col"),
                col2im: l.get(b"conv_col2im").expect("conv_col2im"),
                fill: l.get(b"bias_fill_planes").expect("bias_fill_planes"),
            }
        }
    }
    fn rows_px(g: &Geom) -> (usize, usize) {
        ((g[0] * g[5] * g[5]) as usize, (g[3] * g[4]) as usize)
    }
    fn im2col(&self, img: &[f32], g: &Geom) -> Vec<f32> {
        let (rows, px) = Self::rows_px(g);
        let mut col = vec![f32::NAN; rows * px];
        // SAFETY: col holds rows·px values, img c·h·w.
        unsafe {
            (self.im2col)(
                col.as_mut_ptr(),
                img.as_ptr(),
                g[0],
                g[1],
                g[2],
                g[3],
                g[4],
                g[5],
                g[6],
                g[7],
                g[8],
            )
        };
        col
    }
    fn col2im(&self, img: &mut [f32], col: &[f32], bias: Option<&[f32]>, g: &Geom) {
        let b = bias.map_or(std::ptr::null(), |b| b.as_ptr());
        // SAFETY: as above; bias holds c values when given.
        unsafe {
            (self.col2im)(
                img.as_mut_ptr(),
                col.as_ptr(),
                b,
                bias.is_some() as i32,
                g[0],
                g[1],
                g[2],
                g[3],
                g[4],
                g[5],
                g[6],
                g[7],
                g[8],
            )
        };
    }
    /// backend/cuda/conv.rs's unfold_gemm.
    #[allow(clippy::too_many_arguments)]
    fn unfold_gemm(
        &self,
        out: &mut [f32],
        src: &[f32],
        wm: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        n: usize,
        g: &Geom,
    ) {
        let (rows, px) = Self::rows_px(g);
        let img = (g[0] * g[1] * g[2]) as usize;
        if let Some(b) = bias {
            // SAFETY: out holds n·m·px values, b m.
            unsafe { (self.fill)(out.as_mut_ptr(), b.as_ptr(), n as u64, m as u64, px as u64) };
        }
        for i in 0..n {
            let col = self.im2col(&src[i * img..(i + 1) * img], g);
            gemm(
                &mut out[i * m * px..(i + 1) * m * px],
                wm,
                false,
                &col,
                false,
                m,
                px,
                rows,
                bias.is_some(),
            );
        }
    }
    /// backend/cuda/conv.rs's gemm_fold.
    #[allow(clippy::too_many_arguments)]
    fn gemm_fold(
        &self,
        dst: &mut [f32],
        a: &[f32],
        wm: &[f32],
        m: usize,
        n: usize,
        g: &Geom,
        bias: Option<&[f32]>,
    ) {
        let (rows, px) = Self::rows_px(g);
        let img = (g[0] * g[1] * g[2]) as usize;
        let mut col = vec![f32::NAN; rows * px];
        for i in 0..n {
            gemm(
                &mut col,
                wm,
                true,
                &a[i * m * px..(i + 1) * m * px],
                false,
                rows,
                px,
                m,
                false,
            );
            self.col2im(&mut dst[i * img..(i + 1) * img], &col, bias, g);
        }
    }
    /// backend/cuda/conv.rs's weight_grad.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad(&self, dwm: &mut [f32], a: &[f32], src: &[f32], m: usize, n: usize, g: &Geom) {
        let (rows, px) = Self::rows_px(g);
        let img = (g[0] * g[1] * g[2]) as usize;
        for i in 0..n {
            let col = self.im2col(&src[i * img..(i + 1) * img], g);
            gemm(
                dwm,
                &a[i * m * px..(i + 1) * m * px],
                false,
                &col,
                true,
                m,
                rows,
                px,
                true,
            );
        }
    }
}

fn conv_shapes() -> Vec<Conv2dShape> {
    let c = |n, c_in, h, w, c_out, k, stride, pad| Conv2dShape {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
    };
    vec![
        c(2, 5, 9, 7, 6, 3, 1, Conv2dShape::same_pad(3)),
        c(3, 8, 6, 5, 4, 1, 1, [0; 4]),
        c(2, 1, 8, 8, 4, 3, 1, Conv2dShape::same_pad(3)),
        c(2, 4, 10, 9, 3, 3, 2, [1, 0, 1, 0]),
        c(1, 3, 7, 6, 2, 4, 1, Conv2dShape::same_pad(4)),
        c(2, 2, 11, 8, 3, 5, 3, [2, 2, 1, 0]),
    ]
}

#[test]
fn conv2d_composed_from_the_cuda_kernels_matches_the_cpu_op() {
    let lib = kernels();
    let k = Conv::new(lib);
    for s in conv_shapes() {
        let g = conv_geom(&s);
        let wl = s.c_out * s.c_in * s.k * s.k;
        let (x, w, b) = (
            rand(s.n * s.c_in * s.h * s.w, 1, 1.0),
            rand(wl, 2, 0.5),
            rand(s.c_out, 3, 0.5),
        );
        let ylen = s.n * s.c_out * s.h_out() * s.w_out();
        let mut want = vec![0.0; ylen];
        cpu::conv2d_forward(Precision::F32, &mut want, &x, &w, Some(&b), s);
        let mut got = vec![f32::NAN; ylen];
        k.unfold_gemm(&mut got, &x, &w, Some(&b), s.c_out, s.n, &g);
        close(&format!("{s:?} y"), &want, &got, 1e-5);

        let dy = rand(ylen, 4, 1.0);
        let (mut dx, mut dw, mut db) =
            (vec![0.0; x.len()], rand(wl, 5, 0.1), rand(s.c_out, 6, 0.1));
        let (mut gdx, mut gdw) = (vec![f32::NAN; x.len()], dw.clone());
        cpu::conv2d_backward(
            Precision::F32,
            Some(&mut dx),
            &mut dw,
            Some(&mut db),
            &dy,
            &x,
            &w,
            s,
        );
        k.gemm_fold(&mut gdx, &dy, &w, s.c_out, s.n, &g, None);
        k.weight_grad(&mut gdw, &dy, &x, s.c_out, s.n, &g);
        close(&format!("{s:?} dx"), &dx, &gdx, 1e-5);
        close(&format!("{s:?} dw"), &dw, &gdw, 1e-5);
    }
}

#[test]
fn conv_transpose2d_composed_from_the_cuda_kernels_matches_the_cpu_op() {
    let lib = kernels();
    let k = Conv::new(lib);
    let t = |n, c_in, h, w, c_out, k, stride, pad, output_padding| ConvTranspose2dShape {
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
    for s in [
        t(2, 5, 4, 3, 3, 3, 2, 1, 1),
        t(2, 3, 5, 4, 4, 2, 2, 0, 0),
        t(1, 2, 3, 3, 2, 4, 3, 1, 2),
    ] {
        let g = transpose_geom(&s);
        let wl = s.c_in * s.c_out * s.k * s.k;
        let (x, w, b) = (
            rand(s.n * s.c_in * s.h * s.w, 7, 1.0),
            rand(wl, 8, 0.5),
            rand(s.c_out, 9, 0.5),
        );
        let ylen = s.n * s.c_out * s.h_out() * s.w_out();
        let mut want = vec![0.0; ylen];
        cpu::conv_transpose2d_forward(Precision::F32, &mut want, &x, &w, Some(&b), s);
        let mut got = vec![f32::NAN; ylen];
        k.gemm_fold(&mut got, &x, &w, s.c_in, s.n, &g, Some(&b));
        close(&format!("{s:?} y"), &want, &got, 1e-5);

        let dy = rand(ylen, 10, 1.0);
        let (mut dx, mut dw, mut db) = (
            vec![0.0; x.len()],
            rand(wl, 11, 0.1),
            rand(s.c_out, 12, 0.1),
        );
        let (mut gdx, mut gdw) = (vec![f32::NAN; x.len()], dw.clone());
        cpu::conv_transpose2d_backward(
            Precision::F32,
            Some(&mut dx),
            &mut dw,
            Some(&mut db),
            &dy,
            &x,
            &w,
            s,
        );
        k.unfold_gemm(&mut gdx, &dy, &w, None, s.c_in, s.n, &g);
        k.weight_grad(&mut gdw, &x, &dy, s.c_in, s.n, &g);
        close(&format!("{s:?} dx"), &dx, &gdx, 1e-5);
        close(&format!("{s:?} dw"), &dw, &gdw, 1e-5);
    }
}

type PoolFwd =
    unsafe extern "C" fn(*mut f32, *const f32, u64, u32, u32, u32, u32, u32, u32, u32, u32, i32);
type PoolBwd = unsafe extern "C" fn(
    *mut f32,
    *const f32,
    *const f32,
    u64,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    i32,
);

#[test]
fn maxpool_kernels_match_the_cpu_op_including_ties_and_padding() {
    let lib = kernels();
    // SAFETY: the kernels' signatures.
    let (fwd, bwd): (Symbol<PoolFwd>, Symbol<PoolBwd>) = unsafe {
        (
            lib.get(b"maxpool_forward").unwrap(),
            lib.get(b"maxpool_backward").unwrap(),
        )
    };
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
    for (s, ties) in [
        (Pool2dShape::same(2, 3, 7, 6, 2, 2), false),
        (Pool2dShape::same(2, 3, 8, 6, 2, 2), true),
        (overlapping, false),
        (
            Pool2dShape {
                zero_pad: true,
                ..overlapping
            },
            true,
        ),
        (
            Pool2dShape {
                n: 1,
                c: 2,
                h: 9,
                w: 7,
                k: 3,
                stride: 2,
                pad: [0, 1, 1, 0],
                zero_pad: true,
            },
            false,
        ),
    ] {
        let mut x = rand(s.n * s.c * s.h * s.w, 13, 1.0);
        if ties {
            x.iter_mut().for_each(|v| *v = (*v * 2.0).round());
        }
        let ylen = s.n * s.c * s.h_out() * s.w_out();
        let args = [
            s.h,
            s.w,
            s.h_out(),
            s.w_out(),
            s.k,
            s.stride,
            s.pad[0],
            s.pad[2],
        ]
        .map(|v| v as u32);
        let planes = (s.n * s.c) as u64;
        let mut want = vec![0.0; ylen];
        cpu::maxpool2d_forward(&mut want, &x, s);
        let mut got = vec![f32::NAN; ylen];
        // SAFETY: buffers sized by the shape.
        unsafe {
            fwd(
                got.as_mut_ptr(),
                x.as_ptr(),
                planes,
                args[0],
                args[1],
                args[2],
                args[3],
                args[4],
                args[5],
                args[6],
                args[7],
                s.zero_pad as i32,
            )
        };
        close(&format!("{s:?} y"), &want, &got, 0.0);
        let dy = rand(ylen, 14, 1.0);
        let mut dx = vec![0.0; x.len()];
        cpu::maxpool2d_backward(&mut dx, &dy, &x, s);
        let mut gdx = vec![f32::NAN; x.len()];
        // SAFETY: as above.
        unsafe {
            bwd(
                gdx.as_mut_ptr(),
                dy.as_ptr(),
                x.as_ptr(),
                planes,
                args[0],
                args[1],
                args[2],
                args[3],
                args[4],
                args[5],
                args[6],
                args[7],
                s.zero_pad as i32,
            )
        };
        close(&format!("{s:?} dx"), &dx, &gdx, 1e-6);
    }
}

type Resize = unsafe extern "C" fn(*mut f32, *const f32, u64, u32, u32, u32, u32);

#[test]
fn bilinear_kernels_match_the_cpu_op_up_and_down() {
    let lib = kernels();
    // SAFETY: the kernels' signatures.
    let (fwd, bwd): (Symbol<Resize>, Symbol<Resize>) = unsafe {
        (
            lib.get(b"upsample_bilinear_forward").unwrap(),
            lib.get(b"upsample_bilinear_backward").unwrap(),
        )
    };
    for (nc, h, w, ho, wo) in [
        (6, 5, 4, 10, 8),
        (3, 5, 7, 8, 3),
        (2, 1, 6, 3, 12),
        (2, 16, 9, 32, 18),
        (1, 7, 5, 20, 13),
    ] {
        let x = rand(nc * h * w, 15, 1.0);
        let mut want = vec![0.0; nc * ho * wo];
        cpu::upsample_bilinear2d_forward(&mut want, &x, nc, h, w, ho, wo);
        let mut got = vec![f32::NAN; want.len()];
        let d = [h, w, ho, wo].map(|v| v as u32);
        // SAFETY: buffers sized by the shape.
        unsafe {
            fwd(
                got.as_mut_ptr(),
                x.as_ptr(),
                nc as u64,
                d[0],
                d[1],
                d[2],
                d[3],
            )
        };
        close(&format!("{nc}x{h}x{w} -> {ho}x{wo} y"), &want, &got, 1e-6);
        let dy = rand(want.len(), 16, 1.0);
        let mut dx = vec![0.0; x.len()];
        cpu::upsample_bilinear2d_backward(&mut dx, &dy, nc, h, w, ho, wo);
        let mut gdx = vec![f32::NAN; x.len()];
        // SAFETY: as above (dx is the first argument, dy the second).
        unsafe {
            bwd(
                gdx.as_mut_ptr(),
                dy.as_ptr(),
                nc as u64,
                d[0],
                d[1],
                d[2],
                d[3],
            )
        };
        close(&format!("{nc}x{h}x{w} -> {ho}x{wo} dx"), &dx, &gdx, 1e-5);
    }
}

#[test]
fn concat_and_split_kernels_match_the_cpu_op() {
    let lib = kernels();
    type Cat = unsafe extern "C" fn(*mut f32, *const f32, u64, *const f32, u64, u64);
    type Split = unsafe extern "C" fn(*mut f32, i32, *mut f32, i32, *const f32, u64, u64, u64);
    // SAFETY: the kernels' signatures.
    let (cat, split): (Symbol<Cat>, Symbol<Split>) = unsafe {
        (
            lib.get(b"concat_channels").unwrap(),
            lib.get(b"split_channels").unwrap(),
        )
    };
    let (ca, cb, n, hw) = (3, 2, 2, 12);
    let (a, b) = (rand(n * ca * hw, 17, 1.0), rand(n * cb * hw, 18, 1.0));
    let mut want = vec![0.0; n * (ca + cb) * hw];
    cpu::concat_channels(&mut want, &a, ca, &b, cb, n, hw);
    let mut got = vec![f32::NAN; want.len()];
    // SAFETY: buffers sized by the shape.
    unsafe {
        cat(
            got.as_mut_ptr(),
            a.as_ptr(),
            (ca * hw) as u64,
            b.as_ptr(),
            (cb * hw) as u64,
            n as u64,
        )
    };
    close("concat", &want, &got, 0.0);
    for (acc_a, acc_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let (mut da, mut db) = (rand(a.len(), 19, 1.0), rand(b.len(), 20, 1.0));
        let (mut ga, mut gb) = (da.clone(), db.clone());
        cpu::split_channels(&mut da, acc_a, &mut db, acc_b, &want, ca, cb, n, hw);
        // SAFETY: as above.
        unsafe {
            split(
                ga.as_mut_ptr(),
                acc_a as i32,
                gb.as_mut_ptr(),
                acc_b as i32,
                want.as_ptr(),
                (ca * hw) as u64,
                (cb * hw) as u64,
                n as u64,
            )
        };
        close(&format!("split a ({acc_a}, {acc_b})"), &da, &ga, 0.0);
        close(&format!("split b ({acc_a}, {acc_b})"), &db, &gb, 0.0);
    }
}
