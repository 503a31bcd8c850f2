//! [`ConvDevice`] for the CUDA backend: the UNet's image ops on the device.
//!
//! Convolutions compose the same three primitives as the CPU op ([`crate::ops::conv`]), over
//! the same [`Geom`]: per image, an unfold (`conv_im2col`) and a cuBLASLt GEMM, a GEMM and its
//! adjoint gather (`conv_col2im`), or an unfold and a GEMM accumulating into the weight
//! gradient. 16-bit precisions round both GEMM operands exactly where the CPU op rounds them
//! (the unfolded columns and the weight, or the weight and the incoming gradient), with fp32
//! accumulation. Bias gradients are an fp32 GEMM against a vector of ones. The other ops are
//! gather kernels in `kernels/cuda/conv.cu` (one thread per output element, no atomics).

use cudarc::driver::CudaSlice;

use super::{Arg, Cuda, CudaMem};
use crate::backend::conv::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
use crate::ops::conv::{conv_geom, transpose_geom, Geom};
use crate::params::ParamView;
use crate::Precision;

/// Panics naming the op and buffer when a buffer is shorter than its shape needs (a caller
/// bug, as on the CPU).
#[track_caller]
fn need(op: &str, what: &str, len: usize, want: usize) {
    assert!(
        len >= want,
        "{op}: {what} has {len} values, the shape needs {want}"
    );
}

impl Cuda {
    /// An uninitialized f32 scratch buffer, freed in stream order when dropped.
    fn scratch_f32(&self, len: usize) -> CudaSlice<f32> {
        // SAFETY: every user writes the whole buffer before reading it.
        super::ok("alloc", unsafe { self.stream.alloc::<f32>(len.max(1)) })
    }

    fn addr(&self, s: &CudaSlice<f32>) -> u64 {
        cudarc::driver::DevicePtr::device_ptr(s, &self.stream).0
    }

    fn geom_args(g: &Geom) -> [Arg; 9] {
        [g.c, g.h, g.w, g.ho, g.wo, g.k, g.s, g.pt, g.pl].map(|v| Arg::U32(v as u32))
    }

    /// col[rows, pixels] = im2col(img) for one image at `img`.
    fn im2col(&self, col: u64, img: u64, g: &Geom) {
        let mut args = vec![Arg::Ptr(col), Arg::Ptr(img)];
        args.extend(Self::geom_args(g));
        self.launch_1d("conv_im2col", g.rows() * g.pixels(), &args);
    }

    /// img = (bias +) col2im(col) for one image at `img` (overwritten).
    fn col2im(&self, img: u64, col: u64, bias: Option<u64>, g: &Geom) {
        let mut args = vec![
            Arg::Ptr(img),
            Arg::Ptr(col),
            Arg::Ptr(bias.unwrap_or(0)),
            Arg::I32(bias.is_some() as i32),
        ];
        args.extend(Self::geom_args(g));
        self.launch_1d("conv_col2im", g.c * g.h * g.w, &args);
    }

    /// out[n, m, pixels] = (b[m] +) wm[m, rows] · im2col(src[n]).
    #[allow(clippy::too_many_arguments)]
    fn unfold_gemm(
        &self,
        prec: Precision,
        out: u64,
        src: u64,
        wm: u64,
        bias: Option<u64>,
        m: usize,
        n: usize,
        g: Geom,
    ) {
        let (rows, px) = (g.rows(), g.pixels());
        if let Some(b) = bias {
            self.launch_1d(
                "bias_fill_planes",
                n * m * px,
                &[
                    Arg::Ptr(out),
                    Arg::Ptr(b),
                    Arg::U64(n as u64),
                    Arg::U64(m as u64),
                    Arg::U64(px as u64),
                ],
            );
        }
        let col = self.scratch_f32(rows * px);
        let cp = self.addr(&col);
        for i in 0..n {
            self.im2col(cp, src + 4 * (i * g.c * g.h * g.w) as u64, &g);
            let o = out + 4 * (i * m * px) as u64;
            self.gemm(prec, o, wm, false, cp, false, m, px, rows, bias.is_some());
        }
    }

    /// dst[n] = (b +) col2im(wmᵀ · a[n]) with wm `[m, rows]`, a[n] `[m, pixels]`; overwritten.
    #[allow(clippy::too_many_arguments)]
    fn gemm_fold(
        &self,
        prec: Precision,
        dst: u64,
        a: u64,
        wm: u64,
        m: usize,
        n: usize,
        g: Geom,
        bias: Option<u64>,
    ) {
        let (rows, px) = (g.rows(), g.pixels());
        let col = self.scratch_f32(rows * px);
        let cp = self.addr(&col);
        for i in 0..n {
            let ai = a + 4 * (i * m * px) as u64;
            self.gemm(prec, cp, wm, true, ai, false, rows, px, m, false);
            self.col2im(dst + 4 * (i * g.c * g.h * g.w) as u64, cp, bias, &g);
        }
    }

    /// dwm[m, rows] += Σ_n a[n] · im2col(src[n])ᵀ.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad(
        &self,
        prec: Precision,
        dwm: u64,
        a: u64,
        src: u64,
        m: usize,
        n: usize,
        g: Geom,
    ) {
        let (rows, px) = (g.rows(), g.pixels());
        let col = self.scratch_f32(rows * px);
        let cp = self.addr(&col);
        for i in 0..n {
            self.im2col(cp, src + 4 * (i * g.c * g.h * g.w) as u64, &g);
            let ai = a + 4 * (i * m * px) as u64;
            self.gemm(prec, dwm, ai, false, cp, true, m, rows, px, true);
        }
    }

    /// db[c] += Σ_{n,p} dy[n, c, p], as fp32 GEMMs against ones (the CPU sums in fp32 too).
    fn bias_grad(&self, db: u64, dy: u64, n: usize, c: usize, px: usize) {
        let ones = self.scratch_f32(px);
        let op = self.addr(&ones);
        self.launch_1d(
            "fill",
            px,
            &[Arg::Ptr(op), Arg::U64(px as u64), Arg::F32(1.0)],
        );
        for i in 0..n {
            let di = dy + 4 * (i * c * px) as u64;
            self.gemm(Precision::F32, db, di, false, op, false, c, 1, px, true);
        }
    }

    /// Device addresses of the weight, bias and their gradients within the flat buffers.
    fn param_addrs(&self, mem: &CudaMem, w: ParamView, b: Option<ParamView>) -> (u64, Option<u64>) {
        let base = self.ptr(mem);
        (
            base + 4 * w.offset as u64,
            b.map(|b| base + 4 * b.offset as u64),
        )
    }

    /// A bilinear kernel: `written` (the output when `forward`, else dx) from `read`, sizes
    /// [nc, h, w, h_out, w_out]; one thread per element of `written`.
    fn resize(
        &self,
        op: &str,
        kernel: &str,
        written: &CudaMem,
        read: &CudaMem,
        [nc, h, w, h_out, w_out]: [usize; 5],
        forward: bool,
    ) {
        // Forward writes the resized planes; backward the gradient of the originals.
        let (original, resized) = (nc * h * w, nc * h_out * w_out);
        let (wlen, rlen) = if forward {
            (resized, original)
        } else {
            (original, resized)
        };
        need(op, "output", written.len, wlen);
        need(op, "input", read.len, rlen);
        let mut args = vec![
            Arg::Ptr(self.ptr(written)),
            Arg::Ptr(self.ptr(read)),
            Arg::U64(nc as u64),
        ];
        args.extend([h, w, h_out, w_out].map(|v| Arg::U32(v as u32)));
        self.launch_1d(kernel, wlen, &args);
    }

    fn pool_args(&self, s: &Pool2dShape) -> [Arg; 9] {
        [
            Arg::U64((s.n * s.c) as u64),
            Arg::U32(s.h as u32),
            Arg::U32(s.w as u32),
            Arg::U32(s.h_out() as u32),
            Arg::U32(s.w_out() as u32),
            Arg::U32(s.k as u32),
            Arg::U32(s.stride as u32),
            Arg::U32(s.pad[0] as u32),
            Arg::U32(s.pad[2] as u32),
        ]
    }
}

impl ConvDevice<f32> for Cuda {
    fn conv2d_forward(
        &self,
        prec: Precision,
        y: &mut CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        w: ParamView,
        b: Option<ParamView>,
        s: Conv2dShape,
    ) {
        let op = "conv2d_forward";
        need(op, "x", x.len, s.n * s.c_in * s.h * s.w);
        need(op, "y", y.len, s.n * s.c_out * s.h_out() * s.w_out());
        need(op, "weight", w.len, s.c_out * s.c_in * s.k * s.k);
        let (wp, bp) = self.param_addrs(params, w, b);
        let g = conv_geom(&s);
        self.unfold_gemm(prec, self.ptr(y), self.ptr(x), wp, bp, s.c_out, s.n, g);
    }

    fn conv2d_backward(
        &self,
        prec: Precision,
        dx: Option<&mut CudaMem>,
        grads: &mut CudaMem,
        dy: &CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        w: ParamView,
        b: Option<ParamView>,
        s: Conv2dShape,
    ) {
        let op = "conv2d_backward";
        let xl = s.n * s.c_in * s.h * s.w;
        need(op, "x", x.len, xl);
        need(op, "dx", dx.as_ref().map_or(xl, |d| d.len), xl);
        need(op, "dy", dy.len, s.n * s.c_out * s.h_out() * s.w_out());
        need(op, "weight", w.len, s.c_out * s.c_in * s.k * s.k);
        let g = conv_geom(&s);
        let (wp, _) = self.param_addrs(params, w, None);
        if let Some(dx) = dx {
            self.gemm_fold(prec, self.ptr(dx), self.ptr(dy), wp, s.c_out, s.n, g, None);
        }
        let (dwp, dbp) = self.param_addrs(grads, w, b);
        self.weight_grad(prec, dwp, self.ptr(dy), self.ptr(x), s.c_out, s.n, g);
        if let Some(db) = dbp {
            self.bias_grad(db, self.ptr(dy), s.n, s.c_out, g.pixels());
        }
    }

    fn conv_transpose2d_forward(
        &self,
        prec: Precision,
        y: &mut CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        w: ParamView,
        b: Option<ParamView>,
        s: ConvTranspose2dShape,
    ) {
        let op = "conv_transpose2d_forward";
        need(op, "x", x.len, s.n * s.c_in * s.h * s.w);
        need(op, "y", y.len, s.n * s.c_out * s.h_out() * s.w_out());
        need(op, "weight", w.len, s.c_in * s.c_out * s.k * s.k);
        let (wp, bp) = self.param_addrs(params, w, b);
        let g = transpose_geom(&s);
        self.gemm_fold(prec, self.ptr(y), self.ptr(x), wp, s.c_in, s.n, g, bp);
    }

    fn conv_transpose2d_backward(
        &self,
        prec: Precision,
        dx: Option<&mut CudaMem>,
        grads: &mut CudaMem,
        dy: &CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        w: ParamView,
        b: Option<ParamView>,
        s: ConvTranspose2dShape,
    ) {
        let op = "conv_transpose2d_backward";
        let xl = s.n * s.c_in * s.h * s.w;
        need(op, "x", x.len, xl);
        need(op, "dx", dx.as_ref().map_or(xl, |d| d.len), xl);
        need(op, "dy", dy.len, s.n * s.c_out * s.h_out() * s.w_out());
        need(op, "weight", w.len, s.c_in * s.c_out * s.k * s.k);
        let g = transpose_geom(&s);
        let (wp, _) = self.param_addrs(params, w, None);
        if let Some(dx) = dx {
            self.unfold_gemm(prec, self.ptr(dx), self.ptr(dy), wp, None, s.c_in, s.n, g);
        }
        let (dwp, dbp) = self.param_addrs(grads, w, b);
        self.weight_grad(prec, dwp, self.ptr(x), self.ptr(dy), s.c_in, s.n, g);
        if let Some(db) = dbp {
            self.bias_grad(db, self.ptr(dy), s.n, s.c_out, g.h * g.w);
        }
    }

    fn maxpool2d_forward(&self, y: &mut CudaMem, x: &CudaMem, s: Pool2dShape) {
        need("maxpool2d_forward", "x", x.len, s.n * s.c * s.h * s.w);
        let outs = s.n * s.c * s.h_out() * s.w_out();
        need("maxpool2d_forward", "y", y.len, outs);
        let mut args = vec![Arg::Ptr(self.ptr(y)), Arg::Ptr(self.ptr(x))];
        args.extend(self.pool_args(&s));
        args.push(Arg::I32(s.zero_pad as i32));
        self.launch_1d("maxpool_forward", outs, &args);
    }

    fn maxpool2d_backward(&self, dx: &mut CudaMem, dy: &CudaMem, x: &CudaMem, s: Pool2dShape) {
        let ins = s.n * s.c * s.h * s.w;
        need("maxpool2d_backward", "x", x.len, ins);
        need("maxpool2d_backward", "dx", dx.len, ins);
        need(
            "maxpool2d_backward",
            "dy",
            dy.len,
            s.n * s.c * s.h_out() * s.w_out(),
        );
        let mut args = vec![
            Arg::Ptr(self.ptr(dx)),
            Arg::Ptr(self.ptr(dy)),
            Arg::Ptr(self.ptr(x)),
        ];
        args.extend(self.pool_args(&s));
        args.push(Arg::I32(s.zero_pad as i32));
        self.launch_1d("maxpool_backward", ins, &args);
    }

    fn upsample_bilinear2d_forward(
        &self,
        y: &mut CudaMem,
        x: &CudaMem,
        nc: usize,
        h: usize,
        w: usize,
        h_out: usize,
        w_out: usize,
    ) {
        let sizes = [nc, h, w, h_out, w_out];
        self.resize(
            "upsample_bilinear2d_forward",
            "upsample_bilinear_forward",
            y,
            x,
            sizes,
            true,
        );
    }

    fn upsample_bilinear2d_backward(
        &self,
        dx: &mut CudaMem,
        dy: &CudaMem,
        nc: usize,
        h: usize,
        w: usize,
        h_out: usize,
        w_out: usize,
    ) {
        let sizes = [nc, h, w, h_out, w_out];
        self.resize(
            "upsample_bilinear2d_backward",
            "upsample_bilinear_backward",
            dx,
            dy,
            sizes,
            false,
        );
    }

    fn concat_channels(
        &self,
        out: &mut CudaMem,
        a: &CudaMem,
        ca: usize,
        b: &CudaMem,
        cb: usize,
        n: usize,
        hw: usize,
    ) {
        let (la, lb) = (ca * hw, cb * hw);
        need("concat_channels", "a", a.len, n * la);
        need("concat_channels", "b", b.len, n * lb);
        need("concat_channels", "out", out.len, n * (la + lb));
        self.launch_1d(
            "concat_channels",
            n * (la + lb),
            &[
                Arg::Ptr(self.ptr(out)),
                Arg::Ptr(self.ptr(a)),
                Arg::U64(la as u64),
                Arg::Ptr(self.ptr(b)),
                Arg::U64(lb as u64),
                Arg::U64(n as u64),
            ],
        );
    }

    fn split_channels(
        &self,
        da: &mut CudaMem,
        accumulate_a: bool,
        db: &mut CudaMem,
        accumulate_b: bool,
        dout: &CudaMem,
        ca: usize,
        cb: usize,
        n: usize,
        hw: usize,
    ) {
        let (la, lb) = (ca * hw, cb * hw);
        need("split_channels", "da", da.len, n * la);
        need("split_channels", "db", db.len, n * lb);
        need("split_channels", "dout", dout.len, n * (la + lb));
        self.launch_1d(
            "split_channels",
            n * (la + lb),
            &[
                Arg::Ptr(self.ptr(da)),
                Arg::I32(accumulate_a as i32),
                Arg::Ptr(self.ptr(db)),
                Arg::I32(accumulate_b as i32),
                Arg::Ptr(self.ptr(dout)),
                Arg::U64(la as u64),
                Arg::U64(lb as u64),
                Arg::U64(n as u64),
            ],
        );
    }
}
