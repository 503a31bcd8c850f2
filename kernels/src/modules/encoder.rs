//! nn.TransformerEncoderLayer (pre-norm) and its activation arena.

use super::attention::MultiheadAttention;
use super::join;
use super::linear::Linear;
use super::lora::LoraAdapter;
use super::norm::LayerNorm;
use crate::backend::Device;
use crate::ops::attention::AttnOpts;
use crate::ops::{Activation, SeqLayout};
use crate::params::ParamLayout;
use crate::rng::RngKey;
use crate::{Float, KernelError, Precision, Result};

/// nn.TransformerEncoderLayer hyper-parameters (norm_first=True, batch_first=True).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderLayerConfig {
    pub d_model: usize,
    pub nhead: usize,
    pub dim_feedforward: usize,
    pub dropout: f64,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    /// Causal self-attention mask (PyTorch's `is_causal=True`).
    pub causal: bool,
    pub precision: Precision,
}

/// Pre-norm encoder layer, PyTorch's `norm_first=True`:
///   x₁ = x + dropout1(SA(norm1(x)))
///   y  = x₁ + dropout2(linear2(dropout(act(linear1(norm2(x₁))))))
/// with SA's own dropout on the attention weights.
#[derive(Clone, Debug)]
pub struct TransformerEncoderLayer {
    pub cfg: EncoderLayerConfig,
    pub norm1: LayerNorm,
    pub self_attn: MultiheadAttention,
    pub norm2: LayerNorm,
    pub linear1: Linear,
    pub linear2: Linear,
    /// LoRA adapters on the layer's linear layers (none unless a fine-tuning run attaches them).
    pub lora: LayerLora,
    /// The linear layers' weights do not train (LoRA): backward skips their dW products.
    pub frozen_weights: bool,
}

/// The LoRA adapters of one encoder layer, by the module they adapt.
#[derive(Clone, Debug, Default)]
pub struct LayerLora {
    pub out_proj: Option<LoraAdapter>,
    pub linear1: Option<LoraAdapter>,
    pub linear2: Option<LoraAdapter>,
}

impl LayerLora {
    /// The adapters without dropout (evaluation).
    pub fn eval(&self) -> Self {
        LayerLora {
            out_proj: self.out_proj.as_ref().map(LoraAdapter::eval),
            linear1: self.linear1.as_ref().map(LoraAdapter::eval),
            linear2: self.linear2.as_ref().map(LoraAdapter::eval),
        }
    }
}

/// Saved activations and backward scratch of one encoder layer, sized by the rows of the last
/// forward's layout (resized, not reallocated, when the next batch has another size).
pub struct EncoderActs<M> {
    /// The last forward's layout (backward uses it again).
    pub layout: SeqLayout,
    x: M,
    h1: M,
    mean1: M,
    rstd1: M,
    qkv: M,
    attn: M,
    lse: M,
    x1: M,
    h2: M,
    mean2: M,
    rstd2: M,
    ff1: M,
    ffa: M,
    /// The layer output after forward.
    pub out: M,
    s_e1: M,
    s_e2: M,
    dx1: M,
    s_f1: M,
    s_f2: M,
    s_qkv: M,
}

impl<M> EncoderActs<M> {
    pub fn rows(&self) -> usize {
        self.layout.rows()
    }

    /// Every buffer with its per-row width (in units of d_model, ffn or heads).
    fn buffers(&mut self) -> [(&mut M, Width); 20] {
        use Width::*;
        [
            (&mut self.x, E),
            (&mut self.h1, E),
            (&mut self.mean1, One),
            (&mut self.rstd1, One),
            (&mut self.qkv, E3),
            (&mut self.attn, E),
            (&mut self.lse, Heads),
            (&mut self.x1, E),
            (&mut self.h2, E),
            (&mut self.mean2, One),
            (&mut self.rstd2, One),
            (&mut self.ff1, F),
            (&mut self.ffa, F),
            (&mut self.out, E),
            (&mut self.s_e1, E),
            (&mut self.s_e2, E),
            (&mut self.dx1, E),
            (&mut self.s_f1, F),
            (&mut self.s_f2, F),
            (&mut self.s_qkv, E3),
        ]
    }
}

/// Per-row width of an activation buffer.
#[derive(Clone, Copy)]
enum Width {
    One,
    E,
    E3,
    F,
    Heads,
}

// Dropout sites inside a layer, mixed into the layer's RNG key.
const SITE_ATTN: u64 = 0;
const SITE_DROPOUT1: u64 = 1;
const SITE_FF: u64 = 2;
const SITE_DROPOUT2: u64 = 3;
const SITE_LORA_OUT_PROJ: u64 = 4;
const SITE_LORA_LINEAR1: u64 = 5;
const SITE_LORA_LINEAR2: u64 = 6;

impl TransformerEncoderLayer {
    /// Registers the layer's parameters under `prefix` (e.g. "encoder.layers.0").
    pub fn new(l: &mut ParamLayout, prefix: &str, cfg: EncoderLayerConfig) -> Result<Self> {
        let (e, f) = (cfg.d_model, cfg.dim_feedforward);
        if e == 0 || f == 0 {
            return Err(KernelError::Shape {
                op: "TransformerEncoderLayer",
                detail: format!("d_model {e} and dim_feedforward {f} must be positive"),
            });
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(KernelError::Shape {
                op: "TransformerEncoderLayer",
                detail: format!("dropout {} outside [0, 1)", cfg.dropout),
            });
        }
        // Registration order follows PyTorch's named_parameters() for this module.
        let self_attn = MultiheadAttention::new(l, &join(prefix, "self_attn"), e, cfg.nhead)?;
        let linear1 = Linear::new(l, &join(prefix, "linear1"), e, f, true);
        let linear2 = Linear::new(l, &join(prefix, "linear2"), f, e, true);
        let norm1 = LayerNorm::new(l, &join(prefix, "norm1"), e, cfg.layer_norm_eps);
        let norm2 = LayerNorm::new(l, &join(prefix, "norm2"), e, cfg.layer_norm_eps);
        Ok(Self {
            cfg,
            norm1,
            self_attn,
            norm2,
            linear1,
            linear2,
            lora: LayerLora::default(),
            frozen_weights: false,
        })
    }

    /// One linear layer's backward: dx always; dW unless the weights are frozen.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward<T: Float, D: Device<T>>(
        &self,
        lin: &Linear,
        dev: &D,
        params: &D::Mem,
        grads: &mut D::Mem,
        x: &D::Mem,
        dy: &D::Mem,
        dx: &mut D::Mem,
        n: usize,
    ) {
        let prec = self.cfg.precision;
        if self.frozen_weights {
            lin.backward_frozen_weight(dev, prec, params, grads, x, dy, dx, n);
        } else {
            lin.backward(dev, prec, params, grads, x, dy, Some(dx), false, n);
        }
    }

    /// The self-attention's options for a layout and the layer's dropout key.
    fn attn_opts<'a>(&self, layout: &'a SeqLayout, key: RngKey) -> AttnOpts<'a> {
        let (key_pad, packed) = layout.masks();
        AttnOpts {
            key_pad,
            packed,
            causal: self.cfg.causal,
            dropout: self.cfg.dropout,
            key: key.site(SITE_ATTN),
            prec: self.cfg.precision,
        }
    }

    /// An activation arena (empty until the first forward sizes it); reuse it for every batch.
    pub fn alloc_acts<T: Float, D: Device<T>>(&self, dev: &D) -> EncoderActs<D::Mem> {
        let z = || dev.zeros(0);
        EncoderActs {
            layout: SeqLayout::packed([]),
            x: z(),
            h1: z(),
            mean1: z(),
            rstd1: z(),
            qkv: z(),
            attn: z(),
            lse: z(),
            x1: z(),
            h2: z(),
            mean2: z(),
            rstd2: z(),
            ff1: z(),
            ffa: z(),
            out: z(),
            s_e1: z(),
            s_e2: z(),
            dx1: z(),
            s_f1: z(),
            s_f2: z(),
            s_qkv: z(),
        }
    }

    /// Sizes `acts` for `layout` (keeping the buffers' memory when it shrinks).
    fn fit_acts<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        acts: &mut EncoderActs<D::Mem>,
        layout: &SeqLayout,
    ) {
        let n = layout.rows();
        let (e, f, h) = (self.cfg.d_model, self.cfg.dim_feedforward, self.cfg.nhead);
        if acts.rows() != n {
            for (buf, w) in acts.buffers() {
                let per_row = match w {
                    Width::One => 1,
                    Width::E => e,
                    Width::E3 => 3 * e,
                    Width::F => f,
                    Width::Heads => h,
                };
                dev.resize(buf, n * per_row);
            }
        }
        acts.layout = layout.clone();
    }

    /// Forward over x [rows, E] laid out as `layout` says (`acts` is sized to it). `key`
    /// identifies (seed, step, layer) for the dropout masks. Output in `acts.out`.
    pub fn forward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        params: &D::Mem,
        acts: &mut EncoderActs<D::Mem>,
        x: &D::Mem,
        layout: &SeqLayout,
        key: RngKey,
    ) -> Result<()> {
        let n = layout.rows();
        let (e, p, prec) = (self.cfg.d_model, self.cfg.dropout, self.cfg.precision);
        if dev.len(x) != n * e {
            return Err(KernelError::Shape {
                op: "TransformerEncoderLayer",
                detail: format!("input has {} values, expected {n}x{e}", dev.len(x)),
            });
        }
        if let SeqLayout::Padded {
            key_pad: Some(m), ..
        } = layout
        {
            if m.len() != n {
                return Err(KernelError::Shape {
                    op: "TransformerEncoderLayer",
                    detail: format!("key padding mask has {} entries, expected {n}", m.len()),
                });
            }
        }
        self.fit_acts(dev, acts, layout);
        let a = acts;
        dev.copy(&mut a.x, x);
        let (n1, n2) = (&self.norm1, &self.norm2);
        n1.forward(dev, params, &a.x, &mut a.h1, &mut a.mean1, &mut a.rstd1, n);
        let sa = &self.self_attn;
        sa.in_proj.forward(dev, prec, params, &a.h1, &mut a.qkv, n);
        let opts = self.attn_opts(&a.layout, key);
        let s = a.layout.attn_shape(self.cfg.nhead, e / self.cfg.nhead);
        dev.attention_forward(&mut a.attn, &mut a.lse, &a.qkv, s, &opts);
        sa.out_proj
            .forward(dev, prec, params, &a.attn, &mut a.s_e1, n);
        if let Some(l) = &self.lora.out_proj {
            let k = key.site(SITE_LORA_OUT_PROJ);
            l.forward(dev, prec, params, &a.attn, &mut a.s_e1, n, k);
        }
        dev.dropout_forward(&mut a.s_e1, p, key.site(SITE_DROPOUT1));
        dev.residual_forward(&mut a.x1, &a.x, &a.s_e1);
        n2.forward(dev, params, &a.x1, &mut a.h2, &mut a.mean2, &mut a.rstd2, n);
        self.linear1
            .forward(dev, prec, params, &a.h2, &mut a.ff1, n);
        if let Some(l) = &self.lora.linear1 {
            let k = key.site(SITE_LORA_LINEAR1);
            l.forward(dev, prec, params, &a.h2, &mut a.ff1, n, k);
        }
        dev.activation_forward(self.cfg.activation, &mut a.ffa, &a.ff1);
        dev.dropout_forward(&mut a.ffa, p, key.site(SITE_FF));
        self.linear2
            .forward(dev, prec, params, &a.ffa, &mut a.s_e1, n);
        if let Some(l) = &self.lora.linear2 {
            let k = key.site(SITE_LORA_LINEAR2);
            l.forward(dev, prec, params, &a.ffa, &mut a.s_e1, n, k);
        }
        dev.dropout_forward(&mut a.s_e1, p, key.site(SITE_DROPOUT2));
        dev.residual_forward(&mut a.out, &a.x1, &a.s_e1);
        Ok(())
    }

    /// Backward of the last forward on `acts`: accumulates parameter gradients into `grads`
    /// and writes dx [rows, E]. `dout` is consumed as scratch-free input (not modified).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        params: &D::Mem,
        grads: &mut D::Mem,
        acts: &mut EncoderActs<D::Mem>,
        dout: &D::Mem,
        dx: &mut D::Mem,
        key: RngKey,
    ) {
        let n = acts.rows();
        let (p, prec) = (self.cfg.dropout, self.cfg.precision);
        let a = acts;
        let (n1, n2, sa) = (&self.norm1, &self.norm2, &self.self_attn);
        // Feed-forward branch: y = x₁ + drop2(linear2(drop(act(linear1(norm2(x₁)))))).
        dev.copy(&mut a.s_e1, dout);
        dev.dropout_backward(&mut a.s_e1, p, key.site(SITE_DROPOUT2));
        self.linear_backward(
            &self.linear2,
            dev,
            params,
            grads,
            &a.ffa,
            &a.s_e1,
            &mut a.s_f1,
            n,
        );
        if let Some(l) = &self.lora.linear2 {
            let k = key.site(SITE_LORA_LINEAR2);
            l.backward(dev, prec, params, grads, &a.ffa, &a.s_e1, &mut a.s_f1, n, k);
        }
        dev.dropout_backward(&mut a.s_f1, p, key.site(SITE_FF));
        dev.activation_backward(self.cfg.activation, &mut a.s_f2, &a.s_f1, &a.ff1);
        self.linear_backward(
            &self.linear1,
            dev,
            params,
            grads,
            &a.h2,
            &a.s_f2,
            &mut a.s_e2,
            n,
        );
        if let Some(l) = &self.lora.linear1 {
            let k = key.site(SITE_LORA_LINEAR1);
            l.backward(dev, prec, params, grads, &a.h2, &a.s_f2, &mut a.s_e2, n, k);
        }
        dev.copy(&mut a.dx1, dout);
        let (x1, mean2, rstd2) = (&a.x1, &a.mean2, &a.rstd2);
        n2.backward(
            dev, params, grads, x1, mean2, rstd2, &a.s_e2, &mut a.dx1, true, n,
        );
        // Attention branch: x₁ = x + drop1(out_proj(attn(in_proj(norm1(x))))).
        dev.copy(&mut a.s_e1, &a.dx1);
        dev.dropout_backward(&mut a.s_e1, p, key.site(SITE_DROPOUT1));
        self.linear_backward(
            &sa.out_proj,
            dev,
            params,
            grads,
            &a.attn,
            &a.s_e1,
            &mut a.s_e2,
            n,
        );
        if let Some(l) = &self.lora.out_proj {
            let k = key.site(SITE_LORA_OUT_PROJ);
            l.backward(
                dev,
                prec,
                params,
                grads,
                &a.attn,
                &a.s_e1,
                &mut a.s_e2,
                n,
                k,
            );
        }
        let opts = self.attn_opts(&a.layout, key);
        let s = a
            .layout
            .attn_shape(self.cfg.nhead, self.cfg.d_model / self.cfg.nhead);
        dev.attention_backward(&mut a.s_qkv, &a.s_e2, &a.attn, &a.lse, &a.qkv, s, &opts);
        self.linear_backward(
            &sa.in_proj,
            dev,
            params,
            grads,
            &a.h1,
            &a.s_qkv,
            &mut a.s_e2,
            n,
        );
        dev.copy(dx, &a.dx1);
        n1.backward(
            dev, params, grads, &a.x, &a.mean1, &a.rstd1, &a.s_e2, dx, true, n,
        );
    }
}
