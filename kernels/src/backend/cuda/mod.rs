//! The CUDA backend: [`Cuda`] implements [`Device<f32>`] over device allocations. Every op is a
//! hand-written kernel (`kernels/cuda/*.cu`, compiled at run time by NVRTC for the device's
//! architecture, see [`compile`]) except matrix products, which go to cuBLASLt ([`blas`]).
//! Arithmetic follows the CPU reference op for op (same rounding points for bf16/fp16, same
//! counter-based dropout stream), so the two backends agree within floating-point tolerance;
//! reductions that feed the loss or the gradient norm are summed on the host in order.
//!
//! Everything is issued on one stream in call order, so buffers need no other synchronization;
//! [`Device::download`]/[`Device::read`] wait for the stream. A driver failure inside an op is
//! not recoverable by the caller and panics with the op's name; opening the device returns a
//! [`CudaError`] that says what was looked for.

pub mod blas;
pub mod compile;
mod conv;
mod staging;
pub mod suite;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::{Device, ValueProjection};
use crate::ops::{attention::AttnOpts, Activation, AdamConfig, AttnShape, IGNORE_INDEX};
use crate::params::ParamView;
use crate::rng::{keep_threshold, RngKey};
use crate::{KernelError, Precision, Result};
use blas::{Blas, Operands};

/// Why the CUDA backend could not be opened or a kernel not compiled.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("the NVIDIA driver library (libcuda.so) was not found: no GPU driver is installed on this machine, or it is not on LD_LIBRARY_PATH")]
    NoDriver,
    #[error("no CUDA device is visible (device count {count}; CUDA_VISIBLE_DEVICES={visible})")]
    NoDevice { count: i32, visible: String },
    #[error("CUDA device {ordinal} was asked for but only {count} are visible (CUDA_VISIBLE_DEVICES={visible})")]
    BadOrdinal {
        ordinal: usize,
        count: i32,
        visible: String,
    },
    #[error("NVRTC (libnvrtc.so) was not found; it comes with the CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12` (then put its lib directory on LD_LIBRARY_PATH)")]
    NoNvrtc,
    #[error("compiling the CUDA kernels for {arch} failed:\n{log}")]
    Compile { arch: String, log: String },
    #[error("CUDA: {0}")]
    Driver(String),
}

fn visible_devices() -> String {
    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "(unset)".into())
}

/// A device buffer of f32. `Default` is the empty buffer (no allocation). The allocation may be
/// longer than `len` after a shrinking [`Device::resize`].
#[derive(Default)]
pub struct CudaMem {
    buf: Option<CudaSlice<f32>>,
    len: usize,
}

/// One GPU: its context, the stream every op runs on, the compiled kernels and cuBLASLt. Cheap
/// to clone (a shared handle), so models and the trainer each hold one.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Cuda {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

#[doc(hidden)]
pub struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: HashMap<String, CudaFunction>,
    blas: Blas,
    /// Scratch for 16-bit GEMM operands, grown as needed (stream order makes reuse safe).
    half_scratch: Mutex<[Option<CudaSlice<u16>>; 2]>,
    /// The next batch's arrays, copied ahead on a stream of their own ([`Device::prefetch`]).
    staging: Mutex<staging::Staging>,
    name: String,
    capability: (i32, i32),
}

/// A batch array on the device: a prefetched copy (owned by the staging slots) or one uploaded
/// at the op (freed in stream order after it).
enum BatchArray<T> {
    Staged(u64),
    Fresh(CudaSlice<T>),
}

impl<T> BatchArray<T> {
    fn addr(&self, stream: &CudaStream) -> u64 {
        match self {
            BatchArray::Staged(a) => *a,
            BatchArray::Fresh(s) => s.device_ptr(stream).0,
        }
    }
}

/// A kernel argument: device pointers travel as their 64-bit address.
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    U64(u64),
    U32(u32),
    I32(i32),
    F32(f32),
}

const BLOCK: u32 = 256;

fn grid_for(n: usize) -> u32 {
    (n.div_ceil(BLOCK as usize)).clamp(1, 8192) as u32
}

/// Panics with the op's name on a driver error (not recoverable mid-step).
fn ok<T, E: std::fmt::Display>(op: &str, r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("CUDA error in {op}: {e}"))
}

impl Cuda {
    /// Whether the driver library can be loaded and at least one device is visible.
    pub fn available() -> bool {
        // SAFETY: only probes whether the library can be opened.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
    }

    /// Visible devices (0 without a driver).
    pub fn device_count() -> usize {
        // SAFETY: only probes whether the library can be opened.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !present {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    /// Opens device `ordinal` (after `CUDA_VISIBLE_DEVICES`) and compiles the kernels for it.
    pub fn open(ordinal: usize) -> std::result::Result<Self, CudaError> {
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| CudaError::Driver(e.to_string()))?;
        if count <= 0 {
            return Err(CudaError::NoDevice {
                count,
                visible: visible_devices(),
            });
        }
        if ordinal >= count as usize {
            return Err(CudaError::BadOrdinal {
                ordinal,
                count,
                visible: visible_devices(),
            });
        }
        let drv = |e: cudarc::driver::DriverError| CudaError::Driver(e.to_string());
        let ctx = CudaContext::new(ordinal).map_err(drv)?;
        // One stream, ops in call order: the per-buffer event tracking is not needed.
        // SAFETY: no other stream touches these buffers.
        unsafe { ctx.disable_event_tracking() };
        // A non-blocking stream (not the legacy default one), so NCCL on its own stream can
        // run alongside compute.
        let stream = ctx.new_stream().map_err(drv)?;
        let capability = ctx.compute_capability().map_err(drv)?;
        let name = ctx.name().map_err(drv)?;
        let arch = format!("compute_{}{}", capability.0, capability.1);
        let ptx = compile::compile_cached(&arch)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(drv)?;
        let mut kernels = HashMap::new();
        for k in compile::kernel_names() {
            let f = module.load_function(&k).map_err(drv)?;
            kernels.insert(k, f);
        }
        let blas = Blas::new(&stream, capability.0)?;
        let copy_stream = ctx.new_stream().map_err(drv)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                stream,
                kernels,
                blas,
                half_scratch: Mutex::new([None, None]),
                staging: Mutex::new(staging::Staging::new(copy_stream)),
                name,
                capability,
            }),
        })
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)": what a worker reports at start.
    pub fn describe(&self) -> String {
        format!(
            "{} (sm_{}{}, ordinal {})",
            self.name,
            self.capability.0,
            self.capability.1,
            self.ctx.ordinal()
        )
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for every op issued so far.
    pub fn synchronize(&self) {
        ok("synchronize", self.stream.synchronize())
    }

    /// The device address of `m` (0 for an empty buffer).
    pub fn ptr(&self, m: &CudaMem) -> u64 {
        match &m.buf {
            Some(b) => b.device_ptr(&self.stream).0,
            None => 0,
        }
    }

    /// The device buffer behind `m` (its first `len` elements are the buffer's), for NCCL
    /// and other device-side consumers.
    pub fn slice_mut<'a>(&self, m: &'a mut CudaMem) -> Option<&'a mut CudaSlice<f32>> {
        m.buf.as_mut()
    }

    /// A device buffer of `len` 16-bit values (bf16 gradients for a bf16 all-reduce).
    pub fn alloc_u16(&self, len: usize) -> CudaSlice<u16> {
        ok("alloc", self.stream.alloc_zeros::<u16>(len.max(1)))
    }

    /// Rounds `len` floats at device address `src` to bf16 bit patterns at `dst` (on the
    /// compute stream, after everything issued so far).
    pub fn cast_to_bf16(&self, dst: u64, src: u64, len: usize) {
        self.cast_to_half(Precision::Bf16Mixed, dst, src, len)
    }

    /// `len` floats at `src` as bf16 (`Bf16Mixed`) or fp16 bit patterns at `dst`.
    fn cast_to_half(&self, prec: Precision, dst: u64, src: u64, len: usize) {
        let code = if prec == Precision::Bf16Mixed { 1 } else { 2 };
        self.launch_1d(
            "cast_to_half",
            len,
            &[
                Arg::Ptr(dst),
                Arg::Ptr(src),
                Arg::U64(len as u64),
                Arg::I32(code),
            ],
        );
    }

    /// Widens `len` bf16 bit patterns at `src` to floats at `dst` (exact; compute stream).
    pub fn bf16_to_f32(&self, dst: u64, src: u64, len: usize) {
        self.launch_1d(
            "bf16_to_f32",
            len,
            &[Arg::Ptr(dst), Arg::Ptr(src), Arg::U64(len as u64)],
        );
    }

    fn alloc(&self, len: usize) -> CudaMem {
        if len == 0 {
            return CudaMem::default();
        }
        CudaMem {
            buf: Some(ok("alloc", self.stream.alloc_zeros::<f32>(len))),
            len,
        }
    }

    fn upload_any<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Option<CudaSlice<T>> {
        (!host.is_empty()).then(|| ok("upload", self.stream.clone_htod(host)))
    }

    /// A batch array (ids, positions, targets) on the device: the copy [`Device::prefetch`]
    /// made of exactly these bytes, or else uploaded now. None when empty.
    fn batch_array<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Option<BatchArray<T>> {
        if host.is_empty() {
            return None;
        }
        // SAFETY: DeviceRepr types are plain data; the view lives only for this call.
        let bytes = unsafe {
            std::slice::from_raw_parts(host.as_ptr().cast::<u8>(), std::mem::size_of_val(host))
        };
        let staged = ok(
            "staged batch array",
            self.staging
                .lock()
                .expect("staging lock")
                .find(&self.stream, bytes),
        );
        Some(match staged {
            Some(addr) => BatchArray::Staged(addr),
            None => BatchArray::Fresh(ok("upload", self.stream.clone_htod(host))),
        })
    }

    /// How many batch arrays ops found prefetched, and how many they uploaded themselves.
    pub fn prefetch_counts(&self) -> (u64, u64) {
        let s = self.staging.lock().expect("staging lock");
        (s.hits, s.misses)
    }

    fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &[Arg]) {
        let f = self
            .kernels
            .get(name)
            .unwrap_or_else(|| panic!("CUDA kernel {name} was not loaded"));
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(x) | Arg::U64(x) => b.arg(x),
                Arg::U32(x) => b.arg(x),
                Arg::I32(x) => b.arg(x),
                Arg::F32(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every kernel's arguments are listed in its signature's order and types, and
        // the buffers behind the pointers are at least as long as the sizes passed.
        ok(name, unsafe { b.launch(cfg) });
    }

    fn launch_1d(&self, name: &str, n: usize, args: &[Arg]) {
        if n > 0 {
            self.launch(name, (grid_for(n), 1, 1), BLOCK, args)
        }
    }

    /// The address of element `offset` of `m`.
    fn at(&self, m: &CudaMem, offset: usize) -> Arg {
        Arg::Ptr(self.ptr(m) + 4 * offset as u64)
    }

    /// `a` (len ≥ rows·cols) as 16-bit operands in scratch slot `slot`; returns its address.
    fn to_half(&self, prec: Precision, src: u64, len: usize, slot: usize) -> u64 {
        let mut scratch = self.half_scratch.lock().expect("scratch lock");
        let buf = &mut scratch[slot];
        if buf.as_ref().is_none_or(|b| b.len() < len) {
            *buf = Some(ok("alloc", self.stream.alloc_zeros::<u16>(len.max(1))));
        }
        let dst = buf.as_ref().expect("allocated").device_ptr(&self.stream).0;
        self.cast_to_half(prec, dst, src, len);
        dst
    }

    /// Row-major product on device addresses (the body of [`Device::matmul`]).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        prec: Precision,
        c: u64,
        a: u64,
        ta: bool,
        b: u64,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // An empty sum: C is unchanged, or zero when written (cuBLASLt takes no k = 0).
            if !accumulate {
                self.launch_1d(
                    "fill",
                    m * n,
                    &[Arg::Ptr(c), Arg::U64((m * n) as u64), Arg::F32(0.0)],
                );
            }
            return;
        }
        let beta = if accumulate { 1.0 } else { 0.0 };
        let (ops, a, b) = match prec {
            Precision::F32 => (Operands::F32, a, b),
            p => (
                if p == Precision::Bf16Mixed {
                    Operands::Bf16
                } else {
                    Operands::F16
                },
                self.to_half(p, a, m * k, 0),
                self.to_half(p, b, k * n, 1),
            ),
        };
        // SAFETY: the addresses come from this backend's buffers with the sizes checked by the
        // callers (the same contract as the CPU op).
        ok("matmul", unsafe {
            self.blas
                .gemm(&self.stream, ops, c, a, ta, b, tb, m, n, k, beta)
        });
    }

    fn prec_code(p: Precision) -> i32 {
        match p {
            Precision::F32 => 0,
            Precision::Bf16Mixed => 1,
            Precision::F16Mixed => 2,
        }
    }

    /// Partial sums of squares (f64) and the non-finite count of `m[..len]`.
    fn sumsq(&self, m: &CudaMem) -> (f64, u32) {
        let n = m.len;
        if n == 0 {
            return (0.0, 0);
        }
        let blocks = grid_for(n).min(1024) as usize;
        let partial = ok("alloc", self.stream.alloc_zeros::<f64>(blocks));
        let bad = ok("alloc", self.stream.alloc_zeros::<u32>(1));
        self.launch(
            "sumsq_partials",
            (blocks as u32, 1, 1),
            BLOCK,
            &[
                Arg::Ptr(partial.device_ptr(&self.stream).0),
                Arg::Ptr(bad.device_ptr(&self.stream).0),
                Arg::Ptr(self.ptr(m)),
                Arg::U64(n as u64),
            ],
        );
        let p = ok("download", self.stream.clone_dtoh(&partial));
        let b = ok("download", self.stream.clone_dtoh(&bad));
        (p.iter().sum(), b[0])
    }

    fn check_ids(op: &'static str, ids: &[u32], limit: usize, what: &str) -> Result<()> {
        match ids.iter().find(|&&i| i as usize >= limit) {
            Some(i) => Err(KernelError::Shape {
                op,
                detail: format!("{what} {i} outside the table of {limit}"),
            }),
            None => Ok(()),
        }
    }
}

fn attention_kernel_dim(dh: usize) -> usize {
    *compile::ATTENTION_DIMS
        .iter()
        .find(|&&d| dh <= d)
        .unwrap_or_else(|| {
            panic!(
                "attention head dim {dh} is larger than the CUDA kernels support ({})",
                compile::ATTENTION_DIMS.last().expect("dims")
            )
        })
}

/// Blocks of 32 rows (`ROWS` in attention.cu) by (batch, head); each block has as many threads
/// as the kernel's head-dim bound (32 rows × dim/32 threads per row).
fn attn_grid(s: &AttnShape) -> (u32, u32, u32) {
    (s.seq.div_ceil(32) as u32, (s.batch * s.heads) as u32, 1)
}

/// 1 + the last unpadded key of each sequence, and the padding flags as bytes.
fn key_lengths(o: &AttnOpts, s: &AttnShape) -> (Vec<u32>, Option<Vec<u8>>) {
    let t = s.seq;
    match o.key_pad {
        None => (vec![t as u32; s.batch], None),
        Some(m) => {
            let lens = (0..s.batch)
                .map(|b| {
                    m[b * t..(b + 1) * t]
                        .iter()
                        .rposition(|&p| !p)
                        .map_or(0, |i| i + 1) as u32
                })
                .collect();
            (
                lens,
                Some(m[..s.batch * t].iter().map(|&p| p as u8).collect()),
            )
        }
    }
}

impl Device<f32> for Cuda {
    type Mem = CudaMem;

    fn zeros(&self, len: usize) -> CudaMem {
        self.alloc(len)
    }
    fn resize(&self, m: &mut CudaMem, len: usize) {
        let cap = m.buf.as_ref().map_or(0, |b| b.len());
        if len <= cap {
            // Elements past the old length must read as zero.
            if len > m.len {
                let b = m.buf.as_mut().expect("capacity > 0");
                ok(
                    "resize",
                    self.stream.memset_zeros(&mut b.slice_mut(m.len..len)),
                );
            }
            m.len = len;
            return;
        }
        let mut fresh = self.alloc(len);
        if let (Some(old), Some(new)) = (&m.buf, &mut fresh.buf) {
            ok(
                "resize",
                self.stream
                    .memcpy_dtod(&old.slice(..m.len), &mut new.slice_mut(..m.len)),
            );
        }
        *m = fresh;
    }
    fn upload(&self, host: &[f32]) -> CudaMem {
        CudaMem {
            buf: self.upload_any(host),
            len: host.len(),
        }
    }
    fn download(&self, m: &CudaMem) -> Vec<f32> {
        self.read(m, 0..m.len).into_owned()
    }
    fn write(&self, m: &mut CudaMem, offset: usize, host: &[f32]) {
        if host.is_empty() {
            return;
        }
        assert!(
            offset + host.len() <= m.len,
            "write past the end of a buffer"
        );
        let b = m.buf.as_mut().expect("non-empty buffer");
        ok(
            "upload",
            self.stream
                .memcpy_htod(host, &mut b.slice_mut(offset..offset + host.len())),
        );
    }
    fn prefetch(&self, arrays: &[&[u8]]) {
        ok(
            "prefetch",
            self.staging
                .lock()
                .expect("staging lock")
                .prefetch(&self.stream, arrays),
        );
    }
    fn host_visible(&self) -> bool {
        false
    }
    fn read<'a>(&self, m: &'a CudaMem, range: Range<usize>) -> Cow<'a, [f32]> {
        assert!(
            range.end <= m.len,
            "read {range:?} of a buffer of {}",
            m.len
        );
        match &m.buf {
            Some(b) if !range.is_empty() => {
                Cow::Owned(ok("download", self.stream.clone_dtoh(&b.slice(range))))
            }
            _ => Cow::Owned(Vec::new()),
        }
    }
    fn len(&self, m: &CudaMem) -> usize {
        m.len
    }
    fn fill_zero(&self, m: &mut CudaMem) {
        let len = m.len;
        if let Some(b) = m.buf.as_mut() {
            ok(
                "fill_zero",
                self.stream.memset_zeros(&mut b.slice_mut(..len)),
            );
        }
    }
    fn copy(&self, dst: &mut CudaMem, src: &CudaMem) {
        assert!(dst.len >= src.len, "copy of {} into {}", src.len, dst.len);
        if let (Some(s), Some(d)) = (&src.buf, &mut dst.buf) {
            ok(
                "copy",
                self.stream
                    .memcpy_dtod(&s.slice(..src.len), &mut d.slice_mut(..src.len)),
            );
        }
    }

    fn matmul(
        &self,
        prec: Precision,
        c: &mut CudaMem,
        a: &CudaMem,
        ta: bool,
        b: &CudaMem,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) {
        assert!(c.len >= m * n && a.len >= m * k && b.len >= k * n);
        self.gemm(
            prec,
            self.ptr(c),
            self.ptr(a),
            ta,
            self.ptr(b),
            tb,
            m,
            n,
            k,
            accumulate,
        );
    }

    fn linear_forward(
        &self,
        prec: Precision,
        y: &mut CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    ) {
        assert!(y.len >= n * o && x.len >= n * i && w.len >= o * i);
        let yp = self.ptr(y);
        if let Some(b) = b {
            self.launch_1d(
                "bias_fill_rows",
                n * o,
                &[
                    Arg::Ptr(yp),
                    self.at(params, b.offset),
                    Arg::U64(n as u64),
                    Arg::U64(o as u64),
                ],
            );
        }
        let wp = self.ptr(params) + 4 * w.offset as u64;
        self.gemm(prec, yp, self.ptr(x), false, wp, true, n, o, i, b.is_some());
    }

    fn linear_backward(
        &self,
        prec: Precision,
        dx: Option<&mut CudaMem>,
        accumulate_dx: bool,
        grads: &mut CudaMem,
        dy: &CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    ) {
        let wp = self.ptr(params) + 4 * w.offset as u64;
        let gp = self.ptr(grads);
        if let Some(dx) = dx {
            self.gemm(
                prec,
                self.ptr(dx),
                self.ptr(dy),
                false,
                wp,
                false,
                n,
                i,
                o,
                accumulate_dx,
            );
        }
        self.gemm(
            prec,
            gp + 4 * w.offset as u64,
            self.ptr(dy),
            true,
            self.ptr(x),
            false,
            o,
            i,
            n,
            true,
        );
        if let Some(b) = b {
            self.launch_1d(
                "bias_backward",
                o,
                &[
                    Arg::Ptr(gp + 4 * b.offset as u64),
                    Arg::Ptr(self.ptr(dy)),
                    Arg::U64(n as u64),
                    Arg::U64(o as u64),
                ],
            );
        }
    }

    fn layernorm_forward(
        &self,
        y: &mut CudaMem,
        mean: &mut CudaMem,
        rstd: &mut CudaMem,
        x: &CudaMem,
        params: &CudaMem,
        gamma: ParamView,
        beta: ParamView,
        n: usize,
        c: usize,
        eps: f64,
    ) {
        if n == 0 {
            return;
        }
        self.launch(
            "layernorm_forward",
            (n as u32, 1, 1),
            BLOCK,
            &[
                Arg::Ptr(self.ptr(y)),
                Arg::Ptr(self.ptr(mean)),
                Arg::Ptr(self.ptr(rstd)),
                Arg::Ptr(self.ptr(x)),
                self.at(params, gamma.offset),
                self.at(params, beta.offset),
                Arg::U64(n as u64),
                Arg::U64(c as u64),
                Arg::F32(eps as f32),
            ],
        );
    }

    fn layernorm_backward(
        &self,
        dx: &mut CudaMem,
        accumulate_dx: bool,
        grads: &mut CudaMem,
        dy: &CudaMem,
        x: &CudaMem,
        mean: &CudaMem,
        rstd: &CudaMem,
        params: &CudaMem,
        gamma: ParamView,
        beta: ParamView,
        n: usize,
        c: usize,
    ) {
        if n == 0 {
            return;
        }
        self.launch(
            "layernorm_backward_dx",
            (n as u32, 1, 1),
            BLOCK,
            &[
                Arg::Ptr(self.ptr(dx)),
                Arg::I32(accumulate_dx as i32),
                Arg::Ptr(self.ptr(dy)),
                Arg::Ptr(self.ptr(x)),
                Arg::Ptr(self.ptr(mean)),
                Arg::Ptr(self.ptr(rstd)),
                self.at(params, gamma.offset),
                Arg::U64(n as u64),
                Arg::U64(c as u64),
            ],
        );
        self.launch_1d(
            "layernorm_backward_params",
            c,
            &[
                self.at(grads, gamma.offset),
                self.at(grads, beta.offset),
                Arg::Ptr(self.ptr(dy)),
                Arg::Ptr(self.ptr(x)),
                Arg::Ptr(self.ptr(mean)),
                Arg::Ptr(self.ptr(rstd)),
                Arg::U64(n as u64),
                Arg::U64(c as u64),
            ],
        );
    }

    fn embedding_forward(
        &self,
        out: &mut CudaMem,
        idx: &[u32],
        params: &CudaMem,
        w: ParamView,
        dim: usize,
    ) -> Result<()> {
        if dim == 0 {
            return Err(KernelError::Shape {
                op: "embedding",
                detail: "embedding dim is 0".into(),
            });
        }
        Self::check_ids("embedding", idx, w.len / dim, "index")?;
        let Some(ids) = self.batch_array(idx) else {
            return Ok(());
        };
        self.launch_1d(
            "embedding_forward",
            idx.len() * dim,
            &[
                Arg::Ptr(self.ptr(out)),
                Arg::Ptr(ids.addr(&self.stream)),
                self.at(params, w.offset),
                Arg::U64(idx.len() as u64),
                Arg::U64(dim as u64),
            ],
        );
        Ok(())
    }

    fn embedding_backward(
        &self,
        grads: &mut CudaMem,
        w: ParamView,
        dout: &CudaMem,
        idx: &[u32],
        dim: usize,
    ) -> Result<()> {
        if dim == 0 {
            return Err(KernelError::Shape {
                op: "embedding_backward",
                detail: "embedding dim is 0".into(),
            });
        }
        Self::check_ids("embedding_backward", idx, w.len / dim, "index")?;
        let Some(ids) = self.batch_array(idx) else {
            return Ok(());
        };
        self.launch_1d(
            "embedding_backward",
            idx.len() * dim,
            &[
                self.at(grads, w.offset),
                Arg::Ptr(self.ptr(dout)),
                Arg::Ptr(ids.addr(&self.stream)),
                Arg::U64(idx.len() as u64),
                Arg::U64(dim as u64),
            ],
        );
        Ok(())
    }

    fn token_embedding_forward(
        &self,
        out: &mut CudaMem,
        ids: &[u32],
        pos: &[u32],
        params: &CudaMem,
        gene: ParamView,
        position: ParamView,
        value: Option<ValueProjection<'_, CudaMem>>,
        dim: usize,
    ) -> Result<()> {
        check_tokens(ids, pos, gene.len, position.len, dim)?;
        let (Some(id_buf), Some(pos_buf)) = (self.batch_array(ids), self.batch_array(pos)) else {
            return Ok(());
        };
        let (vw, vb, vals) = match value {
            Some((w, b, v)) => {
                if v.len < ids.len() {
                    return Err(KernelError::Shape {
                        op: "token_embedding",
                        detail: format!("{} values for {} tokens", v.len, ids.len()),
                    });
                }
                (
                    self.at(params, w.offset),
                    self.at(params, b.offset),
                    Arg::Ptr(self.ptr(v)),
                )
            }
            None => (Arg::Ptr(0), Arg::Ptr(0), Arg::Ptr(0)),
        };
        self.launch_1d(
            "token_embedding_forward",
            ids.len() * dim,
            &[
                Arg::Ptr(self.ptr(out)),
                Arg::Ptr(id_buf.addr(&self.stream)),
                Arg::Ptr(pos_buf.addr(&self.stream)),
                self.at(params, gene.offset),
                self.at(params, position.offset),
                vw,
                vb,
                vals,
                Arg::U64(ids.len() as u64),
                Arg::U64(dim as u64),
            ],
        );
        Ok(())
    }

    fn token_embedding_backward(
        &self,
        grads: &mut CudaMem,
        dout: &CudaMem,
        ids: &[u32],
        pos: &[u32],
        gene: ParamView,
        position: ParamView,
        value: Option<ValueProjection<'_, CudaMem>>,
        dim: usize,
    ) -> Result<()> {
        check_tokens(ids, pos, gene.len, position.len, dim)?;
        let (Some(id_buf), Some(pos_buf)) = (self.batch_array(ids), self.batch_array(pos)) else {
            return Ok(());
        };
        let n = ids.len();
        self.launch_1d(
            "token_embedding_backward",
            n * dim,
            &[
                self.at(grads, gene.offset),
                self.at(grads, position.offset),
                Arg::Ptr(self.ptr(dout)),
                Arg::Ptr(id_buf.addr(&self.stream)),
                Arg::Ptr(pos_buf.addr(&self.stream)),
                Arg::U64(n as u64),
                Arg::U64(dim as u64),
            ],
        );
        if let Some((w, b, v)) = value {
            self.launch_1d(
                "value_projection_backward",
                dim,
                &[
                    self.at(grads, w.offset),
                    self.at(grads, b.offset),
                    Arg::Ptr(self.ptr(dout)),
                    Arg::Ptr(self.ptr(v)),
                    Arg::U64(n as u64),
                    Arg::U64(dim as u64),
                ],
            );
        }
        Ok(())
    }

    fn gather_rows(&self, out: &mut CudaMem, x: &CudaMem, rows: &[usize], dim: usize) {
        let r: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let Some(rb) = self.upload_any(&r) else {
            return;
        };
        self.launch_1d(
            "gather_rows",
            rows.len() * dim,
            &[
                Arg::Ptr(self.ptr(out)),
                Arg::Ptr(self.ptr(x)),
                Arg::Ptr(rb.device_ptr(&self.stream).0),
                Arg::U64(rows.len() as u64),
                Arg::U64(dim as u64),
            ],
        );
    }
    fn scatter_rows(
        &self,
        dst: &mut CudaMem,
        src: &CudaMem,
        rows: &[usize],
        dim: usize,
        accumulate: bool,
    ) {
        let r: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let Some(rb) = self.upload_any(&r) else {
            return;
        };
        self.launch_1d(
            "scatter_rows",
            rows.len() * dim,
            &[
                Arg::Ptr(self.ptr(dst)),
                Arg::Ptr(self.ptr(src)),
                Arg::Ptr(rb.device_ptr(&self.stream).0),
                Arg::U64(rows.len() as u64),
                Arg::U64(dim as u64),
                Arg::I32(accumulate as i32),
            ],
        );
    }
    fn mean_rows(
        &self,
        out: &mut CudaMem,
        x: &CudaMem,
        rows: &[usize],
        offsets: &[usize],
        dim: usize,
    ) {
        let groups = offsets.len().saturating_sub(1);
        if groups == 0 || dim == 0 {
            return;
        }
        let r: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let o: Vec<u64> = offsets.iter().map(|&r| r as u64).collect();
        // An empty row list still needs a valid address.
        let rb = self
            .upload_any(if r.is_empty() { &[0u64][..] } else { &r })
            .expect("non-empty");
        let ob = self.upload_any(&o).expect("non-empty");
        self.launch(
            "mean_rows",
            (groups as u32, 1, 1),
            BLOCK,
            &[
                Arg::Ptr(self.ptr(out)),
                Arg::Ptr(self.ptr(x)),
                Arg::Ptr(rb.device_ptr(&self.stream).0),
                Arg::Ptr(ob.device_ptr(&self.stream).0),
                Arg::U64(groups as u64),
                Arg::U64(dim as u64),
            ],
        );
    }

    fn attention_forward(
        &self,
        out: &mut CudaMem,
        lse: &mut CudaMem,
        qkv: &CudaMem,
        s: AttnShape,
        o: &AttnOpts,
    ) {
        if o.packed.is_some() {
            // The kernel knows the padded layout; packed rows go through it (see the module).
            return super::packed_attention::forward_via_padding(self, out, lse, qkv, s, o);
        }
        let t = s.seq;
        assert!(qkv.len >= s.batch * t * 3 * s.embed() && out.len >= s.batch * t * s.embed());
        assert!(lse.len >= s.batch * s.heads * t);
        if s.batch * s.heads * t == 0 {
            return;
        }
        let d = attention_kernel_dim(s.head_dim);
        let (klen, pad) = key_lengths(o, &s);
        let kb = self.upload_any(&klen).expect("batch > 0");
        let pb = pad.as_deref().and_then(|p| self.upload_any(p));
        let mut args = vec![
            Arg::Ptr(self.ptr(out)),
            Arg::Ptr(self.ptr(lse)),
            Arg::Ptr(self.ptr(qkv)),
        ];
        args.extend(attn_args(&self.stream, &kb, pb.as_ref(), &s, o));
        self.launch(&format!("attn_forward_{d}"), attn_grid(&s), d as u32, &args);
    }

    fn attention_backward(
        &self,
        dqkv: &mut CudaMem,
        dout: &CudaMem,
        out: &CudaMem,
        lse: &CudaMem,
        qkv: &CudaMem,
        s: AttnShape,
        o: &AttnOpts,
    ) {
        if o.packed.is_some() {
            return super::packed_attention::backward_via_padding(
                self, dqkv, dout, out, lse, qkv, s, o,
            );
        }
        let t = s.seq;
        assert!(dqkv.len >= s.batch * t * 3 * s.embed() && dout.len >= s.batch * t * s.embed());
        let bht = s.batch * s.heads * t;
        if bht == 0 {
            return;
        }
        let d = attention_kernel_dim(s.head_dim);
        let delta = self.alloc(bht);
        self.launch_1d(
            "attn_backward_delta",
            bht,
            &[
                Arg::Ptr(self.ptr(&delta)),
                Arg::Ptr(self.ptr(dout)),
                Arg::Ptr(self.ptr(out)),
                Arg::U64(s.batch as u64),
                Arg::U64(t as u64),
                Arg::U64(s.heads as u64),
                Arg::U64(s.head_dim as u64),
            ],
        );
        let (klen, pad) = key_lengths(o, &s);
        let kb = self.upload_any(&klen).expect("batch > 0");
        let pb = pad.as_deref().and_then(|p| self.upload_any(p));
        let mut args = vec![
            Arg::Ptr(self.ptr(dqkv)),
            Arg::Ptr(self.ptr(dout)),
            Arg::Ptr(self.ptr(lse)),
            Arg::Ptr(self.ptr(&delta)),
            Arg::Ptr(self.ptr(qkv)),
        ];
        args.extend(attn_args(&self.stream, &kb, pb.as_ref(), &s, o));
        self.launch(
            &format!("attn_backward_dq_{d}"),
            attn_grid(&s),
            d as u32,
            &args,
        );
        self.launch(
            &format!("attn_backward_dkdv_{d}"),
            attn_grid(&s),
            d as u32,
            &args,
        );
    }

    fn activation_forward(&self, act: Activation, y: &mut CudaMem, x: &CudaMem) {
        let name = match act {
            Activation::Relu => "relu_forward",
            Activation::Gelu => "gelu_forward",
        };
        self.launch_1d(
            name,
            x.len,
            &[
                Arg::Ptr(self.ptr(y)),
                Arg::Ptr(self.ptr(x)),
                Arg::U64(x.len as u64),
            ],
        );
    }
    fn activation_backward(&self, act: Activation, dx: &mut CudaMem, dy: &CudaMem, x: &CudaMem) {
        let name = match act {
            Activation::Relu => "relu_backward",
            Activation::Gelu => "gelu_backward",
        };
        self.launch_1d(
            name,
            x.len,
            &[
                Arg::Ptr(self.ptr(dx)),
                Arg::Ptr(self.ptr(dy)),
                Arg::Ptr(self.ptr(x)),
                Arg::U64(x.len as u64),
            ],
        );
    }
    fn dropout_forward(&self, x: &mut CudaMem, p: f64, key: RngKey) {
        if p <= 0.0 {
            return;
        }
        let scale = if p >= 1.0 {
            0.0
        } else {
            (1.0 / (1.0 - p)) as f32
        };
        self.launch_1d(
            "dropout",
            x.len,
            &[
                Arg::Ptr(self.ptr(x)),
                Arg::U64(x.len as u64),
                Arg::U64(key.stream_state()),
                Arg::U32(keep_threshold(p)),
                Arg::F32(scale),
            ],
        );
    }
    fn dropout_backward(&self, dy: &mut CudaMem, p: f64, key: RngKey) {
        self.dropout_forward(dy, p, key)
    }
    fn residual_forward(&self, out: &mut CudaMem, a: &CudaMem, b: &CudaMem) {
        self.launch_1d(
            "residual_forward",
            a.len,
            &[
                Arg::Ptr(self.ptr(out)),
                Arg::Ptr(self.ptr(a)),
                Arg::Ptr(self.ptr(b)),
                Arg::U64(a.len as u64),
            ],
        );
    }
    fn add_inplace(&self, acc: &mut CudaMem, g: &CudaMem) {
        self.launch_1d(
            "add_inplace",
            g.len,
            &[
                Arg::Ptr(self.ptr(acc)),
                Arg::Ptr(self.ptr(g)),
                Arg::U64(g.len as u64),
            ],
        );
    }

    fn cross_entropy(
        &self,
        dlogits: &mut CudaMem,
        logits: &CudaMem,
        targets: &[i64],
        n: usize,
        v: usize,
        dloss: f64,
    ) -> Result<f64> {
        let shape = |detail: String| KernelError::Shape {
            op: "cross_entropy",
            detail,
        };
        if logits.len < n * v || dlogits.len < n * v {
            return Err(shape(format!(
                "logits {} / dlogits {} < {n}x{v}",
                logits.len, dlogits.len
            )));
        }
        if targets.len() != n {
            return Err(shape(format!("{} targets for {n} rows", targets.len())));
        }
        let mut count = 0usize;
        for &t in targets {
            if t != IGNORE_INDEX {
                if t < 0 || t as usize >= v {
                    return Err(shape(format!(
                        "target {t} outside [0, {v}) and not the ignore index -100"
                    )));
                }
                count += 1;
            }
        }
        if n == 0 {
            return Ok(0.0);
        }
        let scale = if count == 0 {
            0.0
        } else {
            dloss / count as f64
        };
        let tb = self.batch_array(targets).expect("n > 0");
        let loss = ok("alloc", self.stream.alloc_zeros::<f64>(n));
        self.launch(
            "cross_entropy",
            (n as u32, 1, 1),
            BLOCK,
            &[
                Arg::Ptr(self.ptr(dlogits)),
                Arg::Ptr(loss.device_ptr(&self.stream).0),
                Arg::Ptr(self.ptr(logits)),
                Arg::Ptr(tb.addr(&self.stream)),
                Arg::U64(n as u64),
                Arg::U64(v as u64),
                Arg::F32(scale as f32),
            ],
        );
        let rows = ok("download", self.stream.clone_dtoh(&loss));
        let total: f64 = rows.iter().sum();
        Ok(if count == 0 {
            0.0
        } else {
            total / count as f64
        })
    }

    fn squared_error_sum(
        &self,
        dy: Option<&mut CudaMem>,
        y: &CudaMem,
        target: &CudaMem,
        dscale: f64,
    ) -> Result<f64> {
        if y.len != target.len {
            return Err(KernelError::Shape {
                op: "squared_error_sum",
                detail: format!("y {} target {}", y.len, target.len),
            });
        }
        let n = y.len;
        if n == 0 {
            return Ok(0.0);
        }
        let err = ok("alloc", self.stream.alloc_zeros::<f64>(n));
        let dyp = dy.map_or(0, |d| self.ptr(d));
        self.launch_1d(
            "squared_error",
            n,
            &[
                Arg::Ptr(dyp),
                Arg::Ptr(err.device_ptr(&self.stream).0),
                Arg::Ptr(self.ptr(y)),
                Arg::Ptr(self.ptr(target)),
                Arg::U64(n as u64),
                Arg::F32((2.0 * dscale) as f32),
            ],
        );
        Ok(ok("download", self.stream.clone_dtoh(&err)).iter().sum())
    }

    fn adam_step(
        &self,
        cfg: &AdamConfig,
        t: u64,
        params: &mut CudaMem,
        grads: &CudaMem,
        m: &mut CudaMem,
        v: &mut CudaMem,
        decay_free: &[Range<usize>],
    ) {
        let n = params.len;
        self.adam_step_in(cfg, t, 0..n, params, grads, m, v, 0, decay_free)
    }
    fn adam_step_in(
        &self,
        cfg: &AdamConfig,
        t: u64,
        range: Range<usize>,
        params: &mut CudaMem,
        grads: &CudaMem,
        m: &mut CudaMem,
        v: &mut CudaMem,
        moments_at: usize,
        decay_free: &[Range<usize>],
    ) {
        let n = params.len;
        let mend = moments_at + range.len();
        assert!(grads.len == n && range.end <= n && m.len >= mend && v.len >= mend);
        let no_decay = AdamConfig {
            weight_decay: 0.0,
            ..*cfg
        };
        let segment = |c: &AdamConfig, r: Range<usize>| {
            if r.is_empty() {
                return;
            }
            let ti = t.max(1) as i32;
            let bc1 = 1.0 - c.beta1.powi(ti);
            let bc2 = 1.0 - c.beta2.powi(ti);
            self.launch_1d(
                "adam_segment",
                r.len(),
                &[
                    Arg::Ptr(self.ptr(params)),
                    Arg::Ptr(self.ptr(grads)),
                    Arg::Ptr(self.ptr(m)),
                    Arg::Ptr(self.ptr(v)),
                    Arg::U64(r.start as u64),
                    Arg::U64(r.end as u64),
                    // Moment index of parameter r.start.
                    Arg::U64((moments_at + (r.start - range.start)) as u64),
                    Arg::F32((c.lr / bc1) as f32),
                    Arg::F32(bc2.sqrt() as f32),
                    Arg::F32(c.beta1 as f32),
                    Arg::F32(c.beta2 as f32),
                    Arg::F32((1.0 - c.beta1) as f32),
                    Arg::F32((1.0 - c.beta2) as f32),
                    Arg::F32(c.eps as f32),
                    Arg::F32(c.weight_decay as f32),
                    Arg::F32((1.0 - c.lr * c.weight_decay) as f32),
                    Arg::I32(c.decoupled as i32),
                ],
            );
        };
        // As ops::adam_step_in: the decay-free ranges clipped to `range`, decayed stretches
        // between them.
        let mut at = range.start;
        for r in decay_free {
            let (lo, hi) = (r.start.max(range.start), r.end.min(range.end));
            if lo >= hi {
                continue;
            }
            segment(cfg, at..lo);
            segment(&no_decay, lo..hi);
            at = hi;
        }
        segment(cfg, at..range.end);
    }
    fn global_norm(&self, x: &CudaMem) -> f64 {
        self.sumsq(x).0.sqrt()
    }
    fn clip_grad_norm(&self, grads: &mut CudaMem, max_norm: f64) -> f64 {
        let n = self.global_norm(grads);
        let coef = max_norm / (n + 1e-6);
        if coef < 1.0 {
            Device::<f32>::scale(self, grads, coef);
        }
        n
    }
    fn all_finite(&self, x: &CudaMem) -> bool {
        self.sumsq(x).1 == 0
    }
    fn scale(&self, x: &mut CudaMem, factor: f64) {
        self.launch_1d(
            "scale",
            x.len,
            &[
                Arg::Ptr(self.ptr(x)),
                Arg::U64(x.len as u64),
                Arg::F32(factor as f32),
            ],
        );
    }
    fn round(&self, prec: Precision, x: &mut CudaMem) {
        if prec == Precision::F32 {
            return;
        }
        self.launch_1d(
            "round_to",
            x.len,
            &[
                Arg::Ptr(self.ptr(x)),
                Arg::U64(x.len as u64),
                Arg::I32(Self::prec_code(prec)),
            ],
        );
    }
}

/// The arguments every attention kernel takes after its buffers (see `attention.cu`).
fn attn_args(
    stream: &CudaStream,
    klen: &CudaSlice<u32>,
    pad: Option<&CudaSlice<u8>>,
    s: &AttnShape,
    o: &AttnOpts,
) -> Vec<Arg> {
    let drop_scale = if o.dropout < 1.0 {
        (1.0 / (1.0 - o.dropout)) as f32
    } else {
        0.0
    };
    vec![
        Arg::Ptr(klen.device_ptr(stream).0),
        Arg::Ptr(pad.map_or(0, |p| p.device_ptr(stream).0)),
        Arg::U64(s.batch as u64),
        Arg::U64(s.seq as u64),
        Arg::U64(s.heads as u64),
        Arg::U64(s.head_dim as u64),
        Arg::I32(o.causal as i32),
        Arg::F32(o.dropout as f32),
        Arg::U64(o.key.stream_state()),
        Arg::U32(keep_threshold(o.dropout)),
        Arg::F32(drop_scale),
        Arg::I32(Cuda::prec_code(o.prec)),
    ]
}

/// Ids within the gene table and positions within the position table (both `dim` wide).
fn check_tokens(ids: &[u32], pos: &[u32], gene: usize, position: usize, dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(KernelError::Shape {
            op: "token_embedding",
            detail: "embedding dim is 0".into(),
        });
    }
    if ids.len() != pos.len() {
        return Err(KernelError::Shape {
            op: "token_embedding",
            detail: format!("{} ids but {} positions", ids.len(), pos.len()),
        });
    }
    Cuda::check_ids("token_embedding", ids, gene / dim, "token id")?;
    Cuda::check_ids("token_embedding", pos, position / dim, "position")
}
