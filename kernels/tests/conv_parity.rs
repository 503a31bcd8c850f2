//! Parity with PyTorch (and sleap-nn's MaxPool2dWithSamePadding) for the image ops, through the
//! CPU backend's [`ConvDevice`]: fixtures written by scripts/conv_reference.py (inputs,
//! weights, outputs, an upstream gradient dy and the gradients of Σ y·dy). Every value within
//! 1e-5 of PyTorch's, relative to the tensor's largest magnitude when that exceeds 1.

use kernels::backend::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
use kernels::{Cpu, ParamView, Precision};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/conv_reference.json"
);

struct Case<'a>(&'a Value);

impl Case<'_> {
    fn name(&self) -> &str {
        self.0["name"].as_str().expect("case name")
    }
    fn tensor(&self, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let t = self.0.get(key)?;
        let shape = t["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let data = t["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        Some((shape, data))
    }
    fn need(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        self.tensor(key)
            .unwrap_or_else(|| panic!("{}: no {key}", self.name()))
    }
    fn int(&self, key: &str) -> usize {
        self.0[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no {key}", self.name())) as usize
    }
    fn check(&self, what: &str, got: &[f32], key: &str) {
        let (_, want) = self.need(key);
        assert_eq!(got.len(), want.len(), "{} {what}: length", self.name());
        let scale = want.iter().fold(1f32, |a, &b| a.max(b.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * scale,
                "{} {what}[{i}]: anvil {g} vs torch {w}",
                self.name()
            );
        }
    }
}

/// Weight (and bias) in one flat parameter buffer, bias first so the views are not at 0.
fn params(w: &[f32], b: Option<&[f32]>) -> (Vec<f32>, ParamView, Option<ParamView>) {
    let blen = b.map_or(0, |b| b.len());
    let mut p = b.map_or(Vec::new(), |b| b.to_vec());
    p.extend_from_slice(w);
    let wv = ParamView {
        offset: blen,
        len: w.len(),
    };
    let bv = b.map(|b| ParamView {
        offset: 0,
        len: b.len(),
    });
    (p, wv, bv)
}

fn conv2d(c: &Case) {
    let dev = Cpu;
    let (xs, x) = c.need("x");
    let (ws, w) = c.need("weight");
    let b = c.tensor("bias").map(|t| t.1);
    let k = c.int("k");
    let s = Conv2dShape {
        n: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[0],
        k,
        stride: c.int("stride"),
        pad: Conv2dShape::same_pad(k),
    };
    let (p, wv, bv) = params(&w, b.as_deref());
    let mut y = vec![0f32; s.n * s.c_out * s.h_out() * s.w_out()];
    dev.conv2d_forward(Precision::F32, &mut y, &x, &p, wv, bv, s);
    c.check("y", &y, "y");
    let (_, dy) = c.need("dy");
    let mut grads = vec![0f32; p.len()];
    let mut dx = vec![0f32; x.len()];
    dev.conv2d_backward(
        Precision::F32,
        Some(&mut dx),
        &mut grads,
        &dy,
        &x,
        &p,
        wv,
        bv,
        s,
    );
    c.check("dx", &dx, "dx");
    c.check("dweight", &grads[wv.range()], "dweight");
    if let Some(bv) = bv {
        c.check("dbias", &grads[bv.range()], "dbias");
    }
}

fn conv_transpose2d(c: &Case) {
    let dev = Cpu;
    let (xs, x) = c.need("x");
    let (ws, w) = c.need("weight");
    let b = c.tensor("bias").map(|t| t.1);
    let s = ConvTranspose2dShape {
        n: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[1],
        k: c.int("k"),
        stride: c.int("stride"),
        pad: c.int("pad"),
        output_padding: c.int("output_padding"),
    };
    let (p, wv, bv) = params(&w, b.as_deref());
    let mut y = vec![0f32; s.n * s.c_out * s.h_out() * s.w_out()];
    dev.conv_transpose2d_forward(Precision::F32, &mut y, &x, &p, wv, bv, s);
    c.check("y", &y, "y");
    let (_, dy) = c.need("dy");
    let mut grads = vec![0f32; p.len()];
    let mut dx = vec![0f32; x.len()];
    dev.conv_transpose2d_backward(
        Precision::F32,
        Some(&mut dx),
        &mut grads,
        &dy,
        &x,
        &p,
        wv,
        bv,
        s,
    );
    c.check("dx", &dx, "dx");
    c.check("dweight", &grads[wv.range()], "dweight");
    if let Some(bv) = bv {
        c.check("dbias", &grads[bv.range()], "dbias");
    }
}

fn maxpool_same(c: &Case) {
    let dev = Cpu;
    let (xs, x) = c.need("x");
    let s = Pool2dShape::same(xs[0], xs[1], xs[2], xs[3], c.int("k"), c.int("stride"));
    let mut y = vec![0f32; s.n * s.c * s.h_out() * s.w_out()];
    dev.maxpool2d_forward(&mut y, &x, s);
    c.check("y", &y, "y");
    let (_, dy) = c.need("dy");
    let mut dx = vec![1f32; x.len()];
    dev.maxpool2d_backward(&mut dx, &dy, &x, s);
    c.check("dx", &dx, "dx");
}

fn bilinear(c: &Case) {
    let dev = Cpu;
    let (xs, x) = c.need("x");
    let (ys, _) = c.need("y");
    let (nc, h, w, ho, wo) = (xs[0] * xs[1], xs[2], xs[3], ys[2], ys[3]);
    let mut y = vec![0f32; nc * ho * wo];
    dev.upsample_bilinear2d_forward(&mut y, &x, nc, h, w, ho, wo);
    c.check("y", &y, "y");
    let (_, dy) = c.need("dy");
    let mut dx = vec![1f32; x.len()];
    dev.upsample_bilinear2d_backward(&mut dx, &dy, nc, h, w, ho, wo);
    c.check("dx", &dx, "dx");
}

#[test]
fn image_ops_match_pytorch() {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let fixture: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let cases = fixture["cases"].as_array().expect("cases");
    let mut seen = Vec::new();
    for v in cases {
        let c = Case(v);
        match v["op"].as_str().expect("op") {
            "conv2d" => conv2d(&c),
            "conv_transpose2d" => conv_transpose2d(&c),
            "maxpool2d_same" => maxpool_same(&c),
            "bilinear" => bilinear(&c),
            other => panic!("{}: unknown op {other}", c.name()),
        }
        seen.push(v["op"].as_str().expect("op"));
    }
    for op in ["conv2d", "conv_transpose2d", "maxpool2d_same", "bilinear"] {
        assert!(seen.contains(&op), "the fixture covers {op}");
    }
}

/// The fixture's pooling case exercises what makes sleap-nn's padding differ from PyTorch's:
/// somewhere a padded zero beats a window of negative inputs.
#[test]
fn fixture_pooling_has_a_window_won_by_padding() {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let fixture: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let case = fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|v| v["op"] == "maxpool2d_same")
        .expect("a pooling case");
    let c = Case(case);
    let (xs, x) = c.need("x");
    let s = Pool2dShape::same(xs[0], xs[1], xs[2], xs[3], c.int("k"), c.int("stride"));
    let mut y = vec![0f32; s.n * s.c * s.h_out() * s.w_out()];
    let unpadded = Pool2dShape {
        zero_pad: false,
        ..s
    };
    ConvDevice::<f32>::maxpool2d_forward(&Cpu, &mut y, &x, unpadded);
    let (_, want) = c.need("y");
    assert!(
        y.iter().zip(&want).any(|(a, b)| a < b && *b == 0.0),
        "with −∞ padding some window would differ from sleap-nn's"
    );
}
