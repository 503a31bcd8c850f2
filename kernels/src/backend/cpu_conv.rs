//! [`ConvDevice`] for the CPU backend: every method forwards to the slice op of the same name
//! in [`crate::ops::conv`].

use super::conv::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
use super::cpu::{views_mut, Cpu};
use crate::ops::conv as ops;
use crate::params::ParamView;
use crate::Precision;

/// (dW, db) as disjoint views of the gradient buffer.
fn weight_bias_grads(
    grads: &mut [f32],
    w: ParamView,
    b: Option<ParamView>,
) -> (&mut [f32], Option<&mut [f32]>) {
    match b {
        Some(b) => {
            let [dw, db] = views_mut(grads, [w, b]);
            (dw, Some(db))
        }
        None => (&mut grads[w.range()], None),
    }
}

impl ConvDevice<f32> for Cpu {
    fn conv2d_forward(
        &self,
        prec: Precision,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        params: &Vec<f32>,
        w: ParamView,
        b: Option<ParamView>,
        s: Conv2dShape,
    ) {
        let b = b.map(|b| &params[b.range()]);
        ops::conv2d_forward(prec, y, x, &params[w.range()], b, s)
    }
    fn conv2d_backward(
        &self,
        prec: Precision,
        dx: Option<&mut Vec<f32>>,
        grads: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        params: &Vec<f32>,
        w: ParamView,
        b: Option<ParamView>,
        s: Conv2dShape,
    ) {
        let (dw, db) = weight_bias_grads(grads, w, b);
        let dx = dx.map(|d| d.as_mut_slice());
        ops::conv2d_backward(prec, dx, dw, db, dy, x, &params[w.range()], s)
    }
    fn conv_transpose2d_forward(
        &self,
        prec: Precision,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        params: &Vec<f32>,
        w: ParamView,
        b: Option<ParamView>,
        s: ConvTranspose2dShape,
    ) {
        let b = b.map(|b| &params[b.range()]);
        ops::conv_transpose2d_forward(prec, y, x, &params[w.range()], b, s)
    }
    fn conv_transpose2d_backward(
        &self,
        prec: Precision,
        dx: Option<&mut Vec<f32>>,
        grads: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        params: &Vec<f32>,
        w: ParamView,
        b: Option<ParamView>,
        s: ConvTranspose2dShape,
    ) {
        let (dw, db) = weight_bias_grads(grads, w, b);
        let dx = dx.map(|d| d.as_mut_slice());
        ops::conv_transpose2d_backward(prec, dx, dw, db, dy, x, &params[w.range()], s)
    }
    fn maxpool2d_forward(&self, y: &mut Vec<f32>, x: &Vec<f32>, s: Pool2dShape) {
        ops::maxpool2d_forward(y, x, s)
    }
    fn maxpool2d_backward(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, x: &Vec<f32>, s: Pool2dShape) {
        ops::maxpool2d_backward(dx, dy, x, s)
    }
    fn upsample_bilinear2d_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        nc: usize,
        h: usize,
        w: usize,
        h_out: usize,
        w_out: usize,
    ) {
        ops::upsample_bilinear2d_forward(y, x, nc, h, w, h_out, w_out)
    }
    fn upsample_bilinear2d_backward(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        nc: usize,
        h: usize,
        w: usize,
        h_out: usize,
        w_out: usize,
    ) {
        ops::upsample_bilinear2d_backward(dx, dy, nc, h, w, h_out, w_out)
    }
    fn concat_channels(
        &self,
        out: &mut Vec<f32>,
        a: &Vec<f32>,
        ca: usize,
        b: &Vec<f32>,
        cb: usize,
        n: usize,
        hw: usize,
    ) {
        ops::concat_channels(out, a, ca, b, cb, n, hw)
    }
    fn split_channels(
        &self,
        da: &mut Vec<f32>,
        accumulate_a: bool,
        db: &mut Vec<f32>,
        accumulate_b: bool,
        dout: &Vec<f32>,
        ca: usize,
        cb: usize,
        n: usize,
        hw: usize,
    ) {
        ops::split_channels(da, accumulate_a, db, accumulate_b, dout, ca, cb, n, hw)
    }
}
