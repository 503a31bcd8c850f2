//! `coordinator preprocess` end to end (real process, real files): the written .h5ad against
//! scanpy's normalize_total -> log1p -> highly_variable_genes -> subset on the bundled PBMC file
//! (reference values from scripts/preprocess_reference.py, scanpy 1.11.1), the config's
//! settings, anndata reading the result, and the errors a user meets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{describe, repo};
use data::anndata::{self, ObsColumn};

fn pbmc() -> PathBuf {
    repo().join("data/pbmc68k_counts.h5ad")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("preprocess", name)
}

fn preprocess(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("preprocess")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(
        repo().join("coordinator/tests/fixtures/preprocess_reference.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Dense rows `cells` of X.
fn dense_rows(path: &Path, cells: &[usize]) -> Vec<Vec<f64>> {
    let r = anndata::open(path).unwrap();
    cells
        .iter()
        .map(|&c| {
            let rows = r.read_rows(c, c + 1).unwrap();
            let mut row = vec![0f64; r.n_vars()];
            let (idx, val) = rows.row(0);
            for (&i, &v) in idx.iter().zip(val) {
                row[i as usize] = v as f64;
            }
            row
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs scanpy {w}"
        );
    }
}

fn numeric(col: ObsColumn) -> Vec<f64> {
    match col {
        ObsColumn::Numeric(v) => v,
        other => panic!("expected a numeric column, got {other:?}"),
    }
}

#[test]
fn highly_variable_genes_match_scanpy() {
    let dir = scratch("hvg");
    let out = dir.join("hvg.h5ad");
    let o = preprocess(&["--input", s(&pbmc()), "--output", s(&out), "--hvg", "200"]);
    assert!(o.status.success(), "{}", describe(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("200 of 765 genes kept"), "{stdout}");

    let r = reference();
    let cells: Vec<usize> = r["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();
    let file = anndata::open(&out).unwrap();
    let want_genes: Vec<String> = r["hvg_genes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        file.var_names(),
        &want_genes[..],
        "the kept genes, in order"
    );
    assert_eq!(file.n_obs(), 700);

    let rows = dense_rows(&out, &cells);
    for (k, want) in r["hvg_rows"].as_array().unwrap().iter().enumerate() {
        assert_close(
            &format!("X row {}", cells[k]),
            &rows[k],
            &floats(want),
            1e-6,
        );
    }
    let reader = anndata::H5adReader::open(&out).unwrap();
    let var: Vec<(String, ObsColumn)> = reader
        .var_columns()
        .unwrap()
        .into_iter()
        .map(|(n, c)| (n, c.unwrap()))
        .collect();
    let col = |name: &str| {
        var.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("var has no {name}"))
            .1
            .clone()
    };
    assert_close(
        "means",
        &numeric(col("means")),
        &floats(&r["hvg_means"]),
        1e-6,
    );
    assert_close(
        "dispersions",
        &numeric(col("dispersions")),
        &floats(&r["hvg_dispersions"]),
        1e-5,
    );
    assert_close(
        "dispersions_norm",
        &numeric(col("dispersions_norm")),
        &floats(&r["hvg_dispersions_norm"]),
        1e-5,
    );
    assert_eq!(col("highly_variable"), ObsColumn::Boolean(vec![true; 200]));
    // obs is carried as it was.
    let src = anndata::open(pbmc()).unwrap();
    assert_eq!(
        file.obs_column("cell_type").unwrap(),
        src.obs_column("cell_type").unwrap()
    );
}

#[test]
fn every_gene_is_kept_without_hvg_and_values_match_scanpy() {
    let dir = scratch("all");
    let out = dir.join("all.h5ad");
    let o = preprocess(&["--input", s(&pbmc()), "--output", s(&out)]);
    assert!(o.status.success(), "{}", describe(&o));
    let r = reference();
    let file = anndata::open(&out).unwrap();
    assert_eq!(file.var_names(), anndata::open(pbmc()).unwrap().var_names());
    let cells: Vec<usize> = (0..700).collect();
    let sums: Vec<f64> = dense_rows(&out, &cells)
        .iter()
        .map(|row| row.iter().sum())
        .collect();
    assert_close("row sums", &sums, &floats(&r["log1p_row_sums"]), 1e-5);
    let picked: Vec<usize> = r["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();
    for (k, want) in r["log1p_rows"].as_array().unwrap().iter().enumerate() {
        let got = &dense_rows(&out, &picked[k..k + 1])[0];
        assert_close(&format!("X row {}", picked[k]), got, &floats(want), 1e-6);
    }
}

#[test]
fn the_config_settings_apply_and_anndata_opens_the_result() {
    let dir = scratch("config");
    let out = dir.join("config.h5ad");
    // No log1p, library size 1000: every cell's row then sums to 1000.
    let o = preprocess(&[
        "--config",
        "configs/quickstart.yaml",
        "--set",
        "data.preprocessing.target_sum=1000",
        "--set",
        "data.preprocessing.log1p=false",
        "--set",
        "data.preprocessing.hvg_selection=300",
        "--output",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    let file = anndata::open(&out).unwrap();
    assert_eq!(file.n_vars(), 300);
    // Summing the kept genes only; the cell's total over all genes was 1000.
    let all = dir.join("all-genes.h5ad");
    let o = preprocess(&[
        "--config",
        "configs/quickstart.yaml",
        "--set",
        "data.preprocessing.target_sum=1000",
        "--set",
        "data.preprocessing.log1p=false",
        "--output",
        s(&all),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    let rows = dense_rows(&all, &[0, 1, 2, 699]);
    for row in &rows {
        let sum: f64 = row.iter().sum();
        assert!((sum - 1000.0).abs() < 1e-2, "row sum {sum}");
    }

    let Some(python) = common::python("anndata") else {
        return;
    };
    let script = format!(
        r#"
import anndata, numpy as np
src = anndata.read_h5ad({src:?})
out = anndata.read_h5ad({out:?})
assert out.shape == (src.n_obs, 300), out.shape
assert out.X.dtype == np.float32, out.X.dtype
assert out.obs.equals(src.obs)
assert set(out.var.columns) == {{"highly_variable", "means", "dispersions", "dispersions_norm"}}, out.var.columns
assert out.var["highly_variable"].all()
assert set(out.var_names) <= set(src.var_names)
assert "log1p" not in out.uns and out.uns["hvg"] == {{"flavor": "seurat"}}, out.uns
print("ok")
"#,
        src = s(&pbmc()),
        out = s(&out),
    );
    let py = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        py.status.success(),
        "anndata check failed:\n{}",
        describe(&py)
    );
}

#[test]
fn bad_requests_are_refused_and_nothing_is_overwritten() {
    let dir = scratch("errors");
    let existing = dir.join("existing.h5ad");
    std::fs::write(&existing, b"keep me").unwrap();
    let o = preprocess(&["--input", s(&pbmc()), "--output", s(&existing)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let o = preprocess(&[
        "--input",
        s(&dir.join("missing.h5ad")),
        "--output",
        s(&dir.join("x.h5ad")),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing.h5ad: file not found"),
        "{}",
        describe(&o)
    );
    assert!(!dir.join("x.h5ad").exists());

    let o = preprocess(&[
        "--config",
        "configs/quickstart.yaml",
        "--set",
        "data.paths=[a.h5ad,b.h5ad]",
        "--output",
        s(&dir.join("y.h5ad")),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("data.paths has 2 files"),
        "{}",
        describe(&o)
    );

    let o = preprocess(&["--output", s(&dir.join("z.h5ad"))]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--input"));

    let o = preprocess(&[
        "--input",
        s(&pbmc()),
        "--output",
        s(&dir.join("w.h5ad")),
        "--hvg",
        "0",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--hvg must be at least 1"));
    // No partial files are left behind.
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["existing.h5ad".to_string()]);
}

#[test]
fn raw_obsm_and_uns_are_carried_and_gene_indexed_parts_only_without_hvg() {
    let Some(python) = common::python("anndata") else {
        return;
    };
    let dir = scratch("carried");
    let input = dir.join("rich.h5ad");
    let make = format!(
        r#"
import anndata, numpy as np
anndata.settings.allow_write_nullable_strings = True
a = anndata.read_h5ad({src:?})
a.raw = a.copy()
a.layers["counts"] = a.X.copy()
a.obsm["X_pca"] = np.arange(a.n_obs * 3, dtype=np.float32).reshape(a.n_obs, 3)
a.uns["note"] = "kept"
a.write_h5ad({out:?})
"#,
        src = s(&pbmc()),
        out = s(&input),
    );
    let py = Command::new(&python).arg("-c").arg(make).output().unwrap();
    assert!(py.status.success(), "{}", describe(&py));

    let all = dir.join("all.h5ad");
    let o = preprocess(&["--input", s(&input), "--output", s(&all)]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("not carried"));
    let hvg = dir.join("hvg.h5ad");
    let o = preprocess(&["--input", s(&input), "--output", s(&hvg), "--hvg", "100"]);
    assert!(o.status.success(), "{}", describe(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("not carried: layers (counts)"), "{stdout}");

    let check = format!(
        r#"
import anndata, numpy as np
src = anndata.read_h5ad({src:?})
for path, genes, layers in (({all:?}, src.n_vars, ["counts"]), ({hvg:?}, 100, [])):
    a = anndata.read_h5ad(path)
    assert a.n_vars == genes, (path, a.n_vars)
    assert a.raw is not None and a.raw.shape == src.raw.shape, path
    assert (a.raw.X != src.raw.X).nnz == 0, path
    assert np.array_equal(a.obsm["X_pca"], src.obsm["X_pca"]), path
    assert a.uns["note"] == "kept", path
    assert "log1p" in a.uns, path
    assert list(a.layers.keys()) == layers, (path, list(a.layers.keys()))
    assert a.obs.equals(src.obs), path
print("ok")
"#,
        src = s(&input),
        all = s(&all),
        hvg = s(&hvg),
    );
    let py = Command::new(&python).arg("-c").arg(check).output().unwrap();
    assert!(
        py.status.success(),
        "anndata check failed:\n{}",
        describe(&py)
    );
}
