//! Gradient all-reduce between GPU workers through NCCL (feature `cuda`).
//!
//! Every GPU worker offers an NCCL unique id when it registers ([`offer_unique_id`]); the
//! coordinator hands rank 0's to every rank, and each joins the communicator. Collectives run on
//! a stream of their own: as backward finishes a layer, the compute stream records an event, the
//! communication stream waits for it and averages that layer's range while backward goes on with
//! the layers below (as the CPU path's buckets do); after backward the rest of the buffer
//! follows and the compute stream waits for the communication stream. A step whose collectives
//! do not complete within the watchdog (a peer died mid-step) aborts the communicator
//! (`ncclCommAbort`) and returns an error instead of hanging, so the coordinator's restart logic
//! works on GPUs too.
//!
//! Under `--grad-reduce-dtype bf16` each range is rounded to bf16 into a mirror buffer on the
//! compute stream before its event, NCCL averages the mirror in bf16 (half the bytes), and
//! `finish` widens the averaged mirror back into the f32 gradients.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use cudarc::nccl::{result, sys};
use kernels::backend::cuda::{Cuda, CudaMem};
use kernels::Device;

use crate::sync::{DeviceReduce, GradDtype};

/// How long a step's collectives may take before the peers are presumed gone.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(300);

/// A new NCCL unique id when this process can drive a GPU with NCCL, else empty. (Its bootstrap
/// listener lives in this process, so only rank 0's is ever used.)
pub fn offer_unique_id() -> Vec<u8> {
    // SAFETY: only probes whether the library can be opened.
    let nccl = unsafe { sys::is_culib_present() };
    if !nccl || !Cuda::available() {
        return Vec::new();
    }
    match result::get_uniqueid() {
        Ok(id) => id.internal.iter().map(|&c| c as u8).collect(),
        Err(e) => {
            tracing::warn!("could not create an NCCL unique id: {e:?}");
            Vec::new()
        }
    }
}

/// One rank's NCCL communicator over its GPU.
pub struct Nccl {
    /// None once aborted.
    comm: Option<sys::ncclComm_t>,
    dev: Cuda,
    comm_stream: Arc<CudaStream>,
    watchdog: Duration,
    /// The gradient buffer of the step in flight and the ranges already handed to NCCL.
    base: u64,
    reduced: Vec<Range<usize>>,
    dtype: GradDtype,
    /// Under bf16: the gradients rounded to bf16, reduced in place by NCCL.
    mirror: Option<CudaSlice<u16>>,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `Nccl` is used
// only by the thread that owns it.
unsafe impl Send for Nccl {}

impl Nccl {
    /// Joins the communicator of `world` ranks that rank 0's `unique_id` names (blocks until
    /// every rank has joined).
    pub fn connect(
        dev: &Cuda,
        rank: usize,
        world: usize,
        unique_id: &[u8],
        dtype: GradDtype,
        watchdog: Duration,
    ) -> Result<Self, String> {
        let internal: [std::ffi::c_char; 128] = unique_id
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                format!(
                    "the NCCL unique id has {} bytes, not 128 (did rank 0 run without a GPU?)",
                    unique_id.len()
                )
            })?;
        let comm_stream = dev
            .context()
            .new_stream()
            .map_err(|e| format!("CUDA stream for NCCL: {e}"))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by ncclCommInitRank before it is read.
        let comm = unsafe {
            result::comm_init_rank(
                comm.as_mut_ptr(),
                world as i32,
                sys::ncclUniqueId { internal },
                rank as i32,
            )
            .map_err(|e| format!("NCCL communicator for rank {rank} of {world}: {e:?}"))?;
            comm.assume_init()
        };
        Ok(Self {
            comm: Some(comm),
            dev: dev.clone(),
            comm_stream,
            watchdog,
            base: 0,
            reduced: Vec::new(),
            dtype,
            mirror: None,
        })
    }

    /// Enqueues the average of `range` of the step's buffer on the communication stream, after
    /// everything the compute stream has been given so far.
    fn enqueue(&mut self, range: Range<usize>) -> Result<(), String> {
        let comm = self
            .comm
            .ok_or("the NCCL communicator was aborted after an earlier failure")?;
        if range.is_empty() {
            return Ok(());
        }
        let (ptr, dtype) = match (self.dtype, &self.mirror) {
            (GradDtype::Bf16, Some(mirror)) => {
                let at = mirror.device_ptr(self.dev.stream()).0 + 2 * range.start as u64;
                self.dev
                    .cast_to_bf16(at, self.base + 4 * range.start as u64, range.len());
                (at, sys::ncclDataType_t::ncclBfloat16)
            }
            _ => (
                self.base + 4 * range.start as u64,
                sys::ncclDataType_t::ncclFloat32,
            ),
        };
        let ptr = ptr as *mut c_void;
        let done_so_far = self
            .dev
            .stream()
            .record_event(None)
            .map_err(|e| format!("CUDA event: {e}"))?;
        self.comm_stream
            .wait(&done_so_far)
            .map_err(|e| format!("CUDA stream wait: {e}"))?;
        // SAFETY: `base` is the device address of the step's gradient buffer (set by `begin`,
        // which holds at least range.end floats; the mirror as many bf16) and stays allocated
        // until `finish` returns.
        unsafe {
            result::all_reduce(
                ptr,
                ptr,
                range.len(),
                dtype,
                sys::ncclRedOp_t::ncclAvg,
                comm,
                self.comm_stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| format!("NCCL all-reduce: {e:?}"))?;
        self.reduced.push(range);
        Ok(())
    }

    /// Aborts the communicator: pending collectives return, later calls fail.
    fn abort(&mut self) {
        if let Some(c) = self.comm.take() {
            // SAFETY: a communicator from ncclCommInitRank, aborted once.
            let _ = unsafe { result::comm_abort(c) };
        }
    }
}

/// A run's gradient averaging on the device: NCCL when the run has several workers and rank 0
/// offered a unique id at registration; otherwise None, and gradients go through the host
/// `GradientSync` (correct, slower).
pub fn for_run(
    dev: &Cuda,
    opts: &crate::train::TrainOptions,
) -> Result<Option<Box<dyn DeviceReduce<Cuda>>>, crate::train::TrainError> {
    if opts.world <= 1 || opts.nccl_unique_id.is_empty() {
        return Ok(None);
    }
    let comm = Nccl::connect(
        dev,
        opts.rank,
        opts.world,
        &opts.nccl_unique_id,
        opts.grad_dtype,
        DEFAULT_WATCHDOG,
    )
    .map_err(|message| crate::train::TrainError::Sync { step: 0, message })?;
    Ok(Some(Box::new(comm)))
}

impl DeviceReduce<Cuda> for Nccl {
    fn begin(&mut self, dev: &Cuda, grads: &CudaMem) {
        self.base = dev.ptr(grads);
        self.reduced.clear();
        let len = dev.len(grads);
        if self.dtype == GradDtype::Bf16 && self.mirror.as_ref().is_none_or(|m| m.len() < len) {
            self.mirror = Some(dev.alloc_u16(len));
        }
    }

    fn ready(&mut self, range: Range<usize>) -> Result<(), String> {
        self.enqueue(range)
    }

    fn finish(&mut self, dev: &Cuda, grads: &mut CudaMem) -> Result<(), String> {
        let len = dev.len(grads);
        if self.base != dev.ptr(grads) {
            // Not begun on this buffer: nothing of it was reduced yet.
            self.begin(dev, grads);
        }
        for gap in crate::overlap::gaps(&self.reduced, len) {
            self.enqueue(gap)?;
        }
        // Compute waits for communication; the host waits under the watchdog.
        let comm_done = self
            .comm_stream
            .record_event(None)
            .map_err(|e| format!("CUDA event: {e}"))?;
        dev.stream()
            .wait(&comm_done)
            .map_err(|e| format!("CUDA stream wait: {e}"))?;
        if let (GradDtype::Bf16, Some(mirror)) = (self.dtype, &self.mirror) {
            dev.bf16_to_f32(self.base, mirror.device_ptr(dev.stream()).0, len);
        }
        let start = Instant::now();
        loop {
            match comm_done.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(format!("CUDA error while waiting for NCCL: {e}")),
            }
            if start.elapsed() > self.watchdog {
                self.abort();
                return Err(format!(
                    "NCCL all-reduce did not finish within {:?}: a peer is gone or stuck; communicator aborted",
                    self.watchdog
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        self.abort();
    }
}
