//! Image ops for convolutional models (the pose family's UNet): 2-D convolution and its
//! transpose, max-pooling, bilinear resizing and channel concatenation, all on NCHW tensors
//! with PyTorch's weight layouts, so parameters load and save under the same shapes as there.
//!
//! The CPU backend implements it (`backend/cpu_conv.rs`) over the slice ops of
//! [`crate::ops::conv`] (im2col + GEMM); the CUDA backend (`backend/cuda/conv.rs`) composes the
//! same primitives from NVRTC kernels and cuBLASLt. A separate trait from [`Device`] because
//! the transformer models need none of it.
//!
//! Same conventions as [`Device`]: parameter gradients accumulate (`+=`), activation gradients
//! are overwritten unless an `accumulate` flag says otherwise.

use super::Device;
use crate::params::ParamView;
use crate::{Float, Precision};

/// A 2-D convolution over NCHW input, PyTorch's `nn.Conv2d` with a square kernel, zero padding
/// `pad = [top, bottom, left, right]` (PyTorch's `padding="same"` is `k-1` split with the
/// smaller half first) and no dilation. Weight `[c_out, c_in, k, k]`, bias `[c_out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2dShape {
    /// `padding="same"` for stride 1 (total k−1, top/left get the floor half, as PyTorch).
    pub fn same_pad(k: usize) -> [usize; 4] {
        let t = k - 1;
        [t / 2, t - t / 2, t / 2, t - t / 2]
    }
    pub fn h_out(&self) -> usize {
        (self.h + self.pad[0] + self.pad[1] - self.k) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + self.pad[2] + self.pad[3] - self.k) / self.stride + 1
    }
}

/// PyTorch's `nn.ConvTranspose2d` with a square kernel: output size
/// `(h−1)·stride − 2·pad + k + output_padding`. Weight `[c_in, c_out, k, k]`, bias `[c_out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose2dShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub output_padding: usize,
}

impl ConvTranspose2dShape {
    pub fn h_out(&self) -> usize {
        (self.h - 1) * self.stride + self.k + self.output_padding - 2 * self.pad
    }
    pub fn w_out(&self) -> usize {
        (self.w - 1) * self.stride + self.k + self.output_padding - 2 * self.pad
    }
}

/// Max-pooling over NCHW input with a square window, `pad = [top, bottom, left, right]`.
///
/// Padded positions hold 0 when `zero_pad` (sleap-nn's `MaxPool2dWithSamePadding` pads with
/// `F.pad`'s zeros and then max-pools unpadded, so a padded 0 beats negative inputs and then
/// passes no gradient), else −∞ (PyTorch's own max_pool2d padding: they never win).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: [usize; 4],
    pub zero_pad: bool,
}

impl Pool2dShape {
    /// sleap-nn's `MaxPool2dWithSamePadding(k, stride, padding="same")` on its first call: per
    /// axis, total pad max((⌈i/s⌉ − 1)·s + k − i, 0), the floor half before, zeros.
    ///
    /// (That module sets its padding to 0 after the first call, so later calls on an odd size
    /// floor instead; sleap-nn sizes inputs to a multiple of the total stride, where the pad
    /// is 0 either way.)
    pub fn same(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize) -> Pool2dShape {
        let total = |i: usize| ((i.div_ceil(stride).max(1) - 1) * stride + k).saturating_sub(i);
        let (th, tw) = (total(h), total(w));
        Pool2dShape {
            n,
            c,
            h,
            w,
            k,
            stride,
            pad: [th / 2, th - th / 2, tw / 2, tw - tw / 2],
            zero_pad: true,
        }
    }
    pub fn h_out(&self) -> usize {
        (self.h + self.pad[0] + self.pad[1] - self.k) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + self.pad[2] + self.pad[3] - self.k) / self.stride + 1
    }
}

pub trait ConvDevice<T: Float>: Device<T> {
    /// y[n,o,y,x] = b[o] + Σ_{i,ky,kx} W[o,i,ky,kx]·x[n,i,y·s+ky−pt, x·s+kx−pl] (zero outside).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward(
        &self,
        prec: Precision,
        y: &mut Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        w: ParamView,
        b: Option<ParamView>,
        s: Conv2dShape,
    );
    /// dx (written, when given), dW += , db += for [`conv2d_forward`](ConvDevice::conv2d_forward).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        prec: Precision,
        dx: Option<&mut Self::Mem>,
        grads: &mut Self::Mem,
        dy: &Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        w: ParamView,
        b: Option<ParamView>,
        s: Conv2dShape,
    );
    /// y[n,o,iy·s+ky−p, ix·s+kx−p] += W[i,o,ky,kx]·x[n,i,iy,ix] (where inside y), plus b[o]:
    /// the input gradient of a conv2d with the same weight.
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose2d_forward(
        &self,
        prec: Precision,
        y: &mut Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        w: ParamView,
        b: Option<ParamView>,
        s: ConvTranspose2dShape,
    );
    /// dx (written, when given), dW += , db += for
    /// [`conv_transpose2d_forward`](ConvDevice::conv_transpose2d_forward).
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose2d_backward(
        &self,
        prec: Precision,
        dx: Option<&mut Self::Mem>,
        grads: &mut Self::Mem,
        dy: &Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        w: ParamView,
        b: Option<ParamView>,
        s: ConvTranspose2dShape,
    );
    /// y = the maximum of each window; padded positions per [`Pool2dShape::zero_pad`].
    fn maxpool2d_forward(&self, y: &mut Self::Mem, x: &Self::Mem, s: Pool2dShape);
    /// dx (written): each dy goes to the first maximum of its window in row-major order
    /// (PyTorch's choice); none when a padded zero is that maximum.
    fn maxpool2d_backward(&self, dx: &mut Self::Mem, dy: &Self::Mem, x: &Self::Mem, s: Pool2dShape);
    /// Bilinear resize of [n·c, h, w] to [n·c, h_out, w_out], `align_corners=False`, source
    /// coordinate (dst + 0.5)·(in/out) − 0.5 clamped at 0 (PyTorch's `nn.Upsample`/`interpolate`).
    #[allow(clippy::too_many_arguments)]
    fn upsample_bilinear2d_forward(
        &self,
        y: &mut Self::Mem,
        x: &Self::Mem,
        nc: usize,
        h: usize,
        w: usize,
        h_out: usize,
        w_out: usize,
    );
    /// dx (written) for [`upsample_bilinear2d_forward`](ConvDevice::upsample_bilinear2d_forward).
    #[allow(clippy::too_many_arguments)]
    fn upsample_bilinear2d_backward(
        &self,
        dx: &mut Self::Mem,
        dy: &Self::Mem,
        nc: usize,
        h: usize,
        w: usize,
        h_out: usize,
        w_out: usize,
    );
    /// out[n] = concat(a[n] (ca channels), b[n] (cb channels)) along channels, `hw` pixels each.
    #[allow(clippy::too_many_arguments)]
    fn concat_channels(
        &self,
        out: &mut Self::Mem,
        a: &Self::Mem,
        ca: usize,
        b: &Self::Mem,
        cb: usize,
        n: usize,
        hw: usize,
    );
    /// The backward of [`concat_channels`](ConvDevice::concat_channels): splits dout into da and
    /// db, each written or added (`accumulate_a`, `accumulate_b`).
    #[allow(clippy::too_many_arguments)]
    fn split_channels(
        &self,
        da: &mut Self::Mem,
        accumulate_a: bool,
        db: &mut Self::Mem,
        accumulate_b: bool,
        dout: &Self::Mem,
        ca: usize,
        cb: usize,
        n: usize,
        hw: usize,
    );
}
