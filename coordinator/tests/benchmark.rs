//! `coordinator benchmark` end to end: real processes and files. A tiny model is trained for a
//! few steps with `worker train` on the bundled PBMC data; `coordinator benchmark` (which runs
//! the sibling `worker benchmark`) scores its embeddings, the untrained architecture's and 50
//! principal components of expression with the linear probe, writing results.json and
//! report.md. Benchmarks this build does not have are refused by name before anything runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{describe, repo};

fn pbmc() -> PathBuf {
    repo().join("data/pbmc68k_counts.h5ad")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("benchmark", name)
}

const TRAINING: &[&str] = &[
    "training.max_epochs=1",
    "training.log_every_n_steps=1",
    "training.val_split=0.1",
    "training.scheduler=null",
    "training.batch_size=16",
];

fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("run");
        common::train_tiny_run(&dir, TRAINING);
        dir
    })
}

/// A config in `dir` whose data is the bundled file and whose eval section is `eval`.
fn config(dir: &Path, eval: &str) -> PathBuf {
    let path = dir.join("bench.yaml");
    let yaml = format!(
        "data:\n  paths:\n    - {}\neval:\n  batch_size: 100\n{eval}",
        pbmc().display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

const TWO_PROBES: &str = "  benchmarks:\n    - linear_probe\n    - name: linear_probe\n      test_size: 0.3\n      seed: 7\n";

fn benchmark(cfg: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("benchmark")
        .arg("--config")
        .arg(cfg)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

fn metric(r: &serde_json::Value, i: usize, name: &str) -> f64 {
    r["results"][i]["metrics"][name].as_f64().unwrap()
}

#[test]
fn linear_probe_on_a_checkpoint_writes_results_and_report() {
    let dir = scratch("probe");
    let cfg = config(&dir, TWO_PROBES);
    let ckpt = trained_run().join("checkpoints");
    let ckpt_arg = ckpt.to_str().unwrap();
    let out_dir = dir.join("out");
    let out = benchmark(&cfg, &out_dir, &["--checkpoint", ckpt_arg]);
    assert!(out.status.success(), "{}", describe(&out));

    let r = results(&out_dir);
    assert_eq!(r["embedding"], "model");
    assert_eq!(r["n_cells"], 700);
    assert_eq!(r["embedding_dim"], 32);
    let list = r["results"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (i, n_test) in [(0, 140), (1, 210)] {
        assert_eq!(list[i]["benchmark_name"], "linear_probe");
        assert_eq!(list[i]["dataset_name"], "pbmc68k_counts");
        let md = &list[i]["metadata"];
        assert_eq!(md["n_classes"], 10);
        assert_eq!(md["n_test"], n_test, "ceil(test_size * 700) test cells");
        assert_eq!(md["n_train"], 700 - n_test);
        assert_eq!(md["converged"], true);
        for m in ["accuracy", "f1_macro", "f1_weighted"] {
            let v = metric(&r, i, m);
            assert!((0.0..=1.0).contains(&v), "{m} = {v}");
        }
        // A model trained for 3 steps may do no better than the largest class (240 of 700
        // cells); the bundled-data numbers of a pretrained model are in BENCHMARKS.md.
        assert!(metric(&r, i, "accuracy") >= 0.3, "{r}");
    }
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains("## linear_probe on pbmc68k_counts"),
        "{report}"
    );
    assert!(report.contains("| accuracy | "), "{report}");
    assert!(report.contains("(width 32)"), "{report}");
    // The 2-D picture: a PNG (signature, IHDR of 860 x 800), named in the report with the
    // colour of every cell type.
    let png = std::fs::read(out_dir.join("embedding.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(&png[16..24], &[0, 0, 3, 92, 0, 0, 3, 32]);
    assert!(report.contains("](embedding.png)"), "{report}");
    assert!(report.contains("| #1f77b4 | CD14+ Monocyte |"), "{report}");
    assert_eq!(r["plot"]["file"], "embedding.png");

    // Seeded and deterministic: a second run writes the same results.
    let again = dir.join("again");
    let out = benchmark(
        &cfg,
        &again,
        &["--checkpoint", ckpt_arg, "--batch-size", "64"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(results(&again)["results"], r["results"]);
}

#[test]
fn untrained_and_pca_references_run_through_the_same_code() {
    let dir = scratch("refs");
    let cfg = config(&dir, "  benchmarks: [linear_probe]\n");
    let ckpt = trained_run().join("checkpoints");
    let untrained = dir.join("untrained");
    let out = benchmark(
        &cfg,
        &untrained,
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--embedding",
            "untrained",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let u = results(&untrained);
    assert_eq!(u["embedding"], "untrained");
    assert!(
        u["embedding_source"]
            .as_str()
            .unwrap()
            .contains("initialization"),
        "{u}"
    );

    // PCA needs no checkpoint.
    let pca = dir.join("pca");
    let out = benchmark(&cfg, &pca, &["--embedding", "pca", "--n-pcs", "50"]);
    assert!(out.status.success(), "{}", describe(&out));
    let p = results(&pca);
    assert_eq!(p["embedding"], "pca50");
    assert_eq!(p["embedding_dim"], 50);
    // Log-normalized expression separates PBMC cell types well.
    assert!(metric(&p, 0, "accuracy") > 0.6, "{p}");
}

#[test]
fn benchmarks_not_implemented_are_refused_by_name() {
    let dir = scratch("refused");
    let cfg = config(
        &dir,
        "  benchmarks:\n    - linear_probe\n    - name: perturbation\n      n_top_genes: 100\n",
    );
    let out_dir = dir.join("out");
    let out = benchmark(&cfg, &out_dir, &["--embedding", "pca"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("eval.benchmarks[1]")
            && err.contains("the perturbation benchmark is not implemented"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing is written for a refused config");

    let cfg = config(
        &dir,
        "  benchmarks:\n    - name: linear_probe\n      n_folds: 5\n",
    );
    let out = benchmark(&cfg, &out_dir, &["--embedding", "pca"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("eval.benchmarks[0]") && err.contains("\"n_folds\""),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_named() {
    let dir = scratch("bad");
    let cfg = config(
        &dir,
        "  benchmarks:\n    - name: linear_probe\n      cell_type_key: celltype\n",
    );
    let out = benchmark(&cfg, &dir.join("out"), &["--embedding", "pca"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no obs column \"celltype\"") && err.contains("cell_type (categorical"),
        "{err}"
    );

    let cfg = config(&dir, "  benchmarks: [linear_probe]\n");
    let out = benchmark(&cfg, &dir.join("out"), &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--checkpoint is required"),
        "{}",
        describe(&out)
    );
}

#[test]
fn embedding_quality_scores_clusters_and_batches() {
    let dir = scratch("quality");
    // The bundled file has no batches; its cell-cycle phase stands in for one.
    let cfg = config(
        &dir,
        "  benchmarks:\n    - name: embedding_quality\n      batch_key: phase\n    - name: embedding_quality\n      batch_key: null\n      n_neighbors: 10\n",
    );
    let out_dir = dir.join("out");
    let out = benchmark(&cfg, &out_dir, &["--embedding", "pca"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = results(&out_dir);
    let m = |i: usize, k: &str| metric(&r, i, k);
    for k in [
        "nmi",
        "ari",
        "asw_cell_type",
        "asw_batch",
        "graph_connectivity",
        "overall",
    ] {
        assert!((0.0..=1.0).contains(&m(0, k)), "{k}: {r}");
    }
    let bio = (m(0, "nmi") + m(0, "ari") + m(0, "asw_cell_type")) / 3.0;
    let batch = (m(0, "asw_batch") + m(0, "graph_connectivity")) / 2.0;
    assert!(
        (m(0, "overall") - (0.6 * bio + 0.4 * batch)).abs() < 1e-12,
        "{r}"
    );
    // Expression PCs cluster PBMC cell types well above chance.
    assert!(m(0, "nmi") > 0.5, "{r}");
    let md = &r["results"][0]["metadata"];
    assert!(md["leiden_resolution"].as_f64().unwrap() > 0.0);
    assert!(md["n_clusters"].as_u64().unwrap() >= 2);
    // Without a batch key: bio metrics only, overall is their mean.
    let second = &r["results"][1]["metrics"];
    assert!(second.get("asw_batch").is_none(), "{r}");
    let bio1 = (m(1, "nmi") + m(1, "ari") + m(1, "asw_cell_type")) / 3.0;
    assert!((m(1, "overall") - bio1).abs() < 1e-12, "{r}");
    // Seeded: the same clusters again.
    let again = dir.join("again");
    let out = benchmark(&cfg, &again, &["--embedding", "pca"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(results(&again)["results"], r["results"]);
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains("## embedding_quality on pbmc68k_counts"),
        "{report}"
    );
}
