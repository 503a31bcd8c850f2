//! Every reader format against the same 6 x 5 matrix (see fixtures/make_fixtures.py), and every
//! bad-input case.

use std::path::PathBuf;

use data::anndata::{self, ObsColumn, ObsKind, XEncoding};
use data::DataError;

const MATRIX: [[f32; 5]; 6] = [
    [1., 0., 3., 0., 0.],
    [0., 2., 0., 0., 7.],
    [5., 5., 0., 1., 0.],
    [0., 0., 0., 0., 0.],
    [0., 0., 9., 0., 2.],
    [4., 0., 0., 6., 1.],
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn dense(r: &dyn anndata::AnnDataReader, start: usize, end: usize) -> Vec<[f32; 5]> {
    let rows = r.read_rows(start, end).unwrap();
    (0..rows.n_rows())
        .map(|i| {
            let mut out = [0f32; 5];
            let (idx, val) = rows.row(i);
            for (&c, &v) in idx.iter().zip(val) {
                out[c as usize] = v;
            }
            out
        })
        .collect()
}

fn check_file(name: &str, encoding: XEncoding, dtype: &str, compression: &str) {
    let r = anndata::open(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!((r.n_obs(), r.n_vars()), (6, 5), "{name}");
    assert_eq!(r.var_names(), &["GA", "GB", "GC", "GD", "GE"], "{name}");
    let x = r.x_info();
    assert_eq!(x.encoding, encoding, "{name}");
    assert_eq!(x.dtype, dtype, "{name}");
    assert!(
        x.compression.starts_with(compression),
        "{name}: {}",
        x.compression
    );
    assert_eq!(dense(r.as_ref(), 0, 6), MATRIX.to_vec(), "{name}");
    // a block in the middle, and an empty block
    assert_eq!(dense(r.as_ref(), 2, 5), MATRIX[2..5].to_vec(), "{name}");
    assert_eq!(r.read_rows(4, 4).unwrap().n_rows(), 0);
    assert_eq!(r.row_nnz().unwrap()[3], 0, "{name}: row 3 is empty");

    let cols = r.obs_columns().unwrap();
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["cell_type", "barcode", "n_counts", "n_genes", "is_doublet"],
        "{name}"
    );
    assert_eq!(cols[0].1, ObsKind::Categorical { n_categories: 3 });
    assert_eq!(cols[1].1, ObsKind::String);
    assert!(matches!(cols[2].1, ObsKind::Numeric { .. }));
    assert!(matches!(cols[3].1, ObsKind::Numeric { .. }));
    assert_eq!(cols[4].1, ObsKind::Boolean);

    let ObsColumn::Categorical { codes, categories } = r.obs_column("cell_type").unwrap() else {
        panic!("{name}: cell_type not categorical")
    };
    let labels: Vec<&str> = codes
        .iter()
        .map(|&c| categories[c as usize].as_str())
        .collect();
    assert_eq!(labels, ["T", "B", "T", "NK", "B", "T"]);
    assert_eq!(
        r.obs_column("barcode").unwrap(),
        ObsColumn::String(
            ["AAAC", "AAAG", "AACT", "AAGT", "ACGT", "AGGT"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(
        r.obs_column("n_counts").unwrap(),
        ObsColumn::Numeric(vec![4., 9., 11., 0., 11., 11.])
    );
    assert_eq!(
        r.obs_column("n_genes").unwrap(),
        ObsColumn::Numeric(vec![2., 2., 3., 0., 2., 3.])
    );
    assert_eq!(
        r.obs_column("is_doublet").unwrap(),
        ObsColumn::Boolean(vec![false, false, true, false, false, true])
    );
}

#[test]
fn csr_float32() {
    check_file("csr_f32.h5ad", XEncoding::Csr, "float32", "none");
}

#[test]
fn csc_float64_converted_once() {
    check_file("csc_f64.h5ad", XEncoding::Csc, "float64", "none");
}

#[test]
fn dense_int32() {
    check_file("dense_i32.h5ad", XEncoding::Dense, "int32", "none");
}

#[test]
fn csr_int64_gzip() {
    check_file("csr_i64_gzip.h5ad", XEncoding::Csr, "int64", "gzip");
}

#[test]
fn csr_lzf() {
    check_file("csr_f32_lzf.h5ad", XEncoding::Csr, "float32", "lzf");
}

#[test]
fn dense_gzip() {
    check_file("dense_f32_gzip.h5ad", XEncoding::Dense, "float32", "gzip");
}

#[test]
fn var_index_named_by_attribute() {
    check_file("csr_named_index.h5ad", XEncoding::Csr, "float32", "none");
}

/// pandas' string dtype (the default since pandas 3): anndata writes the indices, string
/// columns and categories as nullable-string-array groups.
#[test]
fn nullable_strings_as_pandas_3_writes_them() {
    check_file(
        "csr_f32_nullable_strings.h5ad",
        XEncoding::Csr,
        "float32",
        "none",
    );
    check_file(
        "csr_f32_nullable_strings.zarr",
        XEncoding::Csr,
        "float32",
        "blosc",
    );
}

#[test]
fn pbmc68k_reads() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/pbmc68k_counts.h5ad");
    let path = if path.exists() {
        path
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pbmc68k_counts.h5ad")
    };
    let r = anndata::open(&path).unwrap();
    assert_eq!((r.n_obs(), r.n_vars()), (700, 765));
    let all = r.read_rows(0, 700).unwrap();
    assert_eq!(all.data.len() as u64, r.x_info().nnz);
    // blocks agree with the whole
    let part = r.read_rows(100, 200).unwrap();
    assert_eq!(part.row(5), all.row(105));
    let ObsColumn::Categorical { categories, .. } = r.obs_column("cell_type").unwrap() else {
        panic!()
    };
    assert_eq!(categories.len(), 10);
}

fn err(name: &str) -> (DataError, String) {
    let e = match anndata::open(fixture(name)) {
        Ok(r) => match r.read_rows(0, r.n_obs()) {
            Ok(_) => panic!("{name}: expected an error"),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let s = e.to_string();
    assert!(s.contains(name), "error does not name the file: {s}");
    (e, s)
}

#[test]
fn missing_file() {
    let (e, s) = err("does_not_exist.h5ad");
    assert!(matches!(e, DataError::NotFound { .. }), "{s}");
}

#[test]
fn not_hdf5() {
    let (e, s) = err("not_hdf5.h5ad");
    assert!(matches!(e, DataError::NotAnnData { .. }), "{s}");
    assert!(s.contains("not an HDF5 file"), "{s}");
}

#[test]
fn truncated() {
    let (_, s) = err("truncated.h5ad");
    assert!(s.contains("truncated") || s.contains("corrupt"), "{s}");
}

#[test]
fn no_x() {
    let (_, s) = err("no_x.h5ad");
    assert!(s.contains("no expression matrix X"), "{s}");
}

#[test]
fn unknown_encoding() {
    let (_, s) = err("unknown_encoding.h5ad");
    assert!(s.contains("unknown encoding-type 'coo_matrix'"), "{s}");
}

#[test]
fn negative_value() {
    let (_, s) = err("negative.h5ad");
    assert!(
        s.contains("negative value (-1)") && s.contains("row 2, column 3"),
        "{s}"
    );
}

#[test]
fn nan_value() {
    let (_, s) = err("nan.h5ad");
    assert!(s.contains("NaN at row 4"), "{s}");
}

#[test]
fn infinite_value() {
    let (_, s) = err("inf.h5ad");
    assert!(s.contains("infinite value at row 5"), "{s}");
}

#[test]
fn missing_obs_column_lists_existing() {
    let r = anndata::open(fixture("csr_f32.h5ad")).unwrap();
    let e = r.obs_column("celltype").unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, DataError::MissingObsColumn { .. }));
    assert!(
        s.contains("csr_f32.h5ad") && s.contains("'celltype'"),
        "{s}"
    );
    assert!(
        s.contains("cell_type, barcode, n_counts, n_genes, is_doublet"),
        "{s}"
    );
}

#[test]
fn empty_paths_is_a_config_error() {
    let paths: Vec<PathBuf> = Vec::new();
    let e = data::dataset::open_all(&paths).err().unwrap();
    assert!(e.to_string().contains("data.paths is empty"));
}

#[test]
fn zarr_v2_csr() {
    check_file("csr_f32.zarr", XEncoding::Csr, "float32", "blosc");
}

#[test]
fn zarr_v3_csr() {
    check_file("csr_f32_v3.zarr", XEncoding::Csr, "float32", "");
}

#[test]
fn zarr_v2_dense() {
    check_file("dense_f32.zarr", XEncoding::Dense, "float32", "");
}

#[test]
fn zarr_not_a_store() {
    let dir = std::env::temp_dir().join(format!("anvil-notzarr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = anndata::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("not a zarr store") && e.contains("anvil-notzarr"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
