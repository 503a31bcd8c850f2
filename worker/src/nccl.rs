//! Gradient all-reduce between GPU workers through NCCL (feature `cuda`).
//!
//! Every GPU worker offers an NCCL unique id when it registers
//! ([`offer_unique_id`]); the coordinator hands rank 0's to every rank, and each builds its
//! communicator on the stream its [`Cuda`] backend computes on, so the all-reduce is ordered
//! after backward with no host round trip. A collective that does not complete within the
//! watchdog timeout (a peer died mid-step) aborts the communicator (`ncclCommAbort`) and
//! returns an error instead of hanging, so the coordinator's restart logic works on GPUs too.

use std::ops::Range;
use std::time::{Duration, Instant};

use cudarc::nccl::{Comm, Id, ReduceOp};
use kernels::backend::cuda::{Cuda, CudaMem};

/// How long a collective may take before the peers are presumed gone.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(300);

/// A new NCCL unique id when this process can drive a GPU with NCCL, else empty. (Its bootstrap
/// listener lives in this process, so only rank 0's is ever used.)
pub fn offer_unique_id() -> Vec<u8> {
    // SAFETY: only probes whether the library can be opened.
    let nccl = unsafe { cudarc::nccl::sys::is_culib_present() };
    if !nccl || !Cuda::available() {
        return Vec::new();
    }
    match Id::new() {
        Ok(id) => id.internal().iter().map(|&c| c as u8).collect(),
        Err(e) => {
            tracing::warn!("could not create an NCCL unique id: {e:?}");
            Vec::new()
        }
    }
}

/// A communicator handle that may move to another thread.
struct SendComm(Comm);
// SAFETY: NCCL communicators may be used from any thread, one call at a time; `Nccl` is only
// ever used by the thread that owns it.
unsafe impl Send for SendComm {}

/// One rank's NCCL communicator over its GPU.
pub struct Nccl {
    comm: Option<SendComm>,
    dev: Cuda,
    watchdog: Duration,
}

impl Nccl {
    /// Joins the communicator of `world` ranks that rank 0's `unique_id` names (blocks until
    /// every rank has joined).
    pub fn connect(
        dev: &Cuda,
        rank: usize,
        world: usize,
        unique_id: &[u8],
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
        let comm = Comm::from_rank(dev.stream().clone(), rank, world, Id::uninit(internal))
            .map_err(|e| format!("NCCL communicator for rank {rank} of {world}: {e:?}"))?;
        Ok(Self {
            comm: Some(SendComm(comm)),
            dev: dev.clone(),
            watchdog,
        })
    }

    /// Averages `buf[range]` over the ranks in place (ncclAvg, fp32) and waits for it under
    /// the watchdog.
    pub fn all_reduce_mean(
        &mut self,
        buf: &mut CudaMem,
        range: Range<usize>,
    ) -> Result<(), String> {
        let comm = &self
            .comm
            .as_ref()
            .ok_or("the NCCL communicator was aborted after an earlier failure")?
            .0;
        if range.is_empty() {
            return Ok(());
        }
        let slice = self
            .dev
            .slice_mut(buf)
            .ok_or("all-reduce of an empty buffer")?;
        let mut view = slice.slice_mut(range);
        comm.all_reduce_in_place(&mut view, &ReduceOp::Avg)
            .map_err(|e| format!("NCCL all-reduce: {e:?}"))?;
        self.wait()
    }

    /// Polls the stream until the collective is done; past the watchdog, aborts.
    fn wait(&mut self) -> Result<(), String> {
        let done = self
            .dev
            .stream()
            .record_event(None)
            .map_err(|e| format!("CUDA event: {e}"))?;
        let start = Instant::now();
        loop {
            match done.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(format!("CUDA error while waiting for NCCL: {e}")),
            }
            if start.elapsed() > self.watchdog {
                // Dropping the communicator calls ncclCommAbort, which unblocks the stream.
                self.comm.take();
                return Err(format!(
                    "NCCL all-reduce did not finish within {:?}: a peer is gone or stuck; communicator aborted",
                    self.watchdog
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl crate::sync::DeviceReduce<Cuda> for Nccl {
    fn all_reduce_mean(&mut self, dev: &Cuda, grads: &mut CudaMem) -> Result<(), String> {
        let len = kernels::Device::<f32>::len(dev, grads);
        Nccl::all_reduce_mean(self, grads, 0..len)
    }
}
