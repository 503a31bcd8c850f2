//! How the trainer averages across workers: one trait, called by every rank in the same order.

/// The number format gradients travel in between workers. `Bf16` halves the bytes on the wire
/// (PyTorch DDP's `bf16_compress_hook`): every rank's gradients are rounded to bf16, partial
/// sums travel as bf16, and the averaged result is a bf16 value (the same on every rank), held
/// in f32. Step totals (loss sums, token counts) always travel in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradDtype {
    #[default]
    F32,
    Bf16,
}

impl GradDtype {
    /// The names `coordinator launch --grad-reduce-dtype` takes (empty is the default, fp32).
    pub const NAMES: &'static str = "fp32, bf16";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "fp32" | "f32" | "float32" | "32" => Ok(GradDtype::F32),
            "bf16" | "bfloat16" => Ok(GradDtype::Bf16),
            other => Err(format!(
                "gradient all-reduce dtype `{other}` is not one of: {}",
                Self::NAMES
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GradDtype::F32 => "fp32",
            GradDtype::Bf16 => "bf16",
        }
    }
}

/// Averages a buffer over all workers (in place). Called by every rank in the same order, from
/// a communication thread while backward runs (hence `Send`).
pub trait GradientSync: Send {
    /// Exact f32 average (step totals, metrics, and gradients under fp32).
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), String>;

    /// The format [`GradientSync::all_reduce_grads_mean`] uses on the wire.
    fn grad_dtype(&self) -> GradDtype {
        GradDtype::F32
    }

    /// Averages gradients in the run's [`GradDtype`].
    fn all_reduce_grads_mean(&mut self, grads: &mut [f32]) -> Result<(), String> {
        self.all_reduce_mean(grads)
    }
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
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), String> {
        crate::ring::Ring::all_reduce_mean(self, buf).map_err(|e| e.to_string())
    }

    fn grad_dtype(&self) -> GradDtype {
        crate::ring::Ring::grad_dtype(self)
    }

    fn all_reduce_grads_mean(&mut self, grads: &mut [f32]) -> Result<(), String> {
        crate::ring::Ring::all_reduce_mean_as(self, grads, self.grad_dtype())
            .map_err(|e| e.to_string())
    }
}
