//! Packed (variable-length) attention on a backend whose attention kernel knows only the padded
//! layout: the packed rows are scattered into a padded [B, T] layout with a key padding mask,
//! the padded kernel runs, and the results are gathered back. The CUDA backend takes this path;
//! the CPU runs packed sequences natively. Both draw the attention dropout masks by the padded
//! index (batch, head, query, key), so the two routes give the same results.

use super::Device;
use crate::ops::attention::{layout_rows, AttnOpts};
use crate::ops::AttnShape;
use crate::Float;

/// The padded layout of a packed one: for each packed row its padded row, the padding mask, and
/// for each packed lse entry its padded lse entry ([B, H, T] there).
struct PadMap {
    rows: Vec<usize>,
    key_pad: Vec<bool>,
    lse: Vec<usize>,
}

/// The padded layout of the packed one `o` describes (checked).
fn pad_map(s: &AttnShape, o: &AttnOpts) -> PadMap {
    let starts = o.packed.expect("a packed layout");
    layout_rows(s, o);
    let t = s.seq;
    let mut m = PadMap {
        rows: Vec::with_capacity(starts[s.batch]),
        key_pad: vec![true; s.batch * t],
        lse: Vec::with_capacity(starts[s.batch] * s.heads),
    };
    for b in 0..s.batch {
        let len = starts[b + 1] - starts[b];
        for i in 0..len {
            m.rows.push(b * t + i);
            m.key_pad[b * t + i] = false;
        }
        for h in 0..s.heads {
            m.lse.extend((0..len).map(|i| (b * s.heads + h) * t + i));
        }
    }
    m
}

fn padded_opts<'a>(o: &AttnOpts, key_pad: &'a [bool]) -> AttnOpts<'a> {
    AttnOpts {
        key_pad: Some(key_pad),
        packed: None,
        causal: o.causal,
        dropout: o.dropout,
        key: o.key,
        prec: o.prec,
    }
}

/// [`Device::attention_forward`] of a packed layout (`o.packed`) through the padded kernel.
pub fn forward_via_padding<T: Float, D: Device<T>>(
    dev: &D,
    out: &mut D::Mem,
    lse: &mut D::Mem,
    qkv: &D::Mem,
    s: AttnShape,
    o: &AttnOpts,
) {
    let m = pad_map(&s, o);
    let (e, padded) = (s.embed(), s.batch * s.seq);
    let mut qkv_p = dev.zeros(padded * 3 * e);
    dev.scatter_rows(&mut qkv_p, qkv, &m.rows, 3 * e, false);
    let mut out_p = dev.zeros(padded * e);
    let mut lse_p = dev.zeros(padded * s.heads);
    dev.attention_forward(
        &mut out_p,
        &mut lse_p,
        &qkv_p,
        s,
        &padded_opts(o, &m.key_pad),
    );
    dev.gather_rows(out, &out_p, &m.rows, e);
    dev.gather_rows(lse, &lse_p, &m.lse, 1);
}

/// [`Device::attention_backward`] of a packed layout through the padded kernel.
#[allow(clippy::too_many_arguments)]
pub fn backward_via_padding<T: Float, D: Device<T>>(
    dev: &D,
    dqkv: &mut D::Mem,
    dout: &D::Mem,
    out: &D::Mem,
    lse: &D::Mem,
    qkv: &D::Mem,
    s: AttnShape,
    o: &AttnOpts,
) {
    let m = pad_map(&s, o);
    let (e, padded) = (s.embed(), s.batch * s.seq);
    let pad = |x: &D::Mem, width: usize, rows: &[usize]| {
        let mut p = dev.zeros(padded * width);
        dev.scatter_rows(&mut p, x, rows, width, false);
        p
    };
    let (qkv_p, dout_p, out_p) = (
        pad(qkv, 3 * e, &m.rows),
        pad(dout, e, &m.rows),
        pad(out, e, &m.rows),
    );
    // Padding queries get lse −∞, which both kernels read as "no gradient from this row" (a
    // zero there could overflow exp() into inf·0).
    let mut lse_p = dev.upload(&vec![T::NEG_INFINITY; padded * s.heads]);
    dev.scatter_rows(&mut lse_p, lse, &m.lse, 1, false);
    let mut dqkv_p = dev.zeros(padded * 3 * e);
    let opts = padded_opts(o, &m.key_pad);
    dev.attention_backward(&mut dqkv_p, &dout_p, &out_p, &lse_p, &qkv_p, s, &opts);
    dev.gather_rows(dqkv, &dqkv_p, &m.rows, 3 * e);
}
