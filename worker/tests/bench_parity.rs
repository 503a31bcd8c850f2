//! Metric parity with scikit-learn: the values in `tests/fixtures/benchmark_metrics.json` were
//! computed by `scripts/benchmark_fixtures.py` (scikit-learn) on the inputs stored beside them;
//! anvil's implementations must agree to 1e-6 (logistic regression: at the optimum, which
//! the script reaches with scikit-learn's newton-cholesky solver at tol 1e-14).

use serde_json::Value;
use worker::bench::{logreg, metrics, pca};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/benchmark_metrics.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| match r {
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>(),
            x => vec![x.as_f64().unwrap()],
        })
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: anvil {got}, scikit-learn {want} (|diff| {:e} > {tol:e})",
        (got - want).abs()
    );
}

#[test]
fn classification_metrics_match_sklearn() {
    let f = fixture();
    let c = &f["classification"];
    let (t, p) = (u32s(&c["truth"]), u32s(&c["pred"]));
    close(
        "accuracy",
        metrics::accuracy(&t, &p),
        c["accuracy"].as_f64().unwrap(),
        1e-12,
    );
    close(
        "f1_macro",
        metrics::f1_macro(&t, &p),
        c["f1_macro"].as_f64().unwrap(),
        1e-12,
    );
    close(
        "f1_weighted",
        metrics::f1_weighted(&t, &p),
        c["f1_weighted"].as_f64().unwrap(),
        1e-12,
    );
}

#[test]
fn clustering_metrics_match_sklearn() {
    let f = fixture();
    let c = &f["clustering"];
    let (l, k) = (u32s(&c["labels"]), u32s(&c["clusters"]));
    let p = u32s(&f["classification"]["pred"]);
    close(
        "nmi",
        metrics::nmi(&l, &k),
        c["nmi"].as_f64().unwrap(),
        1e-9,
    );
    close(
        "ari",
        metrics::ari(&l, &k),
        c["ari"].as_f64().unwrap(),
        1e-9,
    );
    close(
        "nmi (pred)",
        metrics::nmi(&l, &p),
        c["nmi_pred"].as_f64().unwrap(),
        1e-9,
    );
    close(
        "ari (pred)",
        metrics::ari(&l, &p),
        c["ari_pred"].as_f64().unwrap(),
        1e-9,
    );
}

#[test]
fn silhouette_matches_sklearn() {
    let f = fixture();
    let dim = f["dim"].as_u64().unwrap() as usize;
    let x = f64s(&f["x"]);
    let y = u32s(&f["y"]);
    let s = metrics::silhouette(&x, dim, &y).unwrap();
    // Inputs are rounded to 6 decimals and read as f32 here: 1e-6 covers that.
    close("silhouette", s, f["silhouette"].as_f64().unwrap(), 1e-6);
    close(
        "asw (scib)",
        (s + 1.0) / 2.0,
        f["asw_scib"].as_f64().unwrap(),
        1e-6,
    );
}

#[test]
fn pca_scores_match_sklearn_up_to_sign() {
    let f = fixture();
    let dim = f["dim"].as_u64().unwrap() as usize;
    let x = f64s(&f["x"]);
    let n = x.len() / dim;
    let s = pca::scores(&x, n, dim, 3).unwrap();
    let want = f64s(&f["pca3_abs"]);
    for (i, (g, w)) in s.iter().zip(&want).enumerate() {
        close(&format!("|pca score| {i}"), g.abs(), *w, 1e-9);
    }
}

fn check_logreg(f: &Value, key: &str, binary: bool) {
    let r = &f[key];
    let dim = f["dim"].as_u64().unwrap() as usize;
    let x = f64s(&f["x"]);
    let mut y = u32s(&f["y"]);
    if binary {
        y.iter_mut().for_each(|v| *v %= 2);
    }
    let k = if binary {
        2
    } else {
        f["n_classes"].as_u64().unwrap() as usize
    };
    let n_train = r["n_train"].as_u64().unwrap() as usize;
    let (xtr, xte) = x.split_at(n_train * dim);
    let (ytr, yte) = y.split_at(n_train);
    let m = logreg::fit(xtr, dim, ytr, k, logreg::FitOptions::default());
    assert!(
        m.converged,
        "{key}: did not converge in {} iterations",
        m.iterations
    );
    // sklearn's coef_ is [n_fit, dim]; anvil's is row-major [dim, n_fit].
    let coef = f64s(&r["coef"]);
    let nf = m.intercept.len();
    for c in 0..nf {
        for d in 0..dim {
            close(
                &format!("{key} coef[{c},{d}]"),
                m.coef[d * nf + c],
                coef[c * dim + d],
                1e-6,
            );
        }
    }
    for (c, w) in f64s(&r["intercept"]).iter().enumerate() {
        close(&format!("{key} intercept[{c}]"), m.intercept[c], *w, 1e-6);
    }
    for (i, (g, w)) in m
        .predict_proba(xte)
        .iter()
        .zip(f64s(&r["proba"]))
        .enumerate()
    {
        close(&format!("{key} proba {i}"), *g, w, 1e-6);
    }
    let pred = m.predict(xte);
    assert_eq!(pred, u32s(&r["pred"]), "{key}: predictions differ");
    close(
        "accuracy",
        metrics::accuracy(yte, &pred),
        r["accuracy"].as_f64().unwrap(),
        1e-12,
    );
    close(
        "f1_macro",
        metrics::f1_macro(yte, &pred),
        r["f1_macro"].as_f64().unwrap(),
        1e-12,
    );
    close(
        "f1_weighted",
        metrics::f1_weighted(yte, &pred),
        r["f1_weighted"].as_f64().unwrap(),
        1e-12,
    );
}

#[test]
fn multinomial_logistic_regression_matches_sklearn() {
    check_logreg(&fixture(), "logreg_multinomial", false);
}

#[test]
fn binary_logistic_regression_matches_sklearn() {
    check_logreg(&fixture(), "logreg_binary", true);
}

/// Leiden is compared by quality, not by labels (two correct Leiden runs may split a graph
/// differently): on the fixture's weighted planted-partition graph, anvil's partition must reach
/// a modularity (at the same resolution) within 0.01 of leidenalg's.
#[test]
fn leiden_modularity_is_within_tolerance_of_leidenalg() {
    use worker::bench::graph::{leiden, modularity, Graph};
    let f = fixture();
    let l = &f["leiden"];
    let n = l["n"].as_u64().unwrap() as usize;
    let mut adj = vec![Vec::new(); n];
    for e in l["edges"].as_array().unwrap() {
        let (a, b, w) = (
            e[0].as_u64().unwrap() as usize,
            e[1].as_u64().unwrap() as usize,
            e[2].as_f64().unwrap(),
        );
        adj[a].push((b, w));
        adj[b].push((a, w));
    }
    let g = Graph { adj };
    for run in l["runs"].as_array().unwrap() {
        let res = run["resolution"].as_f64().unwrap();
        let reference: Vec<usize> = u32s(&run["membership"])
            .iter()
            .map(|&c| c as usize)
            .collect();
        let q_ref = run["modularity"].as_f64().unwrap();
        // The fixture's modularity is igraph's; ours on leidenalg's partition must equal it.
        close(
            "modularity of leidenalg's partition",
            modularity(&g, &reference, res),
            q_ref,
            1e-9,
        );
        for seed in 0..3 {
            let ours = leiden(&g, res, seed);
            let q = modularity(&g, &ours, res);
            let a: Vec<u32> = ours.iter().map(|&c| c as u32).collect();
            let b: Vec<u32> = reference.iter().map(|&c| c as u32).collect();
            eprintln!(
                "resolution {res} seed {seed}: modularity {q:.6} (leidenalg {q_ref:.6}), NMI to leidenalg's {:.4}",
                worker::bench::metrics::nmi(&a, &b)
            );
            assert!(
                q >= q_ref - 0.01,
                "resolution {res}, seed {seed}: modularity {q} < leidenalg's {q_ref} - 0.01"
            );
        }
    }
}

/// The perturbation fixture (`scripts/perturbation_fixture.py`): labels, X and embeddings, a
/// fixed split, and what scModelForge's PerturbationBenchmark computes from them.
fn perturbation_fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/perturbation.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes the fixture's X (CSR, zeros left out) and labels (categorical) as an .h5ad, so the
/// benchmark reads them through the same reader as a user's file.
fn write_perturbation_h5ad(f: &Value, path: &std::path::Path) {
    use data::anndata::ObsColumn;
    use data::write::{write_h5ad, Compression};
    let g = f["n_genes"].as_u64().unwrap() as usize;
    let x = f64s(&f["x"]);
    let labels: Vec<String> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let n = labels.len();
    let rows: Vec<(Vec<u32>, Vec<f32>)> = (0..n)
        .map(|i| {
            let nz: Vec<usize> = (0..g).filter(|&j| x[i * g + j] != 0.0).collect();
            (
                nz.iter().map(|&j| j as u32).collect(),
                nz.iter().map(|&j| x[i * g + j] as f32).collect(),
            )
        })
        .collect();
    // Categories in first-seen order, as pandas would not sort them: the reader must not
    // depend on their order.
    let mut categories: Vec<String> = Vec::new();
    for l in &labels {
        if !categories.contains(l) {
            categories.push(l.clone());
        }
    }
    let codes = labels
        .iter()
        .map(|l| categories.iter().position(|c| c == l).unwrap() as i32)
        .collect();
    let obs = vec![(
        f["perturbation_key"].as_str().unwrap().to_string(),
        ObsColumn::Categorical { codes, categories },
    )];
    write_h5ad(
        path,
        &(0..g).map(|j| format!("g{j}")).collect::<Vec<_>>(),
        &(0..n).map(|i| format!("c{i}")).collect::<Vec<_>>(),
        &obs,
        vec![Ok(rows)],
        Compression::None,
    )
    .unwrap();
}

#[test]
fn perturbation_matches_scmodelforge_with_sklearn_ridge() {
    use worker::bench::perturb;
    let f = perturbation_fixture();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench_parity");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("perturbation.h5ad");
    write_perturbation_h5ad(&f, &path);
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    for case in f["cases"].as_array().unwrap() {
        let dim = case["dim"].as_u64().unwrap() as usize;
        let n_top = case["n_top_genes"].as_u64().unwrap() as usize;
        let what = format!("dim {dim}, n_top_genes {n_top}");
        let p = perturb::PerturbParams {
            perturbation_key: f["perturbation_key"].as_str().unwrap().into(),
            control_label: f["control_label"].as_str().unwrap().into(),
            n_top_genes: n_top,
            test_fraction: 0.2,
            seed: 42,
        };
        let prep = perturb::prepare(&path, &f64s(&case["embeddings"]), dim, &p).unwrap();
        let perts: Vec<String> = prep
            .perturbations
            .iter()
            .map(|&k| prep.groups.names[k].clone())
            .collect();
        assert_eq!(perts, names(&case["perturbations"]), "{what}");
        for (i, (d, want)) in prep
            .deltas
            .iter()
            .zip(case["deltas"].as_array().unwrap())
            .enumerate()
        {
            for (j, (g, w)) in d.iter().zip(f64s(want)).enumerate() {
                close(&format!("{what}: delta[{i}][{j}]"), *g, w, 1e-9);
            }
        }
        for (i, (e, want)) in prep
            .embeddings
            .iter()
            .zip(case["mean_embeddings"].as_array().unwrap())
            .enumerate()
        {
            for (j, (g, w)) in e.iter().zip(f64s(want)).enumerate() {
                close(&format!("{what}: mean embedding[{i}][{j}]"), *g, w, 1e-9);
            }
        }
        // The fixture's fixed split, as positions in the sorted perturbations.
        let pos = |v: &Value| -> Vec<usize> {
            names(v)
                .iter()
                .map(|l| perts.iter().position(|p| p == l).unwrap())
                .collect()
        };
        let (train, test) = (pos(&f["train"]), pos(&f["test"]));
        let n_top = n_top.min(prep.n_genes);
        let s = perturb::evaluate(&prep.embeddings, &prep.deltas, &train, &test, n_top);
        assert_eq!(s.undefined_r, 0, "{what}");
        for (t, (pred, want)) in s
            .predictions
            .iter()
            .zip(case["predictions"].as_array().unwrap())
            .enumerate()
        {
            for (j, (g, w)) in pred.iter().zip(f64s(want)).enumerate() {
                close(&format!("{what}: ridge prediction[{t}][{j}]"), *g, w, 1e-9);
            }
        }
        let want = case["metrics"].as_object().unwrap();
        assert_eq!(s.metrics.len(), want.len(), "{what}: {:?}", s.metrics);
        for (k, v) in &s.metrics {
            let w = want
                .get(k)
                .unwrap_or_else(|| panic!("{what}: {k} is not a reference metric"));
            close(&format!("{what}: {k}"), *v, w.as_f64().unwrap(), 1e-6);
        }
    }
}
