//! The task head on a pooled cell embedding, as scModelForge builds it (and named as its
//! `nn.Sequential` names its layers, under `head.net`):
//!
//! ```text
//! no hidden layer:  y = Linear(dropout(x))                      head.net.1
//! hidden_dim h:     y = Linear(dropout(GELU(Linear(x))))        head.net.0, head.net.3
//! ```
//! Built from the kernels' [`Linear`] and the [`Device`]'s activation and dropout; it keeps its
//! last training forward's activations for backward.

use kernels::modules::Linear;
use kernels::rng::RngKey;
use kernels::{Activation, Device, ParamLayout, Precision};

pub struct TaskHead<M> {
    hidden: Option<Linear>,
    out: Linear,
    dropout: f64,
    prec: Precision,
    /// Saved by the last forward: the input, the hidden pre-activation, the output layer's
    /// input (after dropout), the output; and the batch size.
    x: M,
    h: M,
    a: M,
    pub y: M,
    n: usize,
}

impl<M: Default> TaskHead<M> {
    /// Registers the head's parameters (after the backbone's) for inputs of width `input`.
    pub fn new(
        l: &mut ParamLayout,
        input: usize,
        hidden: Option<usize>,
        outputs: usize,
        dropout: f64,
        prec: Precision,
    ) -> Self {
        let (hidden, out) = match hidden {
            Some(h) => (
                Some(Linear::new(l, "head.net.0", input, h, true)),
                Linear::new(l, "head.net.3", h, outputs, true),
            ),
            None => (None, Linear::new(l, "head.net.1", input, outputs, true)),
        };
        TaskHead {
            hidden,
            out,
            dropout,
            prec,
            x: M::default(),
            h: M::default(),
            a: M::default(),
            y: M::default(),
            n: 0,
        }
    }
}

impl<M> TaskHead<M> {
    pub fn outputs(&self) -> usize {
        self.out.out_features
    }

    /// y [n, outputs] from x [n, input] (host values); dropout on with `key`.
    pub fn forward<D: Device<f32, Mem = M>>(
        &mut self,
        dev: &D,
        params: &M,
        x: &[f32],
        n: usize,
        key: Option<RngKey>,
    ) {
        self.n = n;
        self.x = dev.upload(x);
        let o = self.out.out_features;
        self.a = match &self.hidden {
            Some(lin) => {
                self.h = dev.zeros(n * lin.out_features);
                lin.forward(dev, self.prec, params, &self.x, &mut self.h, n);
                let mut a = dev.zeros(n * lin.out_features);
                dev.activation_forward(Activation::Gelu, &mut a, &self.h);
                a
            }
            None => dev.upload(x),
        };
        if let Some(k) = key {
            dev.dropout_forward(&mut self.a, self.dropout, k);
        }
        self.y = dev.zeros(n * o);
        self.out
            .forward(dev, self.prec, params, &self.a, &mut self.y, n);
    }

    /// From dy [n, outputs] of the last training forward (keyed `key`): accumulates the head's
    /// gradients and returns the input's gradient [n, input] on the host.
    pub fn backward<D: Device<f32, Mem = M>>(
        &self,
        dev: &D,
        params: &M,
        grads: &mut M,
        dy: &M,
        key: RngKey,
    ) -> Vec<f32> {
        let n = self.n;
        let mut da = dev.zeros(n * self.out.in_features);
        self.out.backward(
            dev,
            self.prec,
            params,
            grads,
            &self.a,
            dy,
            Some(&mut da),
            false,
            n,
        );
        dev.dropout_backward(&mut da, self.dropout, key);
        match &self.hidden {
            Some(lin) => {
                let mut dh = dev.zeros(n * lin.out_features);
                dev.activation_backward(Activation::Gelu, &mut dh, &da, &self.h);
                let mut dx = dev.zeros(n * lin.in_features);
                lin.backward(
                    dev,
                    self.prec,
                    params,
                    grads,
                    &self.x,
                    &dh,
                    Some(&mut dx),
                    false,
                    n,
                );
                dev.download(&dx)
            }
            None => dev.download(&da),
        }
    }
}
