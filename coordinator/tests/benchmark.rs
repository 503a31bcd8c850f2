//! `coordinator benchmark` end to end: real processes and files. A tiny model is trained for a
//! few steps with `worker train` on the bundled PBMC data; `coordinator benchmark` (which runs
//! the sibling `worker benchmark`) scores its embeddings, the untrained architecture's and 50
//! principal components of expression with the linear probe, embedding_quality and
//! perturbation, writing results.json and report.md. Benchmarks this build does not have are
//! refused by name before anything runs.

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
        // Files this test process writes (h5ad, under an exclusive HDF5 lock while open) can be
        // inherited, lock and all, by a child that another test thread forks meanwhile; the
        // benchmark only reads, so HDF5's locking is turned off for it.
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
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
        "  benchmarks:\n    - linear_probe\n    - name: cz_clustering\n      k: 5\n",
    );
    let out_dir = dir.join("out");
    let out = benchmark(&cfg, &out_dir, &["--embedding", "pca"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("eval.benchmarks[1]")
            && err.contains("the cz_clustering benchmark is not implemented")
            && err.contains("linear_probe, embedding_quality, perturbation"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing is written for a refused config");
    let cfg = config(&dir, "  benchmarks:\n    - knn_probe\n");
    let out = benchmark(&cfg, &out_dir, &["--embedding", "pca"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scModelForge has no benchmark named \"knn_probe\""),
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

/// A copy of the bundled PBMC file (same X and genes, so the checkpoint's vocabulary applies)
/// whose obs also has a `perturbation` column: each cell's type as `label_of` maps it (for
/// the benchmark, a "perturbation" is then a shift from the control cells' expression).
fn perturbation_file(path: &Path, label_of: impl Fn(&str, &str) -> String) -> Vec<String> {
    use data::anndata::ObsColumn;
    use data::write::{write_h5ad, Compression};
    let src = data::anndata::open(pbmc()).unwrap();
    let n = src.n_obs();
    let rows = src.read_rows(0, n).unwrap();
    let block: Vec<(Vec<u32>, Vec<f32>)> = (0..n)
        .map(|i| {
            let (idx, val) = rows.row(i);
            (idx.to_vec(), val.to_vec())
        })
        .collect();
    let types = src.obs_column("cell_type").unwrap();
    let text: Vec<String> = (0..n).map(|i| types.value_string(i)).collect();
    // The most frequent cell type is the one `label_of` may call control.
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in &text {
        match counts.iter_mut().find(|(c, _)| c == t) {
            Some(e) => e.1 += 1,
            None => counts.push((t.clone(), 1)),
        }
    }
    let largest = counts.iter().max_by_key(|e| e.1).unwrap().0.clone();
    let labels: Vec<String> = text.iter().map(|t| label_of(t, &largest)).collect();
    let obs = vec![
        ("cell_type".to_string(), types),
        (
            "perturbation".to_string(),
            ObsColumn::String(labels.clone()),
        ),
    ];
    let obs_names: Vec<String> = (0..n).map(|i| format!("cell{i}")).collect();
    write_h5ad(
        path,
        src.var_names(),
        &obs_names,
        &obs,
        vec![Ok(block)],
        Compression::None,
    )
    .unwrap();
    let mut distinct = labels;
    distinct.sort();
    distinct.dedup();
    distinct
}

/// The largest cell type is the control; every other type is a perturbation.
fn types_as_perturbations(dir: &Path) -> (PathBuf, Vec<String>) {
    let path = dir.join("perturb.h5ad");
    let labels = perturbation_file(&path, |t, largest| {
        if t == largest {
            "control".into()
        } else {
            t.into()
        }
    });
    (path, labels)
}

const PERTURBATION_METRICS: [&str; 7] = [
    "pearson_mean",
    "mse_mean",
    "direction_accuracy",
    "baseline_pearson_mean",
    "baseline_mse_mean",
    "baseline_direction_accuracy",
    "fraction_above_baseline",
];

fn check_perturbation(r: &serde_json::Value, i: usize, n_test: usize, n_top: usize) {
    let res = &r["results"][i];
    assert_eq!(res["benchmark_name"], "perturbation", "{r}");
    assert_eq!(res["dataset_name"], "perturb");
    let md = &res["metadata"];
    assert_eq!(md["n_cells"], 700);
    assert_eq!(
        md["n_perturbations"], 9,
        "ten cell types, one of them control"
    );
    assert_eq!(md["n_test"], n_test);
    assert_eq!(md["n_train"], 9 - n_test);
    assert_eq!(md["n_top_genes"], n_top);
    assert_eq!(md["control_label"], "control");
    assert_eq!(
        md["test_perturbations"].as_array().unwrap().len(),
        n_test,
        "{md}"
    );
    let metrics = res["metrics"].as_object().unwrap();
    assert_eq!(metrics.len(), PERTURBATION_METRICS.len(), "{res}");
    for k in PERTURBATION_METRICS {
        let v = metric(r, i, k);
        match k {
            "pearson_mean" | "baseline_pearson_mean" => assert!((-1.0..=1.0).contains(&v), "{k}"),
            "mse_mean" | "baseline_mse_mean" => assert!(v > 0.0 && v.is_finite(), "{k} = {v}"),
            _ => assert!((0.0..=1.0).contains(&v), "{k} = {v}"),
        }
    }
}

#[test]
fn perturbation_predicts_expression_shifts_from_embeddings() {
    let dir = scratch("perturbation");
    let (data, labels) = types_as_perturbations(&dir);
    assert_eq!(labels.len(), 10);
    let data_arg = data.to_str().unwrap();

    // 50 PCs of expression, no checkpoint.
    let cfg = config(
        &dir,
        "  benchmarks:\n    - name: perturbation\n      test_fraction: 0.4\n      n_top_genes: 20\n      seed: 3\n",
    );
    let pca = dir.join("pca");
    let out = benchmark(
        &cfg,
        &pca,
        &["--data", data_arg, "--embedding", "pca", "--n-pcs", "50"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let r = results(&pca);
    assert_eq!(r["results"].as_array().unwrap().len(), 1);
    check_perturbation(&r, 0, 3, 20);
    // The cell types' mean PCs carry their expression shifts: ridge's squared error on the
    // top genes is well below the mean shift's (about 3 against 15 when measured).
    assert!(
        metric(&r, 0, "mse_mean") < 0.5 * metric(&r, 0, "baseline_mse_mean"),
        "{r}"
    );
    assert!(metric(&r, 0, "pearson_mean") > 0.5, "{r}");
    let report = std::fs::read_to_string(pca.join("report.md")).unwrap();
    assert!(report.contains("## perturbation on perturb"), "{report}");
    for k in PERTURBATION_METRICS {
        assert!(report.contains(&format!("| {k} | ")), "{k}: {report}");
    }
    // The picture is coloured by the first benchmark's label column.
    assert!(report.contains("| control |"), "{report}");
    assert_eq!(r["plot"]["colour_by"], "perturbation");
    // Seeded: the same split and numbers again.
    let again = dir.join("again");
    let out = benchmark(
        &cfg,
        &again,
        &["--data", data_arg, "--embedding", "pca", "--n-pcs", "50"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(results(&again)["results"], r["results"]);

    // A checkpoint's embeddings, next to the linear probe on the same file and defaults
    // (test_fraction 0.2 of 9: one test perturbation; 50 top genes).
    let cfg = config(
        &dir,
        "  benchmarks:\n    - linear_probe\n    - perturbation\n",
    );
    let model = dir.join("model");
    let ckpt = trained_run().join("checkpoints");
    let out = benchmark(
        &cfg,
        &model,
        &["--data", data_arg, "--checkpoint", ckpt.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let r = results(&model);
    assert_eq!(r["results"][0]["benchmark_name"], "linear_probe");
    check_perturbation(&r, 1, 1, 50);
    let report = std::fs::read_to_string(model.join("report.md")).unwrap();
    assert!(report.contains("| baseline_pearson_mean | "), "{report}");
}

#[test]
fn perturbation_inputs_are_checked_and_named() {
    let dir = scratch("perturbation_bad");
    let (data, labels) = types_as_perturbations(&dir);
    let run = |eval: &str, data: &Path| {
        let cfg = config(&dir, eval);
        let out = benchmark(
            &cfg,
            &dir.join("out"),
            &["--data", data.to_str().unwrap(), "--embedding", "pca"],
        );
        assert!(!out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A missing column lists the columns there are.
    let err = run(
        "  benchmarks:\n    - name: perturbation\n      perturbation_key: guide\n",
        &data,
    );
    assert!(
        err.contains("eval.benchmarks[0] (perturbation)")
            && err.contains("no obs column \"guide\"")
            && err.contains("cell_type (categorical")
            && err.contains("perturbation (string)"),
        "{err}"
    );
    // An absent control label lists the labels found.
    let err = run(
        "  benchmarks:\n    - name: perturbation\n      control_label: ctrl\n",
        &data,
    );
    assert!(
        err.contains("control_label: \"ctrl\" is not a label of obs/perturbation")
            && err.contains(&labels.join(", ")),
        "{err}"
    );
    // One perturbation besides the control is not enough.
    let one = dir.join("one.h5ad");
    perturbation_file(&one, |t, largest| {
        if t == largest {
            "control".into()
        } else {
            "KO_1".into()
        }
    });
    let err = run("  benchmarks: [perturbation]\n", &one);
    assert!(
        err.contains("1 non-control perturbation(s) (KO_1)") && err.contains("at least 2"),
        "{err}"
    );
    // Parameters: an unknown one is refused by name before anything runs, a bad value with
    // what is allowed.
    let err = run(
        "  benchmarks:\n    - name: perturbation\n      n_top: 20\n",
        &data,
    );
    assert!(
        err.contains("eval.benchmarks[0]: perturbation has no parameter \"n_top\"")
            && err.contains("n_top_genes"),
        "{err}"
    );
    let err = run(
        "  benchmarks:\n    - name: perturbation\n      test_fraction: 1.5\n",
        &data,
    );
    assert!(
        err.contains("test_fraction") && err.contains("between 0 and 1"),
        "{err}"
    );
}

#[test]
fn several_worker_processes_embed_for_the_same_scores() {
    let dir = scratch("nodes");
    let cfg = config(&dir, TWO_PROBES);
    let ckpt = trained_run().join("checkpoints");
    let ckpt_arg = ckpt.to_str().unwrap();
    for embedding in ["model", "untrained"] {
        let (one, two) = (
            dir.join(format!("{embedding}1")),
            dir.join(format!("{embedding}2")),
        );
        let out = benchmark(
            &cfg,
            &one,
            &["--checkpoint", ckpt_arg, "--embedding", embedding],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let out = benchmark(
            &cfg,
            &two,
            &[
                "--checkpoint",
                ckpt_arg,
                "--embedding",
                embedding,
                "--nodes",
                "2",
            ],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("embed worker 1/2: cells 350..700 of 700"),
            "{stderr}"
        );
        let (r1, r2) = (results(&one), results(&two));
        assert_eq!(r2["embedding"], embedding);
        assert_eq!(r2["n_cells"], 700);
        assert_eq!(r1["embedding_source"], r2["embedding_source"]);
        for i in 0..2 {
            for m in ["accuracy", "f1_macro", "f1_weighted"] {
                let (a, b) = (metric(&r1, i, m), metric(&r2, i, m));
                assert!((a - b).abs() < 1e-6, "{embedding} {m}: {a} vs {b}");
            }
        }
        // The workers' part files are gone; the outputs are there.
        let names: Vec<String> = std::fs::read_dir(&two)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("parts")), "{names:?}");
        assert!(names.contains(&"results.json".to_string()), "{names:?}");
    }
}

/// `--nodes 2 --external`: two workers started elsewhere register and embed the shares; the
/// scores equal one process's. `--external` with `--embedding pca` (no model) is refused.
#[test]
fn external_workers_embed_for_the_same_scores() {
    use std::process::Stdio;
    let dir = scratch("external");
    let cfg = config(&dir, TWO_PROBES);
    let ckpt = trained_run().join("checkpoints");
    let ckpt_arg = ckpt.to_str().unwrap();
    let one = dir.join("one");
    let out = benchmark(&cfg, &one, &["--checkpoint", ckpt_arg]);
    assert!(out.status.success(), "{}", describe(&out));

    let token = dir.join("token");
    std::fs::write(&token, "benchmark-token\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let two = dir.join("two");
    let coordinator = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .current_dir(repo())
        .arg("benchmark")
        .arg("--config")
        .arg(&cfg)
        .arg("--output")
        .arg(&two)
        .args(["--checkpoint", ckpt_arg, "--nodes", "2", "--external"])
        .args(["--listen", &listen, "--token-file"])
        .arg(&token)
        // As `benchmark` above: HDF5 locks inherited from other test threads do not matter.
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(common::worker_bin())
                .args(["--coordinator", &listen, "--token-file"])
                .arg(&token)
                .env("HDF5_USE_FILE_LOCKING", "FALSE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let out = coordinator.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    for w in workers {
        assert!(w.wait_with_output().unwrap().status.success());
    }
    let (r1, r2) = (results(&one), results(&two));
    assert_eq!(r2["n_cells"], 700);
    for i in 0..2 {
        for m in ["accuracy", "f1_macro", "f1_weighted"] {
            let (a, b) = (metric(&r1, i, m), metric(&r2, i, m));
            assert!((a - b).abs() < 1e-6, "{m}: {a} vs {b}");
        }
    }

    let out = benchmark(
        &cfg,
        &dir.join("pca"),
        &["--embedding", "pca", "--nodes", "2", "--external"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--embedding pca runs in one process"),
        "{}",
        describe(&out)
    );
}
