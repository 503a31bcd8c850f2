//! The network a sleap-nn config describes, as plain data: every convolution of the UNet
//! backbone and the confidence-map head, with sleap-nn's parameter names and shapes, the stride
//! each block works at and where the skip connections go. The worker builds its model from this
//! plan and `coordinator model summary` prints it, so both agree with each other and — tested
//! against the parameters sleap-nn 0.3.5 itself builds — with sleap-nn.
//!
//! The UNet as sleap-nn builds it (`sleap_nn.architectures.unet.UNet.from_config`):
//! `down_blocks = log2(max_stride)` encoder blocks; block 0 is `convs_per_block` 3×3 convs + ReLU
//! at full resolution, each further block max-pools by 2 first; a last pool halves once more.
//! The middle block (when on) is `convs_per_block − 1` "expand" convs to the next filter count and
//! one "contract" conv. `up_blocks = log2(max_stride / output_stride)` decoder blocks each upsample
//! by 2 (bilinear, or a 3×3 transposed conv + ReLU), concatenate the encoder feature of the same
//! stride *before* the upsampled tensor, and refine with two convs + ReLU (sleap-nn's decoder
//! keeps its default of two whatever `convs_per_block` says). Block `i`
//! of the encoder has `filters · filters_rate^i` channels (truncated to an integer), decoder block
//! `i` has `filters · filters_rate^max(0, down_blocks − 1 − i)`. The head is a 1×1 conv.

use crate::sleap::{HeadKind, SleapNnConfig};

/// A 2-D convolution: `name.weight` `[c_out, c_in, k, k]` and `name.bias` `[c_out]` (for a
/// transposed conv the weight is `[c_in, c_out, k, k]`, as in PyTorch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvPlan {
    pub name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
}

impl ConvPlan {
    pub fn params(&self) -> usize {
        self.c_out * self.c_in * self.k * self.k + self.c_out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderBlock {
    /// Max-pool by 2 before the convs (every block but the first).
    pub pool_first: bool,
    pub convs: Vec<ConvPlan>,
    /// Stride of the block's output relative to the input image.
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsample {
    /// `nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)`.
    Bilinear,
    /// `nn.ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)` + ReLU.
    Transposed(ConvPlan),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderBlock {
    pub upsample: Upsample,
    /// The encoder block whose output is concatenated (first) with the upsampled tensor, and its
    /// channels.
    pub skip: Option<(usize, usize)>,
    pub refine: Vec<ConvPlan>,
    /// Stride of the block's output.
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadPlan {
    pub kind: HeadKind,
    /// The 1×1 conv producing one confidence map per channel.
    pub conv: ConvPlan,
    pub output_stride: usize,
}

/// A UNet with one confidence-map head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UNetPlan {
    pub in_channels: usize,
    pub encoder: Vec<EncoderBlock>,
    /// Stride after the encoder's last pool (= max_stride).
    pub max_stride: usize,
    pub middle: Vec<ConvPlan>,
    pub decoder: Vec<DecoderBlock>,
    pub head: HeadPlan,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// The dotted config key at fault.
    pub field: String,
    pub message: String,
}

/// Refining convs per decoder block in sleap-nn 0.3.5, whatever `convs_per_block` says.
const DECODER_REFINE_CONVS: usize = 2;

fn err(field: &str, message: impl Into<String>) -> PlanError {
    PlanError {
        field: field.into(),
        message: message.into(),
    }
}

fn log2_exact(v: usize, field: &str) -> Result<usize, PlanError> {
    if v == 0 || !v.is_power_of_two() {
        return Err(err(field, format!("{v} is not a power of two")));
    }
    Ok(v.trailing_zeros() as usize)
}

/// `int(filters * filters_rate ** i)` as Python computes it.
fn filters_at(filters: usize, rate: f64, i: usize) -> usize {
    (filters as f64 * rate.powi(i as i32)) as usize
}

impl UNetPlan {
    /// The plan of a config's UNet and its head, after sleap-nn's stride resolution
    /// (`SleapNnConfig::resolved`). `channels`: the head's confidence maps (the number of
    /// nodes for single_instance / centered_instance, 1 for centroid).
    pub fn from_config(cfg: &SleapNnConfig, channels: usize) -> Result<UNetPlan, PlanError> {
        let cfg = cfg.resolved();
        let u = cfg
            .model_config
            .backbone_config
            .unet
            .as_ref()
            .ok_or_else(|| {
                err(
                    "model_config.backbone_config",
                    "anvil trains the unet backbone so far; convnext, swint and pretrained \
                     backbones are not available yet",
                )
            })?;
        let base = "model_config.backbone_config.unet";
        if u.stem_stride.is_some() {
            return Err(err(
                &format!("{base}.stem_stride"),
                "stem blocks do not run in sleap-nn 0.3.5 (its decoder is built for other \
                 channels than the stem gives) and anvil does not build them; use null",
            ));
        }
        if u.stacks != 1 {
            return Err(err(
                &format!("{base}.stacks"),
                format!(
                    "{} stacks: anvil builds a single stack (1) so far",
                    u.stacks
                ),
            ));
        }
        if u.convs_per_block == 0 {
            return Err(err(
                &format!("{base}.convs_per_block"),
                "must be at least 1",
            ));
        }
        if u.kernel_size % 2 == 0 {
            return Err(err(
                &format!("{base}.kernel_size"),
                format!("{}: anvil supports odd kernel sizes", u.kernel_size),
            ));
        }
        let kinds = cfg.model_config.head_configs.kinds();
        let kind = match kinds.as_slice() {
            [k @ (HeadKind::SingleInstance | HeadKind::Centroid | HeadKind::CenteredInstance)] => {
                *k
            }
            [k] => {
                return Err(err(
                    &format!("model_config.head_configs.{k}"),
                    "anvil trains single_instance, centroid and centered_instance heads so far",
                ))
            }
            _ => {
                return Err(err(
                    "model_config.head_configs",
                    "exactly one head must be set",
                ))
            }
        };
        let out_stride = u.output_stride;
        let max_stride = u.max_stride;
        let down_blocks = log2_exact(max_stride, &format!("{base}.max_stride"))?;
        let os_log = log2_exact(out_stride, &format!("{base}.output_stride"))?;
        if out_stride > max_stride {
            return Err(err(
                &format!("{base}.output_stride"),
                format!("{out_stride} is coarser than max_stride {max_stride}"),
            ));
        }
        let up_blocks = down_blocks - os_log;
        let (f, rate, k, cpb) = (u.filters, u.filters_rate, u.kernel_size, u.convs_per_block);
        if !u.middle_block {
            // sleap-nn 0.3.5 builds its decoder for the middle block's channels either way, so
            // its forward fails without one; there is no sleap-nn network to match.
            return Err(err(
                &format!("{base}.middle_block"),
                "false does not run in sleap-nn 0.3.5 (its decoder expects the middle block's \
                 channels); use true",
            ));
        }
        if cpb == 1 {
            // sleap-nn 0.3.5 cannot build this either (its UNet raises UnboundLocalError).
            return Err(err(
                &format!("{base}.convs_per_block"),
                "1 does not build in sleap-nn 0.3.5 (its UNet raises UnboundLocalError); use 2 \
                 or more",
            ));
        }

        let conv = |name: String, c_in: usize, c_out: usize, k: usize| ConvPlan {
            name,
            c_in,
            c_out,
            k,
        };
        let mut encoder = Vec::new();
        let mut c_prev = u.in_channels;
        for b in 0..down_blocks {
            let c = filters_at(f, rate, b);
            let prefix = format!("backbone.encoders.0.encoder_stack.{b}.blocks.stack0_enc{b}");
            let convs = (0..cpb)
                .map(|i| {
                    conv(
                        format!("{prefix}_conv{i}"),
                        if i == 0 { c_prev } else { c },
                        c,
                        k,
                    )
                })
                .collect();
            encoder.push(EncoderBlock {
                pool_first: b > 0,
                convs,
                stride: 1 << b,
            });
            c_prev = c;
        }
        let last_filters = c_prev;
        // The middle block: one "expand" block of convs_per_block − 1 convs to the next filter
        // count, one "contract" conv; numbered on after the encoder's last pool
        // (`enc{down_blocks}`).
        let c = filters_at(f, rate, down_blocks);
        let expand_num = down_blocks + 1;
        let mut middle: Vec<ConvPlan> = (0..cpb - 1)
            .map(|i| {
                conv(
                    format!("backbone.middle_blocks.0.blocks.stack0_enc{expand_num}_middle_expand_conv{i}"),
                    if i == 0 { last_filters } else { c },
                    c,
                    k,
                )
            })
            .collect();
        middle.push(conv(
            format!(
                "backbone.middle_blocks.1.blocks.stack0_enc{}_middle_contract_conv0",
                expand_num + 1
            ),
            c,
            c,
            k,
        ));
        let mut x_channels = c;

        let mut decoder = Vec::new();
        let mut stride = max_stride;
        for b in 0..up_blocks {
            let c = filters_at(
                f,
                rate,
                (down_blocks as isize - 1 - b as isize).max(0) as usize,
            );
            let next = stride / 2;
            let prefix = format!(
                "backbone.decoders.0.decoder_stack.{b}.blocks.stack0_dec{b}_s{stride}_to_s{next}"
            );
            let skip_block = down_blocks.checked_sub(1 + b);
            let skip = skip_block.map(|e| (e, encoder[e].convs.last().map_or(0, |c| c.c_out)));
            let upsample = if u.up_interpolate {
                Upsample::Bilinear
            } else {
                Upsample::Transposed(conv(format!("{prefix}_trans_conv"), x_channels, c, 3))
            };
            let up_channels = if u.up_interpolate { x_channels } else { c };
            let first_in = up_channels + skip.map_or(0, |s| s.1);
            // sleap-nn's UNet does not pass convs_per_block to its Decoder, whose default is 2.
            let refine = (0..DECODER_REFINE_CONVS)
                .map(|i| {
                    conv(
                        format!("{prefix}_refine_conv{i}"),
                        if i == 0 { first_in } else { c },
                        c,
                        k,
                    )
                })
                .collect();
            decoder.push(DecoderBlock {
                upsample,
                skip,
                refine,
                stride: next,
            });
            x_channels = c;
            stride = next;
        }
        let head_name = match kind {
            HeadKind::SingleInstance => "SingleInstanceConfmapsHead",
            HeadKind::Centroid => "CentroidConfmapsHead",
            _ => "CenteredInstanceConfmapsHead",
        };
        let head = HeadPlan {
            kind,
            conv: conv(
                format!("head_layers.0.{head_name}.0"),
                x_channels,
                channels,
                1,
            ),
            output_stride: out_stride,
        };
        Ok(UNetPlan {
            in_channels: u.in_channels,
            encoder,
            max_stride,
            middle,
            decoder,
            head,
        })
    }

    /// Every convolution in sleap-nn's parameter registration order (encoder, decoder, middle,
    /// head), with whether it is transposed.
    pub fn convs(&self) -> Vec<(&ConvPlan, bool)> {
        let mut v: Vec<(&ConvPlan, bool)> = Vec::new();
        for b in &self.encoder {
            v.extend(b.convs.iter().map(|c| (c, false)));
        }
        for b in &self.decoder {
            if let Upsample::Transposed(t) = &b.upsample {
                v.push((t, true));
            }
            v.extend(b.refine.iter().map(|c| (c, false)));
        }
        v.extend(self.middle.iter().map(|c| (c, false)));
        v.push((&self.head.conv, false));
        v
    }

    /// (name, shape) of every parameter, in sleap-nn's `named_parameters()` order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        for (c, transposed) in self.convs() {
            let w = if transposed {
                vec![c.c_in, c.c_out, c.k, c.k]
            } else {
                vec![c.c_out, c.c_in, c.k, c.k]
            };
            v.push((format!("{}.weight", c.name), w));
            v.push((format!("{}.bias", c.name), vec![c.c_out]));
        }
        v
    }

    /// What sleap-nn writes as `model_config.total_params`.
    pub fn total_params(&self) -> usize {
        self.convs().iter().map(|(c, _)| c.params()).sum()
    }

    /// Input height and width must be multiples of this (sleap-nn pads frames to it).
    pub fn stride_multiple(&self) -> usize {
        self.max_stride
    }

    /// A table of the network for an `h × w` input: each block with its output shape and
    /// parameters, then the total.
    pub fn summary(&self, h: usize, w: usize) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let shape = |c: usize, stride: usize| format!("{c} x {} x {}", h / stride, w / stride);
        let count = |cs: &[ConvPlan]| cs.iter().map(ConvPlan::params).sum::<usize>();
        let _ = writeln!(
            s,
            "{:<34} {:>20} {:>12}",
            "block", "output (C x H x W)", "params"
        );
        let _ = writeln!(
            s,
            "{:<34} {:>20} {:>12}",
            "input",
            shape(self.in_channels, 1),
            ""
        );
        for (i, b) in self.encoder.iter().enumerate() {
            let c = b.convs.last().map_or(0, |c| c.c_out);
            let what = format!(
                "encoder {i}{} {} conv{}",
                if b.pool_first { " (pool)" } else { "" },
                b.convs.len(),
                if b.convs.len() == 1 { "" } else { "s" }
            );
            let _ = writeln!(
                s,
                "{:<34} {:>20} {:>12}",
                what,
                shape(c, b.stride),
                count(&b.convs)
            );
        }
        let last = self
            .encoder
            .last()
            .and_then(|b| b.convs.last())
            .map_or(0, |c| c.c_out);
        let _ = writeln!(
            s,
            "{:<34} {:>20} {:>12}",
            "encoder pool",
            shape(last, self.max_stride),
            0
        );
        if let Some(c) = self.middle.last() {
            let _ = writeln!(
                s,
                "{:<34} {:>20} {:>12}",
                format!("middle {} convs", self.middle.len()),
                shape(c.c_out, self.max_stride),
                count(&self.middle)
            );
        }
        for (i, b) in self.decoder.iter().enumerate() {
            let c = b.refine.last().map_or(0, |c| c.c_out);
            let (up, up_params) = match &b.upsample {
                Upsample::Bilinear => ("bilinear", 0),
                Upsample::Transposed(t) => ("transposed conv", t.params()),
            };
            let what = format!(
                "decoder {i} ({up}{})",
                b.skip
                    .map_or(String::new(), |(e, _)| format!(" + encoder {e}"))
            );
            let _ = writeln!(
                s,
                "{:<34} {:>20} {:>12}",
                what,
                shape(c, b.stride),
                up_params + count(&b.refine)
            );
        }
        let _ = writeln!(
            s,
            "{:<34} {:>20} {:>12}",
            format!("head {} (1x1 conv)", self.head.kind),
            shape(self.head.conv.c_out, self.head.output_stride),
            self.head.conv.params()
        );
        let _ = writeln!(s, "total parameters: {}", self.total_params());
        s
    }
}
