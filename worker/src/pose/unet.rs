//! The pose model: sleap-nn's UNet with one confidence-map head, built from
//! [`configs::pose_net::UNetPlan`] (which holds the layer list, names and shapes) and computing
//! only through [`ConvDevice`]. Parameters are one flat buffer under sleap-nn's PyTorch names, so
//! a checkpoint's tensors are named as sleap-nn names them.
//!
//! Forward keeps every activation the backward needs: each conv's output after its ReLU (the
//! next layer's input; ReLU's derivative is read off its own output, [y > 0] = [x > 0]), the
//! pooled and upsampled tensors and each decoder block's concatenation.

use configs::pose_net::{ConvPlan, UNetPlan, Upsample};
use kernels::backend::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
use kernels::{Activation, Init, ParamLayout, ParamView, Precision};

/// A conv layer's parameters and shape constants.
#[derive(Debug, Clone)]
struct Conv {
    w: ParamView,
    b: ParamView,
    c_in: usize,
    c_out: usize,
    k: usize,
}

impl Conv {
    fn register(layout: &mut ParamLayout, p: &ConvPlan, transposed: bool) -> Conv {
        // PyTorch's default init: U(±1/√fan_in) for weight and bias, fan_in from the weight's
        // second dimension times the kernel area (c_out·k² for a transposed conv).
        let fan_in = if transposed { p.c_out } else { p.c_in } * p.k * p.k;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let shape = if transposed {
            [p.c_in, p.c_out, p.k, p.k]
        } else {
            [p.c_out, p.c_in, p.k, p.k]
        };
        let w = layout.add(format!("{}.weight", p.name), &shape, Init::Uniform(bound));
        let b = layout.add(format!("{}.bias", p.name), &[p.c_out], Init::Uniform(bound));
        Conv {
            w,
            b,
            c_in: p.c_in,
            c_out: p.c_out,
            k: p.k,
        }
    }

    fn shape(&self, n: usize, h: usize, w: usize) -> Conv2dShape {
        Conv2dShape {
            n,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            k: self.k,
            stride: 1,
            pad: Conv2dShape::same_pad(self.k),
        }
    }

    fn transposed_shape(&self, n: usize, h: usize, w: usize) -> ConvTranspose2dShape {
        ConvTranspose2dShape {
            n,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            k: self.k,
            stride: 2,
            pad: 1,
            output_padding: 1,
        }
    }
}

struct EncoderBlock {
    pool_first: bool,
    convs: Vec<Conv>,
}

struct DecoderBlock {
    transposed: Option<Conv>,
    /// Encoder block whose output is concatenated first.
    skip: Option<usize>,
    refine: Vec<Conv>,
}

pub struct UNetModel {
    plan: UNetPlan,
    layout: ParamLayout,
    encoder: Vec<EncoderBlock>,
    middle: Vec<Conv>,
    decoder: Vec<DecoderBlock>,
    head: Conv,
    prec: Precision,
}

#[derive(Debug, thiserror::Error)]
pub enum UNetError {
    #[error(
        "input {h} x {w} is not a multiple of the max stride {stride} (frames are padded to it)"
    )]
    InputSize { h: usize, w: usize, stride: usize },
    #[error("input holds {got} values; {n} x {c} x {h} x {w} expected")]
    InputLen {
        got: usize,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    },
    #[error("backward before forward")]
    NoForward,
}

impl UNetModel {
    pub fn new(plan: UNetPlan, prec: Precision) -> UNetModel {
        let mut layout = ParamLayout::new();
        // Registration order is sleap-nn's (encoder, decoder, middle, head), as `plan.convs()`.
        let encoder = plan
            .encoder
            .iter()
            .map(|b| EncoderBlock {
                pool_first: b.pool_first,
                convs: b
                    .convs
                    .iter()
                    .map(|c| Conv::register(&mut layout, c, false))
                    .collect(),
            })
            .collect();
        let decoder = plan
            .decoder
            .iter()
            .map(|b| DecoderBlock {
                transposed: match &b.upsample {
                    Upsample::Transposed(t) => Some(Conv::register(&mut layout, t, true)),
                    Upsample::Bilinear => None,
                },
                skip: b.skip.map(|(e, _)| e),
                refine: b
                    .refine
                    .iter()
                    .map(|c| Conv::register(&mut layout, c, false))
                    .collect(),
            })
            .collect();
        let middle = plan
            .middle
            .iter()
            .map(|c| Conv::register(&mut layout, c, false))
            .collect();
        let head = Conv::register(&mut layout, &plan.head.conv, false);
        UNetModel {
            plan,
            layout,
            encoder,
            middle,
            decoder,
            head,
            prec,
        }
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    pub fn plan(&self) -> &UNetPlan {
        &self.plan
    }
    /// Confidence maps per sample.
    pub fn out_channels(&self) -> usize {
        self.head.c_out
    }
    pub fn output_stride(&self) -> usize {
        self.plan.head.output_stride
    }
    pub fn in_channels(&self) -> usize {
        self.plan.in_channels
    }
}

/// One activation tensor [n, c, h, w] on the device.
struct Act<M> {
    mem: M,
    c: usize,
    h: usize,
    w: usize,
}

struct EncSaved<M> {
    /// The block's input after its max-pool (blocks that pool first).
    pooled: Option<Act<M>>,
    /// Each conv's output after ReLU.
    outs: Vec<Act<M>>,
}

struct DecSaved<M> {
    /// Upsampled (after ReLU for a transposed conv).
    up: Act<M>,
    /// [skip feature, up] along channels.
    cat: Option<Act<M>>,
    outs: Vec<Act<M>>,
}

/// Activations of one forward pass.
struct Saved<M> {
    n: usize,
    input: Act<M>,
    enc: Vec<EncSaved<M>>,
    last_pool: Act<M>,
    middle: Vec<Act<M>>,
    dec: Vec<DecSaved<M>>,
    head: Act<M>,
}

impl<M> Saved<M> {
    /// Every buffer, in the order the forward allocates them.
    fn into_buffers(self) -> Vec<M> {
        let mut v = vec![self.input.mem];
        for e in self.enc {
            v.extend(e.pooled.map(|a| a.mem));
            v.extend(e.outs.into_iter().map(|a| a.mem));
        }
        v.push(self.last_pool.mem);
        v.extend(self.middle.into_iter().map(|a| a.mem));
        for d in self.dec {
            v.push(d.up.mem);
            v.extend(d.cat.map(|a| a.mem));
            v.extend(d.outs.into_iter().map(|a| a.mem));
        }
        v.push(self.head.mem);
        v
    }

    /// The feature map the head reads.
    fn feature(&self) -> &Act<M> {
        self.dec
            .last()
            .and_then(|d| d.outs.last())
            .or(self.middle.last())
            .unwrap_or(&self.last_pool)
    }
}

/// Device buffers kept between passes: a request takes a free buffer of exactly that length
/// when there is one, so a repeated batch shape allocates nothing after its first step.
struct Arena<M> {
    free: Vec<(usize, M)>,
}

impl<M: Default> Arena<M> {
    fn give<D: ConvDevice<f32, Mem = M>>(&mut self, dev: &D, buffers: Vec<M>) {
        self.free
            .extend(buffers.into_iter().map(|m| (dev.len(&m), m)));
    }
    fn take<D: ConvDevice<f32, Mem = M>>(&mut self, dev: &D, len: usize) -> M {
        let mut m = match self.free.iter().position(|(l, _)| *l == len) {
            Some(i) => self.free.swap_remove(i).1,
            None => self.free.pop().map(|(_, m)| m).unwrap_or_default(),
        };
        dev.resize(&mut m, len);
        m
    }
}

/// (channels, height, width) of confidence maps.
pub type MapShape = (usize, usize, usize);

/// A model bound to a device, with its activation and gradient buffers.
pub struct UNetRun<'m, D: ConvDevice<f32>> {
    pub model: &'m UNetModel,
    dev: &'m D,
    saved: Option<Saved<D::Mem>>,
    acts: Arena<D::Mem>,
    grads: Arena<D::Mem>,
    scratch: D::Mem,
}

/// conv (+ ReLU) of `x` into `out` (resized), through `scratch` when a ReLU follows.
#[allow(clippy::too_many_arguments)]
fn conv_forward<D: ConvDevice<f32>>(
    dev: &D,
    prec: Precision,
    scratch: &mut D::Mem,
    conv: &Conv,
    x: &Act<D::Mem>,
    n: usize,
    params: &D::Mem,
    relu: bool,
    mut out: D::Mem,
) -> Act<D::Mem> {
    let len = n * conv.c_out * x.h * x.w;
    dev.resize(&mut out, len);
    let s = conv.shape(n, x.h, x.w);
    if relu {
        dev.resize(scratch, len);
        dev.conv2d_forward(prec, scratch, &x.mem, params, conv.w, Some(conv.b), s);
        dev.activation_forward(Activation::Relu, &mut out, scratch);
    } else {
        dev.conv2d_forward(prec, &mut out, &x.mem, params, conv.w, Some(conv.b), s);
    }
    Act {
        mem: out,
        c: conv.c_out,
        h: x.h,
        w: x.w,
    }
}

fn pool_shape<M>(n: usize, x: &Act<M>) -> Pool2dShape {
    // sleap-nn's MaxPool2dWithSamePadding(2, 2); frames are padded to the max stride, so the
    // padding is zero.
    Pool2dShape::same(n, x.c, x.h, x.w, 2, 2)
}

fn pool_forward<D: ConvDevice<f32>>(
    dev: &D,
    x: &Act<D::Mem>,
    n: usize,
    mut out: D::Mem,
) -> Act<D::Mem> {
    let s = pool_shape(n, x);
    dev.resize(&mut out, n * x.c * s.h_out() * s.w_out());
    dev.maxpool2d_forward(&mut out, &x.mem, s);
    Act {
        mem: out,
        c: x.c,
        h: s.h_out(),
        w: s.w_out(),
    }
}

impl<'m, D: ConvDevice<f32>> UNetRun<'m, D> {
    pub fn new(model: &'m UNetModel, dev: &'m D) -> Self {
        UNetRun {
            model,
            dev,
            saved: None,
            acts: Arena { free: Vec::new() },
            grads: Arena { free: Vec::new() },
            scratch: D::Mem::default(),
        }
    }

    /// Confidence maps [n, channels, H/os, W/os] for `input` [n, in_channels, H, W] (0–1 scale).
    /// They stay valid until the next forward.
    pub fn forward(
        &mut self,
        params: &D::Mem,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<&D::Mem, UNetError> {
        let (m, dev, prec) = (self.model, self.dev, self.model.prec);
        let stride = m.plan.stride_multiple();
        if !h.is_multiple_of(stride) || !w.is_multiple_of(stride) {
            return Err(UNetError::InputSize { h, w, stride });
        }
        let c_in = m.plan.in_channels;
        if input.len() != n * c_in * h * w {
            return Err(UNetError::InputLen {
                got: input.len(),
                n,
                c: c_in,
                h,
                w,
            });
        }
        if let Some(old) = self.saved.take() {
            self.acts.give(dev, old.into_buffers());
        }
        let acts = &mut self.acts;
        let scratch = &mut self.scratch;
        let mut input_mem = acts.take(dev, input.len());
        dev.write(&mut input_mem, 0, input);
        let input_act = Act {
            mem: input_mem,
            c: c_in,
            h,
            w,
        };

        let mut enc: Vec<EncSaved<D::Mem>> = Vec::new();
        for b in &m.encoder {
            let pooled = if b.pool_first {
                let prev = enc.last().and_then(|e| e.outs.last()).unwrap_or(&input_act);
                let out = acts.take(dev, n * prev.c * (prev.h / 2) * (prev.w / 2));
                Some(pool_forward(dev, prev, n, out))
            } else {
                None
            };
            let mut outs: Vec<Act<D::Mem>> = Vec::new();
            for conv in &b.convs {
                let x = outs.last().or(pooled.as_ref()).unwrap_or(&input_act);
                let out = acts.take(dev, n * conv.c_out * x.h * x.w);
                let y = conv_forward(dev, prec, scratch, conv, x, n, params, true, out);
                outs.push(y);
            }
            enc.push(EncSaved { pooled, outs });
        }
        let deepest = enc.last().and_then(|e| e.outs.last()).unwrap_or(&input_act);
        let out = acts.take(dev, n * deepest.c * (deepest.h / 2) * (deepest.w / 2));
        let last_pool = pool_forward(dev, deepest, n, out);

        let mut middle: Vec<Act<D::Mem>> = Vec::new();
        for conv in &m.middle {
            let x = middle.last().unwrap_or(&last_pool);
            let out = acts.take(dev, n * conv.c_out * x.h * x.w);
            let y = conv_forward(dev, prec, scratch, conv, x, n, params, true, out);
            middle.push(y);
        }

        let mut dec: Vec<DecSaved<D::Mem>> = Vec::new();
        for b in &m.decoder {
            let x = dec
                .last()
                .and_then(|d| d.outs.last())
                .or(middle.last())
                .unwrap_or(&last_pool);
            let up = match &b.transposed {
                None => {
                    let (h2, w2) = (x.h * 2, x.w * 2);
                    let mut y = acts.take(dev, n * x.c * h2 * w2);
                    dev.upsample_bilinear2d_forward(&mut y, &x.mem, n * x.c, x.h, x.w, h2, w2);
                    Act {
                        mem: y,
                        c: x.c,
                        h: h2,
                        w: w2,
                    }
                }
                Some(t) => {
                    let s = t.transposed_shape(n, x.h, x.w);
                    let len = n * t.c_out * s.h_out() * s.w_out();
                    let mut y = acts.take(dev, len);
                    dev.resize(scratch, len);
                    dev.conv_transpose2d_forward(prec, scratch, &x.mem, params, t.w, Some(t.b), s);
                    dev.activation_forward(Activation::Relu, &mut y, scratch);
                    Act {
                        mem: y,
                        c: t.c_out,
                        h: s.h_out(),
                        w: s.w_out(),
                    }
                }
            };
            let cat = b.skip.map(|e| {
                let f = enc[e].outs.last().expect("an encoder block has convs");
                let mut y = acts.take(dev, n * (f.c + up.c) * up.h * up.w);
                dev.concat_channels(&mut y, &f.mem, f.c, &up.mem, up.c, n, up.h * up.w);
                Act {
                    mem: y,
                    c: f.c + up.c,
                    h: up.h,
                    w: up.w,
                }
            });
            let mut outs: Vec<Act<D::Mem>> = Vec::new();
            for conv in &b.refine {
                let x = outs.last().or(cat.as_ref()).unwrap_or(&up);
                let out = acts.take(dev, n * conv.c_out * x.h * x.w);
                let y = conv_forward(dev, prec, scratch, conv, x, n, params, true, out);
                outs.push(y);
            }
            dec.push(DecSaved { up, cat, outs });
        }
        let mut saved = Saved {
            n,
            input: input_act,
            enc,
            last_pool,
            middle,
            dec,
            head: Act {
                mem: D::Mem::default(),
                c: 0,
                h: 0,
                w: 0,
            },
        };
        let f = saved.feature();
        let head_mem = acts.take(dev, n * m.head.c_out * f.h * f.w);
        saved.head = conv_forward(
            dev,
            prec,
            scratch,
            &m.head,
            saved.feature(),
            n,
            params,
            false,
            head_mem,
        );
        Ok(&self.saved.insert(saved).head.mem)
    }

    /// The device the model runs on.
    pub fn device(&self) -> &'m D {
        self.dev
    }

    /// The confidence maps of the last forward with their (channels, height, width).
    pub fn maps(&self) -> Option<(&D::Mem, MapShape)> {
        self.saved
            .as_ref()
            .map(|s| (&s.head.mem, (s.head.c, s.head.h, s.head.w)))
    }

    /// Output shape (channels, height, width) of the last forward.
    pub fn output_shape(&self) -> Option<(usize, usize, usize)> {
        self.saved.as_ref().map(|s| (s.head.c, s.head.h, s.head.w))
    }

    /// Accumulates d(loss)/dθ into `grads` given `dout` = d(loss)/d(confidence maps) of the
    /// last forward.
    pub fn backward(
        &mut self,
        params: &D::Mem,
        grads: &mut D::Mem,
        dout: &D::Mem,
    ) -> Result<(), UNetError> {
        let (m, dev, prec) = (self.model, self.dev, self.model.prec);
        let s = self.saved.as_ref().ok_or(UNetError::NoForward)?;
        let n = s.n;
        let pool = &mut self.grads;
        let scratch = &mut self.scratch;
        let mut used: Vec<D::Mem> = Vec::new();
        let take = |pool: &mut Arena<D::Mem>, a: &Act<D::Mem>| pool.take(dev, n * a.c * a.h * a.w);

        // conv (+ ReLU) backward: d(out) → d(input) (when wanted), parameter grads accumulated.
        let conv_back = |scratch: &mut D::Mem,
                         grads: &mut D::Mem,
                         conv: &Conv,
                         x: &Act<D::Mem>,
                         out: &Act<D::Mem>,
                         dout: &D::Mem,
                         dx: Option<&mut D::Mem>,
                         relu: bool| {
            let shape = conv.shape(n, x.h, x.w);
            if relu {
                dev.resize(scratch, n * out.c * out.h * out.w);
                dev.activation_backward(Activation::Relu, scratch, dout, &out.mem);
                dev.conv2d_backward(
                    prec,
                    dx,
                    grads,
                    scratch,
                    &x.mem,
                    params,
                    conv.w,
                    Some(conv.b),
                    shape,
                );
            } else {
                dev.conv2d_backward(
                    prec,
                    dx,
                    grads,
                    dout,
                    &x.mem,
                    params,
                    conv.w,
                    Some(conv.b),
                    shape,
                );
            }
        };

        // Head: no activation.
        let feat = s.feature();
        let mut d_cur = take(pool, feat);
        conv_back(
            scratch,
            grads,
            &m.head,
            feat,
            &s.head,
            dout,
            Some(&mut d_cur),
            false,
        );

        // Gradients reaching encoder outputs through skip connections.
        let mut d_skip: Vec<Option<D::Mem>> = (0..m.encoder.len()).map(|_| None).collect();
        for (bi, (b, ds)) in m.decoder.iter().zip(&s.dec).enumerate().rev() {
            for (i, conv) in b.refine.iter().enumerate().rev() {
                let x = if i > 0 {
                    &ds.outs[i - 1]
                } else {
                    ds.cat.as_ref().unwrap_or(&ds.up)
                };
                let mut dx = take(pool, x);
                conv_back(
                    scratch,
                    grads,
                    conv,
                    x,
                    &ds.outs[i],
                    &d_cur,
                    Some(&mut dx),
                    true,
                );
                used.push(std::mem::replace(&mut d_cur, dx));
            }
            if let (Some(e), Some(cat)) = (b.skip, &ds.cat) {
                let f = s.enc[e].outs.last().expect("an encoder block has convs");
                let mut d_f = take(pool, f);
                let mut d_up = take(pool, &ds.up);
                dev.split_channels(
                    &mut d_f,
                    false,
                    &mut d_up,
                    false,
                    &d_cur,
                    f.c,
                    ds.up.c,
                    n,
                    cat.h * cat.w,
                );
                d_skip[e] = Some(d_f);
                used.push(std::mem::replace(&mut d_cur, d_up));
            }
            // Below the upsampling: the previous block's output (or the middle's, or the pool's).
            let x = match bi {
                0 => s.middle.last().unwrap_or(&s.last_pool),
                _ => s.dec[bi - 1]
                    .outs
                    .last()
                    .expect("a decoder block has convs"),
            };
            let mut dx = take(pool, x);
            match &b.transposed {
                None => dev.upsample_bilinear2d_backward(
                    &mut dx,
                    &d_cur,
                    n * x.c,
                    x.h,
                    x.w,
                    ds.up.h,
                    ds.up.w,
                ),
                Some(t) => {
                    dev.resize(scratch, n * ds.up.c * ds.up.h * ds.up.w);
                    dev.activation_backward(Activation::Relu, scratch, &d_cur, &ds.up.mem);
                    let shape = t.transposed_shape(n, x.h, x.w);
                    dev.conv_transpose2d_backward(
                        prec,
                        Some(&mut dx),
                        grads,
                        scratch,
                        &x.mem,
                        params,
                        t.w,
                        Some(t.b),
                        shape,
                    );
                }
            }
            used.push(std::mem::replace(&mut d_cur, dx));
        }
        for (i, conv) in m.middle.iter().enumerate().rev() {
            let x = if i > 0 {
                &s.middle[i - 1]
            } else {
                &s.last_pool
            };
            let mut dx = take(pool, x);
            conv_back(
                scratch,
                grads,
                conv,
                x,
                &s.middle[i],
                &d_cur,
                Some(&mut dx),
                true,
            );
            used.push(std::mem::replace(&mut d_cur, dx));
        }
        // The last pool, back to the deepest encoder output.
        {
            let deepest = s
                .enc
                .last()
                .and_then(|e| e.outs.last())
                .expect("an encoder block");
            let mut dx = take(pool, deepest);
            dev.maxpool2d_backward(&mut dx, &d_cur, &deepest.mem, pool_shape(n, deepest));
            used.push(std::mem::replace(&mut d_cur, dx));
        }
        for (bi, (b, es)) in m.encoder.iter().zip(&s.enc).enumerate().rev() {
            if let Some(d) = d_skip[bi].take() {
                dev.add_inplace(&mut d_cur, &d);
                used.push(d);
            }
            for (i, conv) in b.convs.iter().enumerate().rev() {
                let x = if i > 0 {
                    &es.outs[i - 1]
                } else {
                    es.pooled.as_ref().unwrap_or(&s.input)
                };
                let first = bi == 0 && i == 0;
                if first {
                    // Nothing below the input needs a gradient.
                    conv_back(scratch, grads, conv, x, &es.outs[i], &d_cur, None, true);
                } else {
                    let mut dx = take(pool, x);
                    conv_back(
                        scratch,
                        grads,
                        conv,
                        x,
                        &es.outs[i],
                        &d_cur,
                        Some(&mut dx),
                        true,
                    );
                    used.push(std::mem::replace(&mut d_cur, dx));
                }
            }
            if es.pooled.is_some() {
                let prev = s.enc[bi - 1]
                    .outs
                    .last()
                    .expect("an encoder block has convs");
                let mut dx = take(pool, prev);
                dev.maxpool2d_backward(&mut dx, &d_cur, &prev.mem, pool_shape(n, prev));
                used.push(std::mem::replace(&mut d_cur, dx));
            }
        }
        used.push(d_cur);
        self.grads.give(dev, used);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use configs::SleapNnConfig;
    use kernels::Cpu;

    /// A tiny UNet: filters 2, rate 1.5, max stride 4, `up_interpolate` as given, 2 nodes.
    fn tiny(up_interpolate: bool, head_stride: usize) -> UNetModel {
        let yaml = format!(
            "data_config: {{train_labels_path: [x.slp]}}\n\
             model_config:\n  backbone_config:\n    unet: {{filters: 2, filters_rate: 1.5, max_stride: 4, \
             up_interpolate: {up_interpolate}}}\n  head_configs:\n    single_instance:\n      \
             confmaps: {{part_names: [a, b], sigma: 1.0, output_stride: {head_stride}}}\n"
        );
        let cfg: SleapNnConfig = configs::Sources::from_str(&yaml, "tiny.yaml")
            .and_then(|s| s.load_as())
            .unwrap();
        UNetModel::new(UNetPlan::from_config(&cfg, 2).unwrap(), Precision::F32)
    }

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let k = kernels::rng::RngKey::new(seed, 3, 1);
        (0..n)
            .map(|i| k.bits(i as u64) as f32 / 2_147_483_648.0 - 1.0)
            .collect()
    }

    /// loss = Σ r·f(x; θ) for a fixed random r; its gradient against central differences in
    /// the parameters (f32 model, so a loose tolerance on a well-scaled loss).
    fn check_gradients(model: &UNetModel) {
        let dev = Cpu;
        let (n, h, w) = (2, 8, 8);
        let input = rand(n * h * w, 1);
        let mut params = model.layout().init_host::<f32>(5);
        let mut run = UNetRun::new(model, &dev);
        let out_len = run.forward(&params, &input, n, h, w).unwrap().len();
        let r = rand(out_len, 2);
        let loss = |run: &mut UNetRun<Cpu>, p: &Vec<f32>| -> f64 {
            let y = run.forward(p, &input, n, h, w).unwrap();
            y.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let mut grads = vec![0.0f32; params.len()];
        loss(&mut run, &params);
        run.backward(&params, &mut grads, &r).unwrap();
        // Every parameter tensor: its first and a middle element.
        let mut checked = 0;
        for e in model.layout().entries() {
            for i in [e.offset, e.offset + e.len() / 2] {
                let h = 1e-2f32;
                let o = params[i];
                params[i] = o + h;
                let lp = loss(&mut run, &params);
                params[i] = o - h;
                let lm = loss(&mut run, &params);
                params[i] = o;
                let num = (lp - lm) / (2.0 * h as f64);
                let ana = grads[i] as f64;
                assert!(
                    (num - ana).abs() <= 2e-2 * num.abs().max(ana.abs()).max(0.05),
                    "{}[{}]: analytic {ana} vs numeric {num}",
                    e.name,
                    i - e.offset
                );
                checked += 1;
            }
        }
        assert!(checked >= 20);
    }

    #[test]
    fn gradients_match_finite_differences_with_bilinear_upsampling() {
        check_gradients(&tiny(true, 1));
    }

    #[test]
    fn gradients_match_finite_differences_with_transposed_convs() {
        check_gradients(&tiny(false, 1));
    }

    #[test]
    fn a_coarser_head_stride_has_fewer_decoder_blocks_and_a_smaller_output() {
        let m = tiny(true, 2);
        let dev = Cpu;
        let params = m.layout().init_host::<f32>(1);
        let mut run = UNetRun::new(&m, &dev);
        run.forward(&params, &[0.5; 8 * 8], 1, 8, 8).unwrap();
        assert_eq!(run.output_shape(), Some((2, 4, 4)));
        assert!(matches!(
            run.forward(&params, &[0.5; 6 * 8], 1, 6, 8),
            Err(UNetError::InputSize { .. })
        ));
    }
}
