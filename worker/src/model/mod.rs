//! The three scModelForge architectures, computing through the kernels' modules and
//! [`Device`] trait only.
//!
//! Every model registers its parameters in one [`ParamLayout`] under PyTorch-style names, so
//! parameters, gradients and Adam moments are single flat buffers. A model turns one
//! [`Batch`] into a loss *sum* and the number of targets it covers ([`LossSum`]), and its
//! backward accumulates `scale · d(loss sum)/dθ` into the gradient buffer. The trainer divides
//! by the global target count afterwards, which makes the gradient of N workers with batch B the
//! gradient of one worker with batch N·B.
//!
//! Each architecture is generic over its device (`Model<D: Device<f32>>`, [`Cpu`] by default)
//! and implements [`Arch`]; [`ScModel`], the trainer's face, follows for every architecture on
//! every device.
//!
//! - [`encoder::TransformerEncoderModel`]: `transformer_encoder` (masked gene prediction).
//! - [`autoregressive::AutoregressiveModel`]: `autoregressive_transformer` (next gene and
//!   expression bin under a causal mask).
//! - [`mae::MaskedAutoencoder`]: `masked_autoencoder` (encoder over visible tokens, decoder
//!   reconstructs masked expression values).

pub mod autoregressive;
pub mod encoder;
pub mod mae;
mod parts;

use configs::scmodelforge::{Architecture, ModelConfig};
use data::Batch;
use kernels::modules::LoraSpec;
use kernels::rng::RngKey;
use kernels::{Cpu, Device, ParamLayout, Precision};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model configuration: {0}")]
    Config(String),
    #[error("batch does not fit the model: {0}")]
    Batch(String),
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// A loss summed over `count` targets (masked genes, next tokens, masked values).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSum {
    pub sum: f64,
    pub count: f64,
}

impl LossSum {
    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

/// What a model needs to know about the data besides its config.
#[derive(Debug, Clone, Copy)]
pub struct DataSpec {
    /// Token ids (special tokens included).
    pub vocab_size: usize,
    /// Batch values are already expression-bin indices (`binned_expression` tokenizer).
    pub values_are_bins: bool,
}

/// Told during backward that a range of the gradient buffer is final for this micro-batch (an
/// encoder layer is done), with those gradients, so their all-reduce can start while backward
/// goes on with the layers below.
pub type GradsReady<'a> = dyn FnMut(std::ops::Range<usize>, &[f32]) + 'a;

/// The trainer's face of a model on device `D` (the CPU by default): parameters and gradients
/// are that device's buffers (`Vec<f32>` on the CPU).
#[allow(clippy::ptr_arg)]
pub trait ScModel<D: Device<f32> = Cpu>: Send {
    fn layout(&self) -> &ParamLayout;

    /// Forward and backward of one micro-batch (dropout on, keyed by `key`): adds
    /// `scale · ∂(loss sum)/∂θ` to `grads` and returns the loss sum and target count.
    /// `ready` hears of each encoder layer's gradient range as soon as backward has finished it.
    fn train_batch(
        &mut self,
        params: &D::Mem,
        grads: &mut D::Mem,
        batch: &Batch,
        key: RngKey,
        scale: f32,
        ready: &mut GradsReady,
    ) -> Result<LossSum>;

    /// Forward only, dropout off.
    fn eval_batch(&mut self, params: &D::Mem, batch: &Batch) -> Result<LossSum>;

    /// Hands the arrays a coming [`train_batch`](ScModel::train_batch) of `batch` will pass to
    /// the device ops (token ids, positions, targets) to [`Device::prefetch`], so a GPU copies
    /// them while the current batch computes. Changes no result; nothing by default.
    fn prefetch(&self, _batch: &Batch) {}

    /// Cell embeddings [batch, dim] (dropout off), pooled as `model.pooling` says.
    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>>;

    /// Width of a cell embedding.
    fn embedding_dim(&self) -> usize;

    /// Pooled cell embeddings [batch, dim] for a task head (fine-tuning): with `key`, dropout
    /// on and what [`pooled_backward`](ScModel::pooled_backward) needs kept; without, as
    /// [`cell_embeddings`](ScModel::cell_embeddings).
    fn pooled_forward(
        &mut self,
        params: &D::Mem,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<Vec<f32>>;

    /// Backward of the last training [`pooled_forward`](ScModel::pooled_forward) from the
    /// embeddings' gradient `dpooled` [batch, dim]: accumulates the backbone's gradients.
    fn pooled_backward(
        &mut self,
        params: &D::Mem,
        grads: &mut D::Mem,
        dpooled: &[f32],
        key: RngKey,
        ready: &mut GradsReady,
    ) -> Result<()>;

    /// Sums of task metrics gathered by [`eval_batch`](ScModel::eval_batch) since the last
    /// call (fine-tuning: per-class counts, sums for Pearson's r), to be added across workers;
    /// empty for pretraining models.
    fn take_eval_sums(&mut self) -> Vec<f64> {
        Vec::new()
    }

    /// Named validation metrics (`val/accuracy`, …) from [`take_eval_sums`](ScModel::take_eval_sums)
    /// added over all workers.
    fn eval_metrics(&self, _sums: &[f64]) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// The task head's range of the parameter buffer (fine-tuning); everything before it is the
    /// backbone. None for pretraining models.
    fn head_range(&self) -> Option<std::ops::Range<usize>> {
        None
    }

    /// Whether backward runs into the backbone (false: frozen, only the head trains).
    fn set_backbone_trainable(&mut self, _trainable: bool) {}

    /// Attaches LoRA adapters to the encoder layers' linear layers `spec` names, registering
    /// their parameters after the model's own; returns the adapted modules' names.
    fn attach_lora(&mut self, _spec: &LoraSpec) -> Result<Vec<String>> {
        Err(no_lora())
    }

    /// With LoRA adapters (fine-tuning): the ranges of the parameter buffer that train besides
    /// the head (the adapters, and biases as `finetune.lora.bias` says); everything else
    /// before the head is frozen. None without adapters.
    fn lora_trainable(&self) -> Option<Vec<std::ops::Range<usize>>> {
        None
    }
}

/// Why a backbone cannot take LoRA adapters.
fn no_lora() -> ModelError {
    ModelError::Config(
        "finetune.lora: LoRA adapters are implemented for model.architecture transformer_encoder only".into(),
    )
}

/// Why a backbone cannot be fine-tuned through its pooled embedding.
fn no_pooled_backward() -> ModelError {
    ModelError::Config(
        "training the backbone through its pooled cell embedding is implemented for model.architecture transformer_encoder only; set finetune.freeze_backbone: true (and freeze_backbone_epochs: 0) to train the head alone".into(),
    )
}

/// What a training forward needs besides the batch: the gradient buffer backward adds into,
/// the dropout key, the loss scale and the hook that hears of each finished encoder layer.
pub struct Train<'a, M> {
    pub grads: &'a mut M,
    pub key: RngKey,
    pub scale: f32,
    pub ready: &'a mut GradsReady<'a>,
}

/// An architecture on the compute device `D`.
pub trait Arch<D: Device<f32>>: Send {
    fn layout(&self) -> &ParamLayout;

    /// Forward of one micro-batch (dropout off) returning the loss sum and target count; with
    /// `train`, dropout on (keyed by `train.key`) and backward: adds `train.scale · ∂(loss
    /// sum)/∂θ` to `train.grads`.
    fn run(
        &mut self,
        params: &D::Mem,
        batch: &Batch,
        train: Option<Train<'_, D::Mem>>,
    ) -> Result<LossSum>;

    /// Cell embeddings [batch, dim] (dropout off), pooled as `model.pooling` says.
    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>>;

    /// Width of a cell embedding.
    fn embedding_dim(&self) -> usize;

    /// See [`ScModel::prefetch`].
    fn prefetch(&self, _batch: &Batch) {}

    /// See [`ScModel::pooled_forward`]. The default computes evaluation embeddings only.
    fn pooled_forward(
        &mut self,
        params: &D::Mem,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<Vec<f32>> {
        match key {
            None => self.cell_embeddings(params, batch),
            Some(_) => Err(no_pooled_backward()),
        }
    }

    /// See [`ScModel::pooled_backward`].
    fn pooled_backward(
        &mut self,
        _params: &D::Mem,
        _grads: &mut D::Mem,
        _dpooled: &[f32],
        _key: RngKey,
        _ready: &mut GradsReady,
    ) -> Result<()> {
        Err(no_pooled_backward())
    }

    /// See [`ScModel::attach_lora`].
    fn attach_lora(&mut self, _spec: &LoraSpec) -> Result<Vec<String>> {
        Err(no_lora())
    }
}

/// The raw bytes of a batch array, as [`Device::prefetch`] takes them.
pub(crate) fn bytes_of<T: bytemuck::Pod>(xs: &[T]) -> &[u8] {
    bytemuck::cast_slice(xs)
}

impl<D: Device<f32>, A: Arch<D>> ScModel<D> for A {
    fn layout(&self) -> &ParamLayout {
        Arch::layout(self)
    }

    fn train_batch(
        &mut self,
        params: &D::Mem,
        grads: &mut D::Mem,
        batch: &Batch,
        key: RngKey,
        scale: f32,
        ready: &mut GradsReady,
    ) -> Result<LossSum> {
        let train = Train {
            grads,
            key,
            scale,
            ready,
        };
        self.run(params, batch, Some(train))
    }

    fn eval_batch(&mut self, params: &D::Mem, batch: &Batch) -> Result<LossSum> {
        self.run(params, batch, None)
    }

    fn prefetch(&self, batch: &Batch) {
        Arch::prefetch(self, batch)
    }

    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>> {
        Arch::cell_embeddings(self, params, batch)
    }

    fn embedding_dim(&self) -> usize {
        Arch::embedding_dim(self)
    }

    fn pooled_forward(
        &mut self,
        params: &D::Mem,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<Vec<f32>> {
        Arch::pooled_forward(self, params, batch, key)
    }

    fn pooled_backward(
        &mut self,
        params: &D::Mem,
        grads: &mut D::Mem,
        dpooled: &[f32],
        key: RngKey,
        ready: &mut GradsReady,
    ) -> Result<()> {
        Arch::pooled_backward(self, params, grads, dpooled, key, ready)
    }

    fn attach_lora(&mut self, spec: &LoraSpec) -> Result<Vec<String>> {
        Arch::attach_lora(self, spec)
    }
}

/// The model `cfg.architecture` names, on the CPU.
pub fn build(cfg: &ModelConfig, spec: DataSpec, precision: Precision) -> Result<Box<dyn ScModel>> {
    build_on(Cpu, cfg, spec, precision)
}

/// The model `cfg.architecture` names, computing on `dev`.
pub fn build_on<D: Device<f32> + 'static>(
    dev: D,
    cfg: &ModelConfig,
    spec: DataSpec,
    precision: Precision,
) -> Result<Box<dyn ScModel<D>>> {
    let vocab = cfg.vocab_size.unwrap_or(spec.vocab_size);
    if vocab < spec.vocab_size {
        return Err(ModelError::Config(format!(
            "model.vocab_size = {vocab} is smaller than the gene vocabulary ({} ids with special tokens)",
            spec.vocab_size
        )));
    }
    let spec = DataSpec {
        vocab_size: vocab,
        ..spec
    };
    Ok(match cfg.architecture {
        Architecture::TransformerEncoder => Box::new(
            encoder::TransformerEncoderModel::with_device(dev, cfg, spec, precision)?,
        ),
        Architecture::AutoregressiveTransformer => Box::new(
            autoregressive::AutoregressiveModel::with_device(dev, cfg, spec, precision)?,
        ),
        Architecture::MaskedAutoencoder => Box::new(mae::MaskedAutoencoder::with_device(
            dev, cfg, spec, precision,
        )?),
    })
}

/// The kernels' precision for `training.precision`.
pub fn precision_of(p: configs::scmodelforge::Precision) -> Precision {
    use configs::scmodelforge::Precision as P;
    match p {
        P::Fp32 => Precision::F32,
        P::Bf16Mixed => Precision::Bf16Mixed,
        P::Fp16Mixed => Precision::F16Mixed,
    }
}
