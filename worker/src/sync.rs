//! How the trainer averages across workers: one trait, called by every rank in the same order.

/// Averages a buffer over all workers (in place). Called by every rank in the same order, from
/// a communication thread while backward runs (hence `Send`).
pub trait GradientSync: Send {
    fn all_reduce_mean(&mut self, grads: &mut [f32]) -> Result<(), String>;
}

/// Averages a gradient buffer across workers on the compute device itself (NCCL on GPUs),
/// without a trip through host memory, overlapped with backward: `begin` before the backward of
/// a step's last micro-batch, `ready` for each range backward has finished (in the same order
/// on every rank), `finish` after backward (averages the rest, waits for all of it).
pub trait DeviceReduce<D: kernels::Device<f32>>: Send {
    fn begin(&mut self, dev: &D, grads: &D::Mem);
    fn ready(&mut self, range: std::ops::Range<usize>) -> Result<(), String>;
    fn finish(&mut self, dev: &D, grads: &mut D::Mem) -> Result<(), String>;
}

/// One worker: nothing to average.
pub struct NoSync;

impl GradientSync for NoSync {
    fn all_reduce_mean(&mut self, _grads: &mut [f32]) -> Result<(), String> {
        Ok(())
    }
}

/// The CPU ring (shared memory on one host, TCP across hosts).
impl GradientSync for crate::ring::Ring {
    fn all_reduce_mean(&mut self, grads: &mut [f32]) -> Result<(), String> {
        crate::ring::Ring::all_reduce_mean(self, grads).map_err(|e| e.to_string())
    }
}
