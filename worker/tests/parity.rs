//! transformer_encoder against PyTorch: identical weights and batch, fp32. The fixture comes
//! from `python3 worker/tests/parity/make_fixture.py`. Loss within 1e-5 relative; every
//! parameter's gradient within 1e-4 relative (L2 norm of the difference over the norm of
//! PyTorch's gradient for that tensor).

use std::collections::HashMap;

use configs::scmodelforge::ModelConfig;
use data::Batch;
use kernels::rng::RngKey;
use kernels::Precision;
use serde::Deserialize;
use worker::model::{self, DataSpec};

#[derive(Deserialize)]
struct Cfg {
    vocab: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
    layers: usize,
    max_seq_len: usize,
    batch: usize,
    seq: usize,
}

#[derive(Deserialize)]
struct FBatch {
    gene_ids: Vec<u32>,
    values: Vec<f32>,
    labels: Vec<i32>,
    attention_mask: Vec<u32>,
}

#[derive(Deserialize)]
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

#[derive(Deserialize)]
struct Fixture {
    config: Cfg,
    batch: FBatch,
    loss: f64,
    params: HashMap<String, Tensor>,
    grads: HashMap<String, Vec<f32>>,
}

#[test]
fn transformer_encoder_matches_pytorch() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/parity/encoder_fixture.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    let f: Fixture = serde_json::from_str(&text).expect("fixture parses");
    let c = &f.config;
    let mc = ModelConfig {
        hidden_dim: c.hidden,
        num_layers: c.layers,
        num_heads: c.heads,
        ffn_dim: Some(c.ffn),
        dropout: 0.0,
        max_seq_len: c.max_seq_len,
        ..ModelConfig::default()
    };
    let spec = DataSpec {
        vocab_size: c.vocab,
        values_are_bins: false,
    };
    let mut m = model::build(&mc, spec, Precision::F32).expect("model");
    let layout = m.layout().clone();
    assert_eq!(layout.entries().len(), f.params.len(), "same parameter set");
    let mut params = vec![0.0f32; layout.total()];
    for e in layout.entries() {
        let t = f
            .params
            .get(&e.name)
            .unwrap_or_else(|| panic!("PyTorch has no parameter {}", e.name));
        assert_eq!(t.shape, e.shape, "{}", e.name);
        layout.set_host(&mut params, &e.name, &t.data).expect("set");
    }
    let batch = Batch {
        batch_size: c.batch,
        seq_len: c.seq,
        cells: (0..c.batch as u64).collect(),
        gene_ids: f.batch.gene_ids.clone(),
        values: f.batch.values.clone(),
        target_values: f.batch.values.clone(),
        labels: f.batch.labels.clone(),
        attention_mask: f.batch.attention_mask.clone(),
        ..Default::default()
    };
    let mut grads = vec![0.0f32; layout.total()];
    let s = m
        .train_batch(
            &params,
            &mut grads,
            &batch,
            RngKey::new(0, 0, 0),
            1.0,
            &mut |_, _| {},
        )
        .expect("step");
    let loss = s.mean();
    let rel = (loss - f.loss).abs() / f.loss.abs();
    println!("loss anvil {loss:.8} torch {:.8} rel {rel:.2e}", f.loss);
    assert!(rel < 1e-5, "loss {loss} vs {}", f.loss);
    let mut worst = (0.0f64, String::new());
    for e in layout.entries() {
        let tg = &f.grads[&e.name];
        let ag: Vec<f64> = grads[e.view().range()]
            .iter()
            .map(|&g| g as f64 / s.count)
            .collect();
        let diff: f64 = ag
            .iter()
            .zip(tg)
            .map(|(a, &b)| (a - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = tg.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
        let r = if norm > 0.0 { diff / norm } else { diff };
        if r > worst.0 {
            worst = (r, e.name.clone());
        }
        assert!(
            r < 1e-4,
            "{}: relative gradient error {r:.2e} (|g| = {norm:.3e})",
            e.name
        );
    }
    println!(
        "worst gradient relative error {:.2e} ({})",
        worst.0, worst.1
    );
}
