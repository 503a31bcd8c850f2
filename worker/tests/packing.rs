//! The encoders never compute on padding: every architecture packs a batch's real tokens, so
//! the same cells padded to any width give bit-identical losses, gradients and embeddings
//! (dropout included), and a padding token changes nothing.

use configs::scmodelforge::{Architecture, ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::rng::RngKey;
use kernels::Precision;
use worker::model::{self, DataSpec};

const VOCAB: usize = 30;

/// Cells of lengths `lens` laid out [cells, seq] (seq ≥ the longest), padding at the end with
/// arbitrary junk in the padded ids/values (which must not matter). Token 0 of each cell is
/// [CLS]-like; every third later token is masked.
fn batch(lens: &[usize], seq: usize) -> Batch {
    let b = lens.len();
    let mut x = Batch {
        batch_size: b,
        seq_len: seq,
        cells: (0..b as u64).collect(),
        gene_ids: vec![0; b * seq],
        values: vec![0.0; b * seq],
        target_values: vec![0.0; b * seq],
        labels: vec![IGNORE_INDEX; b * seq],
        attention_mask: vec![0; b * seq],
        ..Default::default()
    };
    for (r, &len) in lens.iter().enumerate() {
        for j in 0..seq {
            let i = r * seq + j;
            if j >= len {
                // Padding: junk the model must never read.
                x.gene_ids[i] = ((r * 7 + j) % VOCAB) as u32;
                x.values[i] = 3.5;
                continue;
            }
            let gene = (2 + (r * 11 + j * 5) % (VOCAB - 2)) as u32;
            let value = 0.25 + ((r + j) % 7) as f32 * 0.5;
            x.attention_mask[i] = 1;
            x.gene_ids[i] = gene;
            x.values[i] = value;
            x.target_values[i] = value;
            if j > 0 && j % 3 == 0 {
                x.labels[i] = gene as i32;
                x.gene_ids[i] = 1;
                x.values[i] = -1.0;
            }
        }
    }
    x
}

fn config(arch: Architecture, pooling: Pooling) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        hidden_dim: 16,
        num_layers: 2,
        num_heads: 2,
        ffn_dim: Some(24),
        dropout: 0.2,
        max_seq_len: 80,
        pooling,
        n_bins: 5,
        decoder_dim: Some(8),
        decoder_layers: 1,
        decoder_heads: Some(2),
        ..ModelConfig::default()
    }
}

/// (loss sum, count, gradients, embeddings) of one training step and one embedding pass.
fn run(cfg: &ModelConfig, b: &Batch) -> (f64, f64, Vec<f32>, Vec<f32>) {
    let spec = DataSpec {
        vocab_size: VOCAB,
        values_are_bins: false,
    };
    let mut m = model::build(cfg, spec, Precision::F32).expect("model");
    let layout = m.layout().clone();
    let params: Vec<f32> = layout.init_host(7);
    let mut grads = vec![0.0f32; layout.total()];
    let s = m
        .train_batch(
            &params,
            &mut grads,
            b,
            RngKey::new(3, 1, 0),
            1.0,
            &mut |_, _| {},
        )
        .expect("step");
    let emb = m.cell_embeddings(&params, b).expect("embeddings");
    (s.sum, s.count, grads, emb)
}

#[test]
fn padding_changes_nothing_in_any_architecture() {
    let lens = [13, 5, 1, 9];
    for arch in [
        Architecture::TransformerEncoder,
        Architecture::AutoregressiveTransformer,
        Architecture::MaskedAutoencoder,
    ] {
        for pooling in [Pooling::Cls, Pooling::Mean] {
            let cfg = config(arch, pooling);
            let tight = run(&cfg, &batch(&lens, 13));
            let wide = run(&cfg, &batch(&lens, 61));
            let what = format!("{arch:?}/{pooling:?}");
            assert!(tight.1 > 0.0, "{what}: no targets");
            assert!(
                tight.0.is_finite() && tight.0 > 0.0,
                "{what}: loss {}",
                tight.0
            );
            assert_eq!(tight.0, wide.0, "{what}: loss sum");
            assert_eq!(tight.1, wide.1, "{what}: target count");
            assert_eq!(tight.2, wide.2, "{what}: gradients");
            assert_eq!(tight.3, wide.3, "{what}: embeddings");
            assert!(tight.2.iter().any(|&g| g != 0.0), "{what}: no gradient");
            // A different real token does change the result (the comparison can fail).
            let mut other = batch(&lens, 13);
            other.values[2] += 1.0;
            other.target_values[2] += 1.0;
            assert_ne!(
                run(&cfg, &other).0,
                tight.0,
                "{what}: insensitive to its input"
            );
        }
    }
}
