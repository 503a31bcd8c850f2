//! `worker embed` against the library: the rows it writes into obsm["X_anvil"] are what
//! `ScModel::cell_embeddings` computes for those cells, on a batch tokenized by hand from the
//! checkpoint's config and vocabulary (no masking), with the checkpoint's parameters.

use std::path::{Path, PathBuf};
use std::process::Command;

use configs::scmodelforge::{ScModelForgeConfig, TokenizerStrategy};
use configs::Sources;
use data::dataset::Dataset;
use data::pipeline::Workspace;
use data::vocab::GeneVocab;
use data::Pipeline;
use worker::checkpoint;
use worker::embed::Embedder;
use worker::model::{self, DataSpec};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const SMALL: &[&str] = &[
    "model.hidden_dim=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_dim=64",
    "model.max_seq_len=64",
    "model.dropout=0.0",
    "tokenizer.max_genes=64",
    "data.max_genes=64",
    "data.num_workers=1",
    "training.max_epochs=1",
    "training.val_split=0.1",
    "training.scheduler=null",
    "training.batch_size=16",
];

#[test]
fn worker_embed_matches_cell_embeddings_of_the_library() {
    let dir = std::env::temp_dir().join(format!("anvil-worker-embed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = env!("CARGO_BIN_EXE_worker");
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo())
        .args(["train", "--config", "configs/quickstart.yaml", "--run-dir"])
        .arg(dir.join("run"))
        .args(["--max-steps", "2"]);
    for s in SMALL {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let ckpt = dir.join("run/checkpoints/last");
    let data_path = repo().join("data/pbmc68k_counts.h5ad");
    let output = dir.join("out.h5ad");
    let out = Command::new(bin)
        .arg("embed")
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--data")
        .arg(&data_path)
        .arg("--output")
        .arg(&output)
        .args(["--batch-size", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let f = hdf5::File::open(&output).unwrap();
    let ds = f.dataset("obsm/X_anvil").unwrap();
    let written: Vec<f32> = ds.read_raw().unwrap();
    let dim = ds.shape()[1];

    // The library, step by step: config and vocabulary from the checkpoint, model rebuilt,
    // parameters loaded, the first cells tokenized without masking.
    let files = checkpoint::verify(&ckpt).unwrap();
    let yaml = String::from_utf8(files["config.yaml"].clone()).unwrap();
    let cfg: ScModelForgeConfig = Sources::from_str(&yaml, "config.yaml")
        .unwrap()
        .load_as()
        .unwrap();
    let vocab_v: serde_json::Value = serde_json::from_slice(&files["vocab.json"]).unwrap();
    let genes: Vec<String> = vocab_v["genes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    let vocab = GeneVocab::from_genes(genes);
    let spec = DataSpec {
        vocab_size: vocab.len(),
        values_are_bins: cfg.tokenizer.strategy == TokenizerStrategy::BinnedExpression,
    };
    let mut m = model::build(
        &cfg.model,
        spec,
        model::precision_of(cfg.training.precision),
    )
    .unwrap();
    assert_eq!(m.embedding_dim(), dim);
    let params = checkpoint::load(&ckpt, m.layout()).unwrap().params;
    let file = data::anndata::open(&data_path).unwrap();
    let mut pipeline = Pipeline::with_dataset(&cfg, Dataset::new(vec![file], vocab)).unwrap();
    pipeline.masker = None;
    let cells = [0u64, 1, 2, 3, 4];
    let batch = pipeline
        .batch(&cells, None, &mut Workspace::default())
        .unwrap();
    assert!(batch
        .labels
        .iter()
        .all(|&l| l == data::masking::IGNORE_INDEX));
    let direct = m.cell_embeddings(&params, &batch).unwrap();
    assert_eq!(direct.len(), cells.len() * dim);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&written[..cells.len() * dim]),
        bits(&direct),
        "worker embed's first batch differs from cell_embeddings on the same cells"
    );

    // The module's own entry point agrees too.
    let mut emb = Embedder::load(&dir.join("run/checkpoints")).unwrap();
    let p = emb.pipeline(&data_path).unwrap();
    let via = emb
        .embed_cells(&p, &cells, &mut Workspace::default())
        .unwrap();
    assert_eq!(bits(&via), bits(&direct));
    let _ = std::fs::remove_dir_all(&dir);
}
