//! `worker benchmark` (run by `coordinator benchmark`): the config's `eval.benchmarks` on the
//! cell embeddings of a checkpoint, written to `results.json`, `report.md` and `embedding.png`
//! (a 2-D picture) in an output directory.
//!
//! The embeddings are those `worker embed` computes (the checkpoint's model, tokenizer and
//! vocabulary, `model.pooling`, dropout off). Two references are computed by the same code for
//! comparison: `--embedding untrained` (the checkpoint's architecture with its weights at
//! initialization, `training.seed`) and `--embedding pca` (principal components of
//! log-normalized expression, no model). Benchmarks follow scModelForge's definitions
//! (`scmodelforge/eval/`): linear_probe, embedding_quality and perturbation; the ones this
//! build has are listed in `run::support::BENCHMARKS`, and a config naming another is refused
//! before anything is computed.

pub mod graph;
pub mod logreg;
pub mod metrics;
pub mod pca;
pub mod perturb;
pub mod plot;
pub mod split;
pub mod umap;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use configs::schema::Value;
use configs::scmodelforge::{BenchmarkSpec, ScModelForgeConfig};
use data::anndata::ObsColumn;
use serde_json::json;

use crate::embed::Embedder;

/// Which cell representation the benchmarks score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// The checkpoint's model.
    Model,
    /// The checkpoint's architecture at initialization (weights from `training.seed`).
    Untrained,
    /// The first `n` principal components of log-normalized expression (no model).
    Pca(usize),
}

impl Embedding {
    fn label(self) -> String {
        match self {
            Embedding::Model => "model".into(),
            Embedding::Untrained => "untrained".into(),
            Embedding::Pca(n) => format!("pca{n}"),
        }
    }
}

/// What `worker benchmark` is asked to do.
#[derive(Debug, Clone)]
pub struct BenchmarkOptions {
    /// The config whose `eval` section lists the benchmarks (and whose `data.paths` is the
    /// default data).
    pub config: PathBuf,
    pub overrides: Vec<String>,
    /// A checkpoint directory or a directory of checkpoints; needed unless `embedding` is PCA.
    pub checkpoint: Option<PathBuf>,
    /// The AnnData file to benchmark on [default: the config's only `data.paths` entry].
    pub data: Option<PathBuf>,
    /// Directory for `results.json` and `report.md` (created; those two files are replaced).
    pub output: PathBuf,
    pub embedding: Embedding,
    /// Cells per forward pass [default: `eval.batch_size`].
    pub batch_size: Option<usize>,
    /// Take the embeddings (of `embedding`, model or untrained) from the parts that `of`
    /// workers wrote into `dir` (see [`crate::embed_parts`]) instead of computing them.
    pub from_parts: Option<(usize, PathBuf)>,
}

/// One benchmark's outcome, in scModelForge's `BenchmarkResult` shape.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub benchmark_name: String,
    pub dataset_name: String,
    /// Metric name and value, in report order.
    pub metrics: Vec<(String, f64)>,
    pub metadata: serde_json::Value,
}

/// Loads the config, refusing benchmarks this build does not have.
pub fn load_config(opts: &BenchmarkOptions) -> anyhow::Result<ScModelForgeConfig> {
    let cfg: ScModelForgeConfig =
        configs::load_file_as(&opts.config, &opts.overrides).map_err(|e| anyhow!("{e}"))?;
    if let Some(why) = run::support::unsupported_benchmark(&cfg) {
        bail!("{}: {why}", opts.config.display());
    }
    Ok(cfg)
}

/// The benchmarks to run: `eval.benchmarks`, or linear_probe alone when it is empty (as
/// scModelForge's harness falls back).
pub fn benchmarks(cfg: &ScModelForgeConfig) -> Vec<BenchmarkSpec> {
    if cfg.eval.benchmarks.is_empty() {
        vec![BenchmarkSpec {
            name: "linear_probe".into(),
            ..Default::default()
        }]
    } else {
        cfg.eval.benchmarks.clone()
    }
}

/// Runs every benchmark and writes `results.json` and `report.md`; returns the results.
pub fn run(opts: &BenchmarkOptions) -> anyhow::Result<Vec<BenchResult>> {
    let cfg = load_config(opts)?;
    let specs = benchmarks(&cfg);
    let data = run::support::benchmark_data(&cfg, opts.data.as_deref(), &opts.config)
        .map_err(|e| anyhow!(e))?;
    // Labels first: a missing column fails before minutes of embedding.
    check_labels(&specs, &data)?;
    let t0 = Instant::now();
    let (x, dim, source) = embeddings(opts, &data)?;
    let n = x.len() / dim.max(1);
    eprintln!(
        "benchmark: {n} cells x {dim} ({source}) in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let dataset_name = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let results = run_specs(&x, dim, &data, &dataset_name, &specs)?;
    let key = label_key(&specs[0])?;
    let legend = plot_embedding(&x, dim, &data, &key, &opts.output)?;
    write_outputs(opts, &data, &source, dim, n, &results, &legend)?;
    Ok(results)
}

/// Checks that `data` has the obs columns (and, for perturbation, the control label) every
/// benchmark of `specs` reads, and that their parameters are known: before any embedding.
pub fn check_labels(specs: &[BenchmarkSpec], data: &Path) -> anyhow::Result<()> {
    for (i, s) in specs.iter().enumerate() {
        let at = || format!("eval.benchmarks[{i}] ({})", s.name);
        if s.name == "perturbation" {
            let p = perturb::PerturbParams::from_spec(s)
                .with_context(|| format!("eval.benchmarks[{i}]"))?;
            let f =
                data::anndata::open(data).with_context(|| format!("--data {}", data.display()))?;
            perturb::read_groups(f.as_ref(), &p.perturbation_key, &p.control_label)
                .with_context(at)?;
            continue;
        }
        let key = label_key(s).with_context(|| format!("eval.benchmarks[{i}]"))?;
        read_classes(data, &key).with_context(at)?;
    }
    Ok(())
}

/// Runs every benchmark of `specs` on the embeddings `x` [cells, dim] of the cells of `data`
/// (in file order), naming the dataset `dataset_name` in the results.
pub fn run_specs(
    x: &[f64],
    dim: usize,
    data: &Path,
    dataset_name: &str,
    specs: &[BenchmarkSpec],
) -> anyhow::Result<Vec<BenchResult>> {
    let mut results = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let t = Instant::now();
        let mut r = match s.name.as_str() {
            "linear_probe" => linear_probe(x, dim, data, dataset_name, s),
            "embedding_quality" => embedding_quality(x, dim, data, dataset_name, s),
            "perturbation" => perturbation(x, dim, data, dataset_name, s),
            // Refused at start by run::support::unsupported_benchmark; kept as an error, not a
            // panic, for callers that skip that check.
            other => Err(anyhow!("{other} is not a benchmark this build runs")),
        }
        .with_context(|| format!("eval.benchmarks[{i}] ({})", s.name))?;
        // scModelForge's harness treats `dataset` as routing metadata and runs every
        // benchmark on the dataset at hand; it is kept in the result for the record.
        if let (Some(d), Some(m)) = (&s.dataset, r.metadata.as_object_mut()) {
            m.insert("dataset_spec".into(), json!(d));
        }
        eprintln!(
            "benchmark: {} {} ({:.1}s)",
            r.benchmark_name,
            r.metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.4}"))
                .collect::<Vec<_>>()
                .join(" "),
            t.elapsed().as_secs_f64()
        );
        results.push(r);
    }
    Ok(results)
}

/// The obs column of cell labels a benchmark reads (and the picture is coloured by, for the
/// first benchmark): `cell_type_key`, or perturbation's `perturbation_key`.
fn label_key(spec: &BenchmarkSpec) -> anyhow::Result<String> {
    Ok(match spec.name.as_str() {
        "embedding_quality" => QualityParams::from_spec(spec)?.cell_type_key,
        "perturbation" => perturb::PerturbParams::from_spec(spec)?.perturbation_key,
        _ => ProbeParams::from_spec(spec)?.cell_type_key,
    })
}

/// The cell representation `opts.embedding` names, row-major [cells, dim] in f64, its width
/// and a description.
fn embeddings(opts: &BenchmarkOptions, data: &Path) -> anyhow::Result<(Vec<f64>, usize, String)> {
    if let Embedding::Pca(k) = opts.embedding {
        let (x, n, g) = pca::log_normalized(data)?;
        let s = pca::scores(&x, n, g, k)?;
        return Ok((
            s,
            k,
            format!("first {k} principal components of log-normalized expression"),
        ));
    }
    let ckpt = opts
        .checkpoint
        .as_ref()
        .ok_or_else(|| anyhow!("--checkpoint is required (except with --embedding pca)"))?;
    let mut emb = Embedder::load(ckpt)?;
    let source = if opts.embedding == Embedding::Untrained {
        let seed = emb.reset_to_initialization();
        format!(
            "untrained {} (weights at initialization, seed {seed}) of {}",
            emb.cfg.model.architecture.as_str(),
            emb.dir.display()
        )
    } else {
        format!(
            "{} embeddings of {}",
            emb.cfg.model.pooling.as_str(),
            emb.dir.display()
        )
    };
    let (v, dim) = match &opts.from_parts {
        Some((of, dir)) => {
            let (v, n, dim) = crate::embed_parts::read_all(dir, *of)?;
            let n_obs = data::anndata::open(data)
                .with_context(|| format!("--data {}", data.display()))?
                .n_obs();
            if n != n_obs || dim != emb.model.embedding_dim() {
                bail!(
                    "the embedding parts in {} hold {n} cells of width {dim}, expected {n_obs} of width {}",
                    dir.display(),
                    emb.model.embedding_dim()
                );
            }
            (v, dim)
        }
        None => {
            let cfg = load_config(opts)?;
            let batch = opts.batch_size.unwrap_or(cfg.eval.batch_size);
            let pipeline = emb.pipeline(data)?;
            let dim = emb.model.embedding_dim();
            (emb.embed_all(&pipeline, batch, &mut |_, _| {})?, dim)
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("the embedding of cell {} is not finite", i / dim);
    }
    Ok((v.iter().map(|&x| x as f64).collect(), dim, source))
}

/// linear_probe's parameters, with scModelForge's defaults.
#[derive(Debug, Clone)]
pub struct ProbeParams {
    pub cell_type_key: String,
    pub test_size: f64,
    pub max_iter: usize,
    pub seed: u64,
}

impl ProbeParams {
    pub fn from_spec(spec: &BenchmarkSpec) -> anyhow::Result<Self> {
        let mut p = ProbeParams {
            cell_type_key: "cell_type".into(),
            test_size: 0.2,
            max_iter: 1000,
            seed: 42,
        };
        for (k, v) in &spec.params.0 {
            match (k.as_str(), v) {
                ("cell_type_key", Value::Str(s)) => p.cell_type_key = s.clone(),
                ("test_size", Value::Float(f)) if *f > 0.0 && *f < 1.0 => p.test_size = *f,
                ("max_iter", Value::Int(i)) if *i > 0 => p.max_iter = *i as usize,
                ("seed", Value::Int(i)) if *i >= 0 => p.seed = *i as u64,
                (k, v) => bail!(
                    "{}: {k}: {v:?} is not allowed (cell_type_key: a string, test_size: a number between 0 and 1, max_iter: a positive integer, seed: a non-negative integer)",
                    spec.name
                ),
            }
        }
        Ok(p)
    }
}

/// Class names (sorted, as scikit-learn's LabelEncoder orders them) and each cell's class,
/// from `obs[key]` of `path`.
pub fn read_classes(path: &Path, key: &str) -> anyhow::Result<(Vec<String>, Vec<u32>)> {
    let f = data::anndata::open(path).with_context(|| format!("--data {}", path.display()))?;
    let cols = f.obs_columns()?;
    if !cols.iter().any(|(n, _)| n == key) {
        let list: Vec<String> = cols.iter().map(|(n, k)| format!("{n} ({k})")).collect();
        bail!(
            "cell_type_key: {} has no obs column {key:?}; its obs columns are: {}",
            path.display(),
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    let text: Vec<String> = match f.obs_column(key)? {
        ObsColumn::Categorical { codes, categories } => {
            if let Some(row) = codes.iter().position(|&c| c < 0) {
                bail!("cell_type_key: obs/{key} of {} has cells without a label (first at row {row})", path.display());
            }
            codes.iter().map(|&c| categories[c as usize].clone()).collect()
        }
        ObsColumn::String(v) => v,
        ObsColumn::Boolean(v) => v.iter().map(|b| b.to_string()).collect(),
        ObsColumn::Numeric(_) => bail!(
            "cell_type_key: obs/{key} of {} is numeric; cell-type labels must be a categorical or string column",
            path.display()
        ),
    };
    let mut names = text.clone();
    names.sort();
    names.dedup();
    if names.len() < 2 {
        bail!(
            "cell_type_key: obs/{key} of {} has {} class(es); a probe needs at least 2",
            path.display(),
            names.len()
        );
    }
    let y = text
        .iter()
        .map(|t| names.binary_search(t).unwrap_or(0) as u32)
        .collect();
    Ok((names, y))
}

/// What [`probe`] returns: the scores, the fitted model, and the train and test sizes.
pub type ProbeOutcome = (Vec<(String, f64)>, logreg::LogReg, usize, usize);

/// The linear probe on `x` (row-major [cells, dim]): the scores of a logistic regression
/// fitted on a stratified split, and the numbers needed to repeat it.
pub fn probe(
    x: &[f64],
    dim: usize,
    y: &[u32],
    n_classes: usize,
    p: &ProbeParams,
) -> anyhow::Result<ProbeOutcome> {
    let (train, test) =
        split::stratified(y, n_classes, p.test_size, p.seed).map_err(|e| anyhow!(e))?;
    let rows = |idx: &[usize]| -> Vec<f64> {
        idx.iter()
            .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
            .collect()
    };
    let (xtr, xte) = (rows(&train), rows(&test));
    let ytr: Vec<u32> = train.iter().map(|&i| y[i]).collect();
    let yte: Vec<u32> = test.iter().map(|&i| y[i]).collect();
    let model = logreg::fit(
        &xtr,
        dim,
        &ytr,
        n_classes,
        logreg::FitOptions {
            max_iter: p.max_iter,
            ..Default::default()
        },
    );
    if !model.converged {
        eprintln!(
            "warning: linear_probe: the logistic regression did not converge in max_iter={} iterations (largest gradient entry {:.2e} > 1e-4; scikit-learn's ConvergenceWarning); its scores are reported as they are",
            p.max_iter, model.grad_max
        );
    }
    let pred = model.predict(&xte);
    let m = vec![
        ("accuracy".to_string(), metrics::accuracy(&yte, &pred)),
        ("f1_macro".to_string(), metrics::f1_macro(&yte, &pred)),
        ("f1_weighted".to_string(), metrics::f1_weighted(&yte, &pred)),
    ];
    Ok((m, model, train.len(), test.len()))
}

/// [`read_classes`] for the cells of the embedding `x` ([cells, dim]): one label per row.
fn classes_of_embedded(
    data: &Path,
    key: &str,
    x: &[f64],
    dim: usize,
) -> anyhow::Result<(Vec<String>, Vec<u32>)> {
    let (names, y) = read_classes(data, key)?;
    if y.len() * dim != x.len() {
        bail!(
            "{} labels for {} embedded cells",
            y.len(),
            x.len() / dim.max(1)
        );
    }
    Ok((names, y))
}

fn linear_probe(
    x: &[f64],
    dim: usize,
    data: &Path,
    dataset_name: &str,
    spec: &BenchmarkSpec,
) -> anyhow::Result<BenchResult> {
    let p = ProbeParams::from_spec(spec)?;
    let (names, y) = classes_of_embedded(data, &p.cell_type_key, x, dim)?;
    let (metrics, model, n_train, n_test) = probe(x, dim, &y, names.len(), &p)?;
    Ok(BenchResult {
        benchmark_name: "linear_probe".into(),
        dataset_name: dataset_name.into(),
        metrics,
        metadata: json!({
            "n_cells": y.len(),
            "n_classes": names.len(),
            "classes": names,
            "test_size": p.test_size,
            "n_train": n_train,
            "n_test": n_test,
            "cell_type_key": p.cell_type_key,
            "seed": p.seed,
            "max_iter": p.max_iter,
            "solver": "L-BFGS, multinomial, L2 with C=1.0, intercept unpenalized",
            "iterations": model.iterations,
            "grad_max": model.grad_max,
            "converged": model.converged,
        }),
    })
}

/// embedding_quality's parameters, with scModelForge's defaults (`batch_key: null` skips the
/// batch metrics; a batch column the file does not have skips them too, as scModelForge does).
#[derive(Debug, Clone)]
pub struct QualityParams {
    pub cell_type_key: String,
    pub batch_key: Option<String>,
    pub n_neighbors: usize,
}

impl QualityParams {
    pub fn from_spec(spec: &BenchmarkSpec) -> anyhow::Result<Self> {
        let mut p = QualityParams {
            cell_type_key: "cell_type".into(),
            batch_key: Some("batch".into()),
            n_neighbors: 15,
        };
        for (k, v) in &spec.params.0 {
            match (k.as_str(), v) {
                ("cell_type_key", Value::Str(s)) => p.cell_type_key = s.clone(),
                ("batch_key", Value::Str(s)) => p.batch_key = Some(s.clone()),
                ("batch_key", Value::Null) => p.batch_key = None,
                ("n_neighbors", Value::Int(i)) if *i >= 2 => p.n_neighbors = *i as usize,
                (k, v) => bail!(
                    "{}: {k}: {v:?} is not allowed (cell_type_key: a string, batch_key: a string or null, n_neighbors: an integer of at least 2)",
                    spec.name
                ),
            }
        }
        Ok(p)
    }
}

/// scib's resolutions for `cluster_optimal_resolution`: 0.1, 0.2, ..., 2.0.
pub const RESOLUTIONS: [f64; 20] = [
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9,
    2.0,
];

/// scib's batch ASW (`silhouette_batch`, scaled): within each cell type with more than one
/// batch (and fewer batches than cells), 1 - |silhouette of each cell by batch|, averaged per
/// cell type, then over cell types. None when no cell type has two batches.
pub fn batch_asw(x: &[f64], dim: usize, labels: &[u32], batches: &[u32]) -> Option<f64> {
    let k = labels.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut means = Vec::new();
    for c in 0..k as u32 {
        let cells: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        let mut b: Vec<u32> = cells.iter().map(|&i| batches[i]).collect();
        let mut distinct = b.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 || distinct.len() == cells.len() {
            continue;
        }
        b.iter_mut()
            .for_each(|v| *v = distinct.binary_search(v).unwrap() as u32);
        let sub: Vec<f64> = cells
            .iter()
            .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        let s = metrics::silhouette_samples(&sub, dim, &b).ok()?;
        means.push(s.iter().map(|v| 1.0 - v.abs()).sum::<f64>() / s.len() as f64);
    }
    if means.is_empty() {
        return None;
    }
    Some(means.iter().sum::<f64>() / means.len() as f64)
}

/// scib's graph connectivity: per cell type, the fraction of its cells in the largest
/// connected component of the kNN graph restricted to them; the mean over cell types.
pub fn graph_connectivity(g: &graph::Graph, labels: &[u32]) -> f64 {
    let k = labels.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let fr: Vec<f64> = (0..k as u32)
        .map(|c| {
            (0..labels.len())
                .filter(|&i| labels[i] == c)
                .collect::<Vec<_>>()
        })
        .filter(|cells| !cells.is_empty())
        .map(|cells| graph::largest_component_fraction(g, &cells))
        .collect();
    fr.iter().sum::<f64>() / fr.len().max(1) as f64
}

fn embedding_quality(
    x: &[f64],
    dim: usize,
    data: &Path,
    dataset_name: &str,
    spec: &BenchmarkSpec,
) -> anyhow::Result<BenchResult> {
    let p = QualityParams::from_spec(spec)?;
    let (_, y) = classes_of_embedded(data, &p.cell_type_key, x, dim)?;
    let g = graph::umap_connectivities(&graph::knn(x, dim, p.n_neighbors));
    // cluster_optimal_resolution: the Leiden clustering with the best NMI over the sweep.
    let mut best: Option<(f64, f64, Vec<u32>)> = None;
    for &r in &RESOLUTIONS {
        let c: Vec<u32> = graph::leiden(&g, r, 0).iter().map(|&v| v as u32).collect();
        let nmi = metrics::nmi(&y, &c);
        if best.as_ref().is_none_or(|b| nmi > b.1) {
            best = Some((r, nmi, c));
        }
    }
    let (resolution, nmi, clusters) = best.expect("resolutions are not empty");
    let ari = metrics::ari(&y, &clusters);
    let asw =
        (metrics::silhouette(x, dim, &y).map_err(|e| anyhow!("asw_cell_type: {e}"))? + 1.0) / 2.0;
    let mut m = vec![
        ("nmi".to_string(), nmi),
        ("ari".to_string(), ari),
        ("asw_cell_type".to_string(), asw),
    ];
    let bio = (nmi + ari + asw) / 3.0;
    let mut batch_note = serde_json::Value::Null;
    let mut overall = bio;
    if let Some(bk) = &p.batch_key {
        let f = data::anndata::open(data)?;
        if f.obs_columns()?.iter().any(|(n, _)| n == bk) {
            let col = f.obs_column(bk)?;
            let text: Vec<String> = (0..col.len()).map(|i| col.value_string(i)).collect();
            let mut names = text.clone();
            names.sort();
            names.dedup();
            if names.len() > 1 {
                let b: Vec<u32> = text
                    .iter()
                    .map(|t| names.binary_search(t).unwrap() as u32)
                    .collect();
                let asw_b = batch_asw(x, dim, &y, &b).ok_or_else(|| {
                    anyhow!("batch_key {bk:?}: no cell type has cells of two batches")
                })?;
                let gc = graph_connectivity(&g, &y);
                m.push(("asw_batch".into(), asw_b));
                m.push(("graph_connectivity".into(), gc));
                overall = 0.6 * bio + 0.4 * (asw_b + gc) / 2.0;
            } else {
                batch_note = json!(format!("obs/{bk} has one batch: batch metrics skipped"));
            }
        } else {
            eprintln!(
                "note: embedding_quality: {} has no obs column {bk:?} (batch_key): batch metrics skipped, as scModelForge skips them",
                data.display()
            );
            batch_note = json!(format!("no obs column {bk:?}: batch metrics skipped"));
        }
    }
    m.push(("overall".into(), overall));
    let n_clusters = clusters.iter().max().map_or(0, |&c| c + 1);
    Ok(BenchResult {
        benchmark_name: "embedding_quality".into(),
        dataset_name: dataset_name.into(),
        metrics: m,
        metadata: json!({
            "n_cells": y.len(),
            "cell_type_key": p.cell_type_key,
            "batch_key": p.batch_key,
            "batch_metrics": batch_note,
            "n_neighbors": p.n_neighbors,
            "leiden_resolution": resolution,
            "n_clusters": n_clusters,
            "leiden": "modularity, local moving + greedy refinement + aggregation until stable, seed 0; best NMI over resolutions 0.1..2.0",
        }),
    })
}

fn perturbation(
    x: &[f64],
    dim: usize,
    data: &Path,
    dataset_name: &str,
    spec: &BenchmarkSpec,
) -> anyhow::Result<BenchResult> {
    let p = perturb::PerturbParams::from_spec(spec)?;
    let prep = perturb::prepare(data, x, dim, &p)?;
    let n = prep.perturbations.len();
    let (train, test) = perturb::split(n, p.test_fraction, p.seed);
    let n_top = p.n_top_genes.min(prep.n_genes);
    let s = perturb::evaluate(&prep.embeddings, &prep.deltas, &train, &test, n_top);
    if s.undefined_r > 0 {
        eprintln!(
            "warning: perturbation: Pearson's r is undefined (a constant input over the top genes) for {} of {} test perturbations; the Pearson means are NaN (null in results.json), as scipy's pearsonr gives",
            s.undefined_r,
            test.len()
        );
    }
    let name = |i: &usize| prep.groups.names[prep.perturbations[*i]].clone();
    Ok(BenchResult {
        benchmark_name: "perturbation".into(),
        dataset_name: dataset_name.into(),
        metrics: s.metrics,
        metadata: json!({
            "n_cells": prep.groups.of_cell.len(),
            "n_perturbations": n,
            "n_train": train.len(),
            "n_test": test.len(),
            "n_top_genes": n_top,
            "perturbation_key": p.perturbation_key,
            "control_label": p.control_label,
            "test_fraction": p.test_fraction,
            "seed": p.seed,
            "test_perturbations": test.iter().map(name).collect::<Vec<_>>(),
            "ridge": "alpha 1.0, intercept unpenalized, closed form on centred data in f64",
            "split": "anvil's seeded permutation of the sorted labels (not numpy's)",
        }),
    })
}

/// What the plot shows: the file, the obs column and each class with its colour.
pub struct PlotLegend {
    pub file: String,
    pub key: String,
    pub classes: Vec<(String, [u8; 3])>,
    /// What the picture shows, in words (the layout and which cells).
    pub shows: String,
}

/// Cells drawn at most: above it, a seeded random subset of this many is laid out (the exact
/// neighbour search of the layout grows with the square of the cells).
pub const PLOT_CELLS: usize = 20_000;

/// Writes `DIR/embedding.png`: a UMAP layout of the embedding ([`umap`]), coloured
/// by `obs[key]`.
fn plot_embedding(
    x: &[f64],
    dim: usize,
    data: &Path,
    key: &str,
    dir: &Path,
) -> anyhow::Result<PlotLegend> {
    let n_all = x.len() / dim.max(1);
    let (names, y_all) = read_classes(data, key)?;
    let (picked, x, y): (Option<usize>, Vec<f64>, Vec<u32>) = if n_all > PLOT_CELLS {
        let mut order: Vec<usize> = (0..n_all).collect();
        data::rng::CounterRng::new(0, data::rng::Stream::Split, &[0x0a3a_9001]).shuffle(&mut order);
        let mut keep = order[..PLOT_CELLS].to_vec();
        keep.sort_unstable();
        let xs = keep
            .iter()
            .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        (
            Some(PLOT_CELLS),
            xs,
            keep.iter().map(|&i| y_all[i]).collect(),
        )
    } else {
        (None, x.to_vec(), y_all)
    };
    let (x, n) = (&x[..], y.len());
    let mut shows = String::from(
        "UMAP of the embedding (15 neighbours, min_dist 0.5; started from the first two principal components, seed 0)",
    );
    if let Some(k) = picked {
        shows.push_str(&format!(
            ", {k} of the {n_all} cells drawn at random (seed 0)"
        ));
    }
    let xy: Vec<(f64, f64)> = if dim >= 2 && n >= 3 {
        let start = pca::scores(x, n, dim, 2)?;
        let u = umap::layout(x, dim, &start, 0);
        u.chunks(2).map(|p| (p[0], p[1])).collect()
    } else if dim >= 2 && n == 2 {
        let s = pca::scores(x, n, dim, 2)?;
        s.chunks(2).map(|p| (p[0], p[1])).collect()
    } else {
        (0..n).map(|i| (x[i * dim], 0.0)).collect()
    };
    let (w, h, rgb) = plot::scatter(&xy, &y, names.len());
    std::fs::create_dir_all(dir).with_context(|| format!("--output {}", dir.display()))?;
    let path = dir.join("embedding.png");
    std::fs::write(&path, plot::encode_png(w, h, &rgb)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(PlotLegend {
        file: "embedding.png".into(),
        key: key.into(),
        shows,
        classes: names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, plot::colour(i)))
            .collect(),
    })
}

fn write_outputs(
    opts: &BenchmarkOptions,
    data: &Path,
    source: &str,
    dim: usize,
    n: usize,
    results: &[BenchResult],
    legend: &PlotLegend,
) -> anyhow::Result<()> {
    let dir = &opts.output;
    std::fs::create_dir_all(dir).with_context(|| format!("--output {}", dir.display()))?;
    let json_results: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let metrics: serde_json::Map<String, serde_json::Value> = r
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({
                "benchmark_name": r.benchmark_name,
                "dataset_name": r.dataset_name,
                "metrics": metrics,
                "metadata": r.metadata,
            })
        })
        .collect();
    let doc = json!({
        "config": opts.config.display().to_string(),
        "checkpoint": opts.checkpoint.as_ref().map(|c| c.display().to_string()),
        "data": data.display().to_string(),
        "embedding": opts.embedding.label(),
        "embedding_source": source,
        "embedding_dim": dim,
        "n_cells": n,
        "results": json_results,
        "plot": {
            "file": legend.file,
            "shows": legend.shows,
            "colour_by": legend.key,
        },
    });
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;

    let mut md = String::new();
    md.push_str("# Benchmark report\n\n");
    md.push_str(&format!("- data: `{}` ({n} cells)\n", data.display()));
    md.push_str(&format!("- embedding: {source} (width {dim})\n"));
    md.push_str(&format!("- config: `{}`\n\n", opts.config.display()));
    for r in results {
        md.push_str(&format!(
            "## {} on {}\n\n| metric | value |\n| --- | --- |\n",
            r.benchmark_name, r.dataset_name
        ));
        for (k, v) in &r.metrics {
            md.push_str(&format!("| {k} | {v:.4} |\n"));
        }
        md.push('\n');
        if let Some(obj) = r.metadata.as_object() {
            let items: Vec<String> = obj
                .iter()
                .filter(|(k, _)| *k != "classes")
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            md.push_str(&format!("{}\n\n", items.join(", ")));
        }
    }
    md.push_str(&format!(
        "## Embedding\n\n![UMAP of the embedding, coloured by {key}]({file})\n\n{shows} (as `sc.pp.neighbors` + `sc.tl.umap` draw one), one dot per cell, coloured by `obs[\"{key}\"]` (the swatches at the right, top to bottom):\n\n| colour | {key} |\n| --- | --- |\n",
        key = legend.key,
        file = legend.file,
        shows = legend.shows
    ));
    for (name, c) in &legend.classes {
        md.push_str(&format!(
            "| #{:02x}{:02x}{:02x} | {name} |\n",
            c[0], c[1], c[2]
        ));
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {}, {} and {}",
        dir.join("results.json").display(),
        path.display(),
        dir.join(&legend.file).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_asw_and_graph_connectivity_by_hand() {
        // One cell type, two batches at 0, 1 (batch 0) and 4, 5 (batch 1) on a line. Silhouettes
        // by batch: cell 0: a 1, b 4.5 -> 3.5/4.5; cell 1: a 1, b 3.5 -> 2.5/3.5; symmetric.
        let x = [0.0, 1.0, 4.0, 5.0];
        let s = [3.5 / 4.5, 2.5 / 3.5, 2.5 / 3.5, 3.5 / 4.5];
        let want = s.iter().map(|v: &f64| 1.0 - v.abs()).sum::<f64>() / 4.0;
        let got = batch_asw(&x, 1, &[0, 0, 0, 0], &[0, 0, 1, 1]).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} {want}");
        // A cell type with one batch only is left out; none with two -> None.
        assert_eq!(batch_asw(&x, 1, &[0, 0, 1, 1], &[0, 0, 1, 1]), None);

        // Path 0-1-2 and an isolated 3. Labels 0,0,0,1: {0, 1, 2} connected (1), {3} (1).
        // Labels 0,1,0,0: {0, 2, 3} has no edge without 1 (largest component 1 of 3), {1} (1).
        let g = graph::Graph {
            adj: vec![
                vec![(1, 1.0)],
                vec![(0, 1.0), (2, 1.0)],
                vec![(1, 1.0)],
                vec![],
            ],
        };
        assert_eq!(graph_connectivity(&g, &[0, 0, 0, 1]), 1.0);
        let gc = graph_connectivity(&g, &[0, 1, 0, 0]);
        assert!((gc - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12, "{gc}");
    }
}
