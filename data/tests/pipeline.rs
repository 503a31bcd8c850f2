//! Preprocessing against scanpy, multi-file datasets, and the loader's distributed invariants.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use configs::scmodelforge::{PreprocessingConfig, ScModelForgeConfig, TokenizerStrategy};
use data::dataset::Dataset;
use data::masking::IGNORE_INDEX;
use data::plan::{ShardPlan, Split};
use data::preprocess::{gene_stats, seurat_hvg, Preprocessor};
use data::vocab::{GeneVocab, CLS, UNK};
use data::{Loader, LoaderOptions, Pipeline, Position};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn pbmc() -> PathBuf {
    let shared =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/pbmc68k_counts.h5ad");
    if shared.exists() {
        shared
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pbmc68k_counts.h5ad")
    }
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("hvg_pbmc68k.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn normalization_matches_scanpy() {
    let r = reference();
    let ds = Dataset::open(&[pbmc()], "human_protein_coding").unwrap();
    let pre = Preprocessor::build(&PreprocessingConfig::default(), &ds).unwrap();
    let block = ds.read_cells(&[0, 1, 2]).unwrap();
    for (i, cell) in r["first_cells"].as_array().unwrap().iter().enumerate() {
        let (_, g, v) = block.cell(i);
        let (mut og, mut ov) = (vec![], vec![]);
        pre.apply(g, v, &mut og, &mut ov);
        let names: Vec<&str> = og.iter().map(|&id| ds.vocab().token(id).unwrap()).collect();
        let want_names: Vec<&str> = cell["genes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        // scanpy's order is the file's column order; ours too, but compare as sets of pairs
        let mut ours: Vec<(&str, f32)> = names.into_iter().zip(ov).collect();
        let mut theirs: Vec<(&str, f32)> = want_names
            .into_iter()
            .zip(
                cell["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32),
            )
            .collect();
        ours.sort_by(|a, b| a.0.cmp(b.0));
        theirs.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.0, b.0);
            assert!(
                (a.1 - b.1).abs() <= 1e-5 * b.1.max(1.0),
                "{} {} vs {}",
                a.0,
                a.1,
                b.1
            );
        }
    }
}

#[test]
fn hvg_matches_scanpy_seurat() {
    let r = reference();
    let ds = Dataset::open(&[pbmc()], "human_protein_coding").unwrap();
    let stats = gene_stats(&ds, Some(1e4)).unwrap();
    let table = seurat_hvg(&stats, 200);
    let genes: Vec<&str> = r["genes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let mut checked = 0;
    for (j, g) in genes.iter().enumerate() {
        let k = (ds.vocab().id(g) - 4) as usize;
        let want_mean = r["means"][j].as_f64().unwrap();
        assert!(
            (table.means[k] - want_mean).abs() < 1e-4 * want_mean.abs().max(1.0),
            "{g} mean {} vs {want_mean}",
            table.means[k]
        );
        match r["dispersions_norm"][j].as_f64() {
            Some(want) => {
                let got = table.dispersions_norm[k];
                assert!(
                    (got - want).abs() < 1e-3 * want.abs().max(1.0),
                    "{g} disp_norm {got} vs {want}"
                );
                checked += 1;
            }
            None => assert!(table.dispersions_norm[k].is_nan(), "{g}"),
        }
    }
    assert!(checked > 700);
    let want: HashSet<&str> = r["highly_variable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let got: HashSet<&str> = table
        .highly_variable
        .iter()
        .enumerate()
        .filter(|(_, &h)| h)
        .map(|(k, _)| ds.vocab().genes()[k].as_str())
        .collect();
    assert_eq!(want.len(), 200);
    assert_eq!(got, want);
}

#[test]
fn hvg_selection_restricts_tokens() {
    let mut cfg = ScModelForgeConfig::default();
    cfg.data.paths = vec![pbmc().display().to_string()];
    cfg.data.preprocessing.hvg_selection = Some(100);
    let p = Pipeline::from_config(&cfg).unwrap();
    let keep = p.preprocessor.keep.as_ref().unwrap();
    assert_eq!(keep.iter().filter(|&&k| k).count(), 100);
    let b = p
        .batch(&[0, 1, 2, 3], None, &mut Default::default())
        .unwrap();
    for (&id, &m) in b.gene_ids.iter().zip(&b.attention_mask) {
        if m == 1 && id != CLS {
            assert!(keep[id as usize]);
        }
    }
}

#[test]
fn multi_file_dataset_with_different_genes() {
    // Vocabulary built from the union: GA..GE plus GZ, sorted.
    let ds = Dataset::open(
        &[fixture("csr_f32.h5ad"), fixture("other_genes.h5ad")],
        "human_protein_coding",
    )
    .unwrap();
    assert_eq!(ds.vocab().genes(), &["GA", "GB", "GC", "GD", "GE", "GZ"]);
    assert_eq!(ds.n_cells(), 9);
    assert_eq!(ds.unknown_genes(), &[0, 0]);
    // cell 6 = other_genes row 0: GC=2, GA=1
    let b = ds.read_cells(&[6, 0]).unwrap();
    let (_, g, v) = b.cell(0);
    let names: Vec<&str> = g.iter().map(|&id| ds.vocab().token(id).unwrap()).collect();
    assert_eq!((names, v.to_vec()), (vec!["GC", "GA"], vec![2.0, 1.0]));
    assert_eq!(b.cell(1).0, 0);

    // A given vocabulary: genes outside it become [UNK] and are counted.
    let dir = std::env::temp_dir().join(format!("anvil-vocab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vocab_path = dir.join("genes.txt");
    std::fs::write(&vocab_path, "GA\nGC\n").unwrap();
    let ds = Dataset::open(
        &[fixture("csr_f32.h5ad"), fixture("other_genes.h5ad")],
        vocab_path.to_str().unwrap(),
    )
    .unwrap();
    assert_eq!(ds.unknown_genes(), &[3, 1]);
    let b = ds.read_cells(&[1]).unwrap();
    assert!(b.cell(0).1.iter().all(|&id| id == UNK));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn empty_cells_are_skipped_and_counted() {
    let ds = Dataset::open(&[fixture("csr_f32.h5ad")], "x").unwrap();
    let plan = ShardPlan::for_dataset(&ds, 0.0, 1).unwrap();
    assert_eq!(plan.skipped_empty, 1);
    assert!(!plan.train.contains(&3));
    assert_eq!(plan.train.len(), 5);
}

fn pipeline(strategy: TokenizerStrategy) -> (Arc<Pipeline>, ShardPlan) {
    let mut cfg = ScModelForgeConfig::default();
    cfg.data.paths = vec![pbmc().display().to_string()];
    cfg.tokenizer.strategy = strategy;
    cfg.tokenizer.max_genes = 128;
    let p = Pipeline::from_config(&cfg).unwrap();
    let plan = ShardPlan::for_dataset(&p.dataset, 0.05, 42).unwrap();
    (Arc::new(p), plan)
}

fn opts(rank: usize, world: usize, batch: usize, workers: usize) -> LoaderOptions {
    LoaderOptions {
        rank,
        world_size: world,
        batch_size: batch,
        num_workers: workers,
        split: Split::Train,
        mask: true,
    }
}

#[test]
fn loader_world_size_invariant_and_deterministic() {
    let (p, plan) = pipeline(TokenizerStrategy::RankValue);
    let epoch = 1;
    let single: Vec<_> = Loader::new(
        p.clone(),
        &plan,
        opts(0, 1, 24, 2),
        Position { epoch, step: 0 },
    )
    .unwrap()
    .map(|b| b.unwrap())
    .collect();
    assert_eq!(single.len(), plan.train.len() / 24);
    // 3 ranks x 8: each step's union of cells equals the single-worker batch, and each cell's
    // tokens (including masking) are identical.
    let ranks: Vec<Vec<_>> = (0..3)
        .map(|r| {
            Loader::new(
                p.clone(),
                &plan,
                opts(r, 3, 8, 1),
                Position { epoch, step: 0 },
            )
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
        })
        .collect();
    let mut seen = HashSet::new();
    for (s, big) in single.iter().enumerate() {
        let mut cells = Vec::new();
        for r in &ranks {
            let b = &r[s];
            assert_eq!(b.batch_size, 8);
            for i in 0..b.batch_size {
                let j = big.cells.iter().position(|&c| c == b.cells[i]).unwrap();
                let row = |x: &data::Batch, i: usize| {
                    let lo = i * x.seq_len;
                    let n = x.attention_mask[lo..lo + x.seq_len]
                        .iter()
                        .filter(|&&m| m == 1)
                        .count();
                    (
                        x.gene_ids[lo..lo + n].to_vec(),
                        x.labels[lo..lo + n].to_vec(),
                        x.values[lo..lo + n].to_vec(),
                    )
                };
                assert_eq!(row(b, i), row(big, j));
            }
            cells.extend_from_slice(&b.cells);
        }
        cells.sort_unstable();
        let mut big_cells = big.cells.clone();
        big_cells.sort_unstable();
        assert_eq!(cells, big_cells);
        for c in cells {
            assert!(seen.insert(c));
        }
    }
    // no prefetch gives the same batches
    let sync: Vec<_> = Loader::new(
        p.clone(),
        &plan,
        opts(0, 1, 24, 0),
        Position { epoch, step: 0 },
    )
    .unwrap()
    .map(|b| b.unwrap())
    .collect();
    assert_eq!(sync, single);
}

#[test]
fn loader_resumes_mid_epoch() {
    let (p, plan) = pipeline(TokenizerStrategy::BinnedExpression);
    let mut l = Loader::new(
        p.clone(),
        &plan,
        opts(0, 1, 16, 2),
        Position { epoch: 0, step: 0 },
    )
    .unwrap();
    let first: Vec<_> = (&mut l).take(5).map(|b| b.unwrap()).collect();
    let pos = l.position();
    assert_eq!(pos, Position { epoch: 0, step: 5 });
    let rest_a: Vec<_> = l.map(|b| b.unwrap()).collect();
    let rest_b: Vec<_> = Loader::new(p.clone(), &plan, opts(0, 1, 16, 3), pos)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(rest_a, rest_b);
    assert_eq!(first.len() + rest_a.len(), plan.train.len() / 16);
    // different epoch, different order
    let e1: Vec<_> = Loader::new(p, &plan, opts(0, 1, 16, 1), Position { epoch: 1, step: 0 })
        .unwrap()
        .take(1)
        .map(|b| b.unwrap())
        .collect();
    assert_ne!(e1[0].cells, first[0].cells);
}

#[test]
fn batches_are_padded_with_masks() {
    for strategy in [
        TokenizerStrategy::RankValue,
        TokenizerStrategy::BinnedExpression,
        TokenizerStrategy::ContinuousProjection,
    ] {
        let (p, plan) = pipeline(strategy);
        let b = Loader::new(p.clone(), &plan, opts(0, 1, 8, 0), Position::default())
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(b.shape(), [8, b.seq_len]);
        assert!(b.seq_len <= 128);
        for i in 0..8 {
            let row = i * b.seq_len;
            assert_eq!(b.gene_ids[row], CLS);
            let n = b.attention_mask[row..row + b.seq_len]
                .iter()
                .filter(|&&m| m == 1)
                .count();
            assert!(b.attention_mask[row..row + n].iter().all(|&m| m == 1));
            for k in n..b.seq_len {
                assert_eq!(
                    (b.gene_ids[row + k], b.labels[row + k], b.values[row + k]),
                    (0, IGNORE_INDEX, 0.0)
                );
            }
            let masked = b.labels[row..row + n]
                .iter()
                .filter(|&&l| l != IGNORE_INDEX)
                .count();
            assert_eq!(masked, ((n - 1) as f64 * 0.15).round().max(1.0) as usize);
        }
        if strategy == TokenizerStrategy::BinnedExpression {
            assert!(b
                .target_values
                .iter()
                .all(|&v| v == v.floor() && (0.0..=50.0).contains(&v)));
        }
    }
}

#[test]
fn validation_loader_covers_val_cells() {
    let (p, plan) = pipeline(TokenizerStrategy::RankValue);
    let mut cells = Vec::new();
    for r in 0..2 {
        let o = LoaderOptions {
            split: Split::Val,
            ..opts(r, 2, 4, 1)
        };
        for b in Loader::new(p.clone(), &plan, o, Position::default()).unwrap() {
            cells.extend(b.unwrap().cells);
        }
    }
    cells.sort_unstable();
    assert_eq!(cells, plan.val);
    assert_eq!(plan.val.len(), 35);
    let _ = GeneVocab::from_genes(["A"]);
}

#[test]
fn gene_embedding_strategy_loads_vectors() {
    let dir = std::env::temp_dir().join(format!("anvil-ge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 2 genes x 3 dims, float32 .npy with a gene list beside it
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in [1f32, 2., 3., 4., 5., 6.] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let npy = dir.join("g2v.npy");
    std::fs::write(&npy, bytes).unwrap();
    std::fs::write(dir.join("g2v.genes.txt"), "GC\nGA\n").unwrap();

    let mut cfg = ScModelForgeConfig::default();
    cfg.data.paths = vec![fixture("csr_f32.h5ad").display().to_string()];
    cfg.tokenizer.strategy = TokenizerStrategy::GeneEmbedding;
    cfg.tokenizer.embedding_path = Some(npy.display().to_string());
    cfg.tokenizer.embedding_dim = 3;
    let p = Pipeline::from_config(&cfg).unwrap();
    let e = p.tokenizer.embedding.as_ref().unwrap();
    assert_eq!(e.vector(p.vocab().id("GA")), &[4., 5., 6.]);
    assert_eq!(e.missing, 3);
    // values are continuous (normalized log1p), like continuous_projection
    let b = p.batch(&[0], None, &mut Default::default()).unwrap();
    assert_eq!(
        b.gene_ids[..3],
        [CLS, p.vocab().id("GC"), p.vocab().id("GA")]
    );
    assert!((b.values[1] - (1e4f32 * 3.0 / 4.0).ln_1p()).abs() < 1e-4);

    cfg.tokenizer.embedding_dim = 200;
    let e = Pipeline::from_config(&cfg).err().unwrap().to_string();
    assert!(
        e.contains("g2v.npy") && e.contains("embedding_dim is 200"),
        "{e}"
    );
    cfg.tokenizer.embedding_path = None;
    assert!(Pipeline::from_config(&cfg).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// The PBMC pipeline for the fast-path-vs-general-path comparisons.
fn count_pipeline(strategy: TokenizerStrategy, hvg: Option<usize>, max_genes: usize) -> Pipeline {
    let mut cfg = ScModelForgeConfig::default();
    cfg.data.paths = vec![pbmc().display().to_string()];
    cfg.tokenizer.strategy = strategy;
    cfg.tokenizer.max_genes = max_genes;
    cfg.data.preprocessing.hvg_selection = hvg;
    Pipeline::from_config(&cfg).unwrap()
}

#[test]
fn count_fast_path_equals_general_path() {
    for (strategy, hvg, max_genes) in [
        (TokenizerStrategy::RankValue, None, 2048),
        (TokenizerStrategy::RankValue, Some(150), 64),
        (TokenizerStrategy::BinnedExpression, None, 100),
        (TokenizerStrategy::ContinuousProjection, None, 2048),
    ] {
        let p = count_pipeline(strategy, hvg, max_genes);
        let block = p.dataset.read_file_rows(0, 0, 700).unwrap();
        let (mut a, mut b) = (
            data::pipeline::Workspace::default(),
            data::pipeline::Workspace::default(),
        );
        for i in 0..block.len() {
            let (_, g, v) = block.cell(i);
            p.tokenize_into(g, v, &mut a);
            p.tokenize_general(g, v, &mut b);
            assert_eq!(a.cell(), b.cell(), "cell {i} {strategy:?}");
        }
        // large counts (above the histogram range) are ordered by comparison, same result
        let (_, g0, v0) = block.cell(1);
        let big: Vec<f32> = v0
            .iter()
            .enumerate()
            .map(|(k, x)| if k % 3 == 0 { x * 700.0 } else { *x })
            .collect();
        assert!(big.iter().any(|&x| x > 1024.0));
        p.tokenize_into(g0, &big, &mut a);
        p.tokenize_general(g0, &big, &mut b);
        assert_eq!(a.cell(), b.cell());
        // non-integer values take the general path and still work
        let (mut g, mut v) = (vec![], vec![]);
        let (_, g0, v0) = block.cell(0);
        g.extend_from_slice(g0);
        v.extend(v0.iter().map(|x| x * 0.5));
        p.tokenize_into(&g, &v, &mut a);
        p.tokenize_general(&g, &v, &mut b);
        assert_eq!(a.cell(), b.cell());
    }
}

#[test]
fn count_fast_path_equals_general_path_on_random_cells() {
    use data::rng::{CounterRng, Stream};
    // Random count rows with the cases the counting sort treats specially: zeros, counts
    // above its histogram, cells longer than max_genes, [UNK] genes, genes outside the HVG
    // set, library sizes past 2^24 (where f32 sums stop being exact), and empty cells.
    for (strategy, hvg, max_genes) in [
        (TokenizerStrategy::RankValue, None, 2048),
        (TokenizerStrategy::RankValue, Some(150), 64),
        (TokenizerStrategy::BinnedExpression, None, 100),
        (TokenizerStrategy::ContinuousProjection, None, 300),
    ] {
        let p = count_pipeline(strategy, hvg, max_genes);
        let vocab_len = p.vocab().len() as u64;
        let (mut a, mut b) = (
            data::pipeline::Workspace::default(),
            data::pipeline::Workspace::default(),
        );
        let mut rng = CounterRng::new(9, Stream::Synth, &[]);
        for cell in 0..300u64 {
            let n = match cell % 7 {
                0 => 0,
                1 => 3000,
                _ => rng.below(600) as usize,
            };
            let big = cell % 5 == 0;
            let huge = cell % 11 == 0;
            let genes: Vec<u32> = (0..n)
                .map(|_| 1 + rng.below(vocab_len - 1) as u32)
                .collect();
            let vals: Vec<f32> = (0..n)
                .map(|_| match rng.below(10) {
                    0 => 0.0,
                    1 if big => (1000 + rng.below(5000)) as f32,
                    1..=3 if huge => (40_000 + rng.below(25_000)) as f32,
                    _ => (1 + rng.below(6)) as f32,
                })
                .collect();
            p.tokenize_into(&genes, &vals, &mut a);
            p.tokenize_general(&genes, &vals, &mut b);
            assert_eq!(a.cell(), b.cell(), "cell {cell} {strategy:?}");
        }
    }
}
