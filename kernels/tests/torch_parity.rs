//! Parity with torch.nn.TransformerEncoderLayer(norm_first=True, batch_first=True, dropout=0):
//! fixtures written by scripts/make_encoder_fixture.py (weights, input, padding mask, loss and
//! every gradient from PyTorch). Loss within 1e-5 relative; each gradient tensor within 1e-4
//! relative to its largest element.

use std::collections::HashMap;

use kernels::modules::{EncoderLayerConfig, TransformerEncoderLayer};
use kernels::ops::{Activation, SeqLayout};
use kernels::rng::RngKey;
use kernels::{Cpu, Float, ParamLayout, Precision};

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let end = bytes
            .windows(4)
            .position(|w| w == b"END\n")
            .expect("header terminator");
        let header = std::str::from_utf8(&bytes[..end]).expect("utf8 header");
        let mut lines = header.lines();
        assert_eq!(lines.next(), Some("ANVILFX1"));
        let mut off = end + 4;
        let mut tensors = HashMap::new();
        for line in lines {
            let mut it = line.split(' ');
            let name = it.next().expect("name").to_string();
            let shape: Vec<usize> = it.map(|d| d.parse().expect("dim")).collect();
            let n: usize = shape.iter().product();
            let data = bytes[off..off + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            off += 4 * n;
            tensors.insert(name, (shape, data));
        }
        assert_eq!(off, bytes.len(), "trailing bytes");
        Fixture { tensors }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
    }
}

fn rel_err<T: Float>(got: &[T], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |a, &b| a.max((b as f64).abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |a, (&g, &w)| a.max((g.to_f64() - w as f64).abs()));
    err / scale.max(1e-30)
}

fn run<T: Float>(file: &str, act: Activation) {
    let fx = Fixture::load(file);
    let (xs, x) = fx.get("input");
    let (b, t, e) = (xs[0], xs[1], xs[2]);
    let ff = fx.get("param.linear1.weight").0[0];
    let cfg = EncoderLayerConfig {
        d_model: e,
        nhead: 4,
        dim_feedforward: ff,
        dropout: 0.0,
        activation: act,
        layer_norm_eps: 1e-5,
        causal: false,
        precision: Precision::F32,
    };
    let mut layout = ParamLayout::new();
    let layer = TransformerEncoderLayer::new(&mut layout, "", cfg).expect("config");
    let mut params = vec![T::ZERO; layout.total()];
    for entry in layout.entries() {
        let (shape, data) = fx.get(&format!("param.{}", entry.name));
        assert_eq!(shape, &entry.shape, "{}", entry.name);
        let vals: Vec<T> = data.iter().map(|&v| T::from_f32(v)).collect();
        layout
            .set_host(&mut params, &entry.name, &vals)
            .expect("param");
    }
    let pad: Vec<bool> = fx.get("pad").1.iter().map(|&v| v != 0.0).collect();
    let to_t = |v: &[f32]| v.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>();
    let (x, r) = (to_t(x), to_t(&fx.get("r").1));
    let dev = Cpu;
    let mut acts = layer.alloc_acts(&dev);
    let key = RngKey::new(0, 0, 0);
    let seqs = SeqLayout::Padded {
        batch: b,
        seq: t,
        key_pad: Some(pad),
    };
    layer
        .forward(&dev, &params, &mut acts, &x, &seqs, key)
        .expect("forward");
    let loss: f64 = acts
        .out
        .iter()
        .zip(&r)
        .map(|(&o, &r)| (o * r).to_f64())
        .sum();
    let want_loss = fx.get("loss").1[0] as f64;
    let lrel = (loss - want_loss).abs() / want_loss.abs();
    assert!(
        lrel < 1e-5,
        "{file}: loss {loss} vs torch {want_loss} ({lrel:e})"
    );
    assert!(
        rel_err(&acts.out, &fx.get("output").1) < 1e-5,
        "{file}: output"
    );
    let mut grads = vec![T::ZERO; layout.total()];
    let mut dx = vec![T::ZERO; b * t * e];
    layer.backward(&dev, &params, &mut grads, &mut acts, &r, &mut dx, key);
    let err = rel_err(&dx, &fx.get("grad.input").1);
    assert!(err < 1e-4, "{file}: grad.input rel err {err:e}");
    for entry in layout.entries() {
        let got = &grads[entry.view().range()];
        let err = rel_err(got, &fx.get(&format!("grad.{}", entry.name)).1);
        assert!(err < 1e-4, "{file}: grad.{} rel err {err:e}", entry.name);
    }
}

#[test]
fn encoder_layer_matches_pytorch_relu_f32() {
    run::<f32>("encoder_layer_relu.bin", Activation::Relu);
}

#[test]
fn encoder_layer_matches_pytorch_gelu_f32() {
    run::<f32>("encoder_layer_gelu.bin", Activation::Gelu);
}

#[test]
fn encoder_layer_matches_pytorch_gelu_f64() {
    run::<f64>("encoder_layer_gelu.bin", Activation::Gelu);
}

#[test]
fn parameter_names_are_pytorchs() {
    let fx = Fixture::load("encoder_layer_relu.bin");
    let mut torch: Vec<String> = fx
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("param.").map(str::to_string))
        .collect();
    torch.sort();
    let cfg = EncoderLayerConfig {
        d_model: 16,
        nhead: 4,
        dim_feedforward: 32,
        dropout: 0.0,
        activation: Activation::Relu,
        layer_norm_eps: 1e-5,
        causal: false,
        precision: Precision::F32,
    };
    let mut layout = ParamLayout::new();
    TransformerEncoderLayer::new(&mut layout, "", cfg).expect("config");
    let mut ours: Vec<String> = layout.entries().iter().map(|e| e.name.clone()).collect();
    ours.sort();
    assert_eq!(ours, torch);
}
