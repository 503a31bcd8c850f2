//! nn.TransformerEncoder (pre-norm layers) without its final norm, with the layers' activation
//! arena (resized to each batch's rows) and a hook that hears of each layer's finished
//! gradients.

use std::ops::Range;

use super::encoder::{EncoderActs, EncoderLayerConfig, TransformerEncoderLayer};
use super::lora::LoraAdapter;
use crate::backend::Device;
use crate::ops::SeqLayout;
use crate::params::ParamLayout;
use crate::rng::RngKey;
use crate::{Float, KernelError, Result};

/// `num_layers` pre-norm encoder layers registered as `{prefix}.{i}.…`, run in sequence.
pub struct Stack<M> {
    pub layers: Vec<TransformerEncoderLayer>,
    /// Each layer's parameters' range in the layout (a layer registers them contiguously).
    ranges: Vec<Range<usize>>,
    /// The same layers with dropout 0, for evaluation.
    eval_layers: Vec<TransformerEncoderLayer>,
    pub dim: usize,
    /// The layers' name prefix (`{prefix}.{i}.…`).
    prefix: String,
    arena: Option<Arena<M>>,
}

/// What LoRA adapters to attach ([`Stack::attach_lora`]): peft's `LoraConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names or suffixes (peft's `target_modules`): a module is adapted when its name
    /// equals a target or ends with `.` + target.
    pub targets: Vec<String>,
}

/// The linear layers of an encoder layer that LoRA can adapt, by their PyTorch module name.
pub const LORA_MODULES: [&str; 3] = ["self_attn.out_proj", "linear1", "linear2"];

struct Arena<M> {
    acts: Vec<EncoderActs<M>>,
    ga: M,
    gb: M,
}

/// Dropout keys: an embedding dropout before the stack is "layer" 0, encoder layer i is i + 1
/// (mixed with `key.layer`, so two stacks in one model can differ).
pub fn layer_key(key: RngKey, layer: u64) -> RngKey {
    RngKey::new(
        key.seed,
        key.step,
        key.layer.wrapping_mul(1024).wrapping_add(layer),
    )
}

impl<M> Stack<M> {
    /// Registers `num_layers` layers of `cfg` under `{prefix}.{i}`.
    pub fn new(
        l: &mut ParamLayout,
        prefix: &str,
        num_layers: usize,
        cfg: EncoderLayerConfig,
    ) -> Result<Self> {
        let (dim, heads) = (cfg.d_model, cfg.nhead);
        if dim == 0 || heads == 0 || !dim.is_multiple_of(heads) {
            return Err(KernelError::Shape {
                op: "Stack",
                detail: format!(
                    "hidden size {dim} must be a positive multiple of the number of heads {heads}"
                ),
            });
        }
        let mut layers = Vec::with_capacity(num_layers);
        let mut ranges = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let start = l.total();
            layers.push(TransformerEncoderLayer::new(
                l,
                &format!("{prefix}.{i}"),
                cfg,
            )?);
            ranges.push(start..l.total());
        }
        let eval_layers = layers
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x.cfg.dropout = 0.0;
                x
            })
            .collect();
        Ok(Stack {
            layers,
            ranges,
            eval_layers,
            dim,
            prefix: prefix.to_string(),
            arena: None,
        })
    }

    /// Attaches LoRA adapters to every linear layer whose module name matches one of
    /// `spec.targets`, registering their parameters at the end of `l` (after everything the
    /// model registered so far). Returns the adapted modules' names; a target that matches no
    /// module is an error naming it.
    pub fn attach_lora(
        &mut self,
        l: &mut ParamLayout,
        spec: &LoraSpec,
    ) -> std::result::Result<Vec<String>, String> {
        let matches = |module: &str, target: &str| {
            module == target || module.ends_with(&format!(".{target}"))
        };
        let mut adapted = Vec::new();
        let mut used = vec![false; spec.targets.len()];
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let e = layer.cfg.d_model;
            let f = layer.cfg.dim_feedforward;
            for (m, (in_f, out_f)) in LORA_MODULES.iter().zip([(e, e), (e, f), (f, e)]) {
                let module = format!("{}.{i}.{m}", self.prefix);
                let mut hit = false;
                for (t, u) in spec.targets.iter().zip(used.iter_mut()) {
                    if matches(&module, t) {
                        *u = true;
                        hit = true;
                    }
                }
                if !hit {
                    continue;
                }
                let adapter =
                    LoraAdapter::new(l, &module, in_f, out_f, spec.rank, spec.alpha, spec.dropout);
                let slot = match *m {
                    "self_attn.out_proj" => &mut layer.lora.out_proj,
                    "linear1" => &mut layer.lora.linear1,
                    _ => &mut layer.lora.linear2,
                };
                *slot = Some(adapter);
                adapted.push(module);
            }
            // Under LoRA every base weight is frozen: backward needs only their dx.
            layer.frozen_weights = true;
            self.eval_layers[i].lora = layer.lora.eval();
        }
        let unmatched: Vec<&str> = spec
            .targets
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(t, _)| t.as_str())
            .collect();
        if !unmatched.is_empty() {
            return Err(format!(
                "{} match(es) no linear layer of the encoder; LoRA adapts each layer's {} (e.g. {}.0.linear1)",
                unmatched.join(", "),
                LORA_MODULES.join(", "),
                self.prefix
            ));
        }
        // The activation arena does not depend on adapters, but drop it so nothing stale stays.
        self.arena = None;
        Ok(adapted)
    }

    /// Runs the layers over x [rows, dim] laid out as `layout` says; `key` None = evaluation
    /// (no dropout), else layer i's dropout key is `layer_key(key, i + 1)`. Returns the output
    /// [rows, dim] (valid until the next call).
    pub fn forward<T: Float, D: Device<T, Mem = M>>(
        &mut self,
        dev: &D,
        params: &M,
        x: &M,
        layout: &SeqLayout,
        key: Option<RngKey>,
    ) -> Result<&M> {
        let arena = arena(dev, &mut self.arena, &self.layers, self.dim, layout.rows());
        let layers = if key.is_some() {
            &self.layers
        } else {
            &self.eval_layers
        };
        let k0 = key.unwrap_or(RngKey::new(0, 0, 0));
        for (i, layer) in layers.iter().enumerate() {
            let (done, rest) = arena.acts.split_at_mut(i);
            let input = if i == 0 { x } else { &done[i - 1].out };
            layer.forward(
                dev,
                params,
                &mut rest[0],
                input,
                layout,
                layer_key(k0, i as u64 + 1),
            )?;
        }
        if layers.is_empty() {
            // No layers: the output is the input.
            dev.copy(&mut arena.ga, x);
            return Ok(&arena.ga);
        }
        Ok(&arena.acts[layers.len() - 1].out)
    }

    /// Backward of the last training forward: from dout [rows, dim] returns dx [rows, dim]
    /// (valid, and free to modify, until the next call). As soon as a layer's
    /// backward is done, `ready` gets its parameters' range and their gradients (on a device
    /// whose buffers are not host memory, an empty slice: reading them back would stall the
    /// device after every layer).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float, D: Device<T, Mem = M>>(
        &mut self,
        dev: &D,
        params: &M,
        grads: &mut M,
        dout: &M,
        key: RngKey,
        ready: &mut dyn FnMut(Range<usize>, &[T]),
    ) -> &mut M {
        let rows = dev.len(dout) / self.dim.max(1);
        let arena = arena(dev, &mut self.arena, &self.layers, self.dim, rows);
        if let Some(a) = arena.acts.first() {
            assert_eq!(
                a.rows(),
                rows,
                "backward's gradient does not fit the last forward"
            );
        }
        dev.copy(&mut arena.ga, dout);
        let ranges = &self.ranges;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            layer.backward(
                dev,
                params,
                grads,
                &mut arena.acts[i],
                &arena.ga,
                &mut arena.gb,
                layer_key(key, i as u64 + 1),
            );
            if dev.host_visible() {
                ready(ranges[i].clone(), &dev.read(grads, ranges[i].clone()));
            } else {
                ready(ranges[i].clone(), &[]);
            }
            std::mem::swap(&mut arena.ga, &mut arena.gb);
        }
        &mut arena.ga
    }
}

/// The activation arena, with the gradient buffers sized to `rows` (the layers' buffers are
/// sized by their forward). A free function over the fields, so callers can borrow the layers
/// beside it.
fn arena<'a, T: Float, D: Device<T>>(
    dev: &D,
    slot: &'a mut Option<Arena<D::Mem>>,
    layers: &[TransformerEncoderLayer],
    dim: usize,
    rows: usize,
) -> &'a mut Arena<D::Mem> {
    let a = slot.get_or_insert_with(|| Arena {
        acts: layers.iter().map(|l| l.alloc_acts(dev)).collect(),
        ga: dev.zeros(0),
        gb: dev.zeros(0),
    });
    if dev.len(&a.ga) != rows * dim {
        dev.resize(&mut a.ga, rows * dim);
        dev.resize(&mut a.gb, rows * dim);
    }
    a
}
