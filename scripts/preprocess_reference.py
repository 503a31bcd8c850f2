"""Reference values for `coordinator preprocess` (coordinator/tests/preprocess.rs): scanpy's
normalize_total -> log1p -> highly_variable_genes (seurat flavor) -> subset, the pipeline of
scModelForge's `preprocess`, on the bundled PBMC file.

    python scripts/preprocess_reference.py data/pbmc68k_counts.h5ad \
        coordinator/tests/fixtures/preprocess_reference.json

Run with scanpy 1.11.1 (anndata, numpy as it pulls them)."""

import json
import sys

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

N_TOP = 200
CELLS = [0, 1, 2, 350, 699]


def dense_rows(x, rows):
    x = x[rows]
    return (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)


def main(src, out):
    adata = ad.read_h5ad(src)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    full_rows = dense_rows(adata.X, CELLS)
    row_sums = np.asarray(adata.X.sum(axis=1)).ravel().astype(np.float64)
    sc.pp.highly_variable_genes(adata, n_top_genes=N_TOP)
    var = adata.var
    hv = adata[:, var["highly_variable"]].copy()
    ref = {
        "scanpy": sc.__version__,
        "n_top": N_TOP,
        "cells": CELLS,
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "log1p_rows": full_rows.tolist(),
        "log1p_row_sums": row_sums.tolist(),
        "hvg_genes": list(hv.var_names),
        "hvg_means": hv.var["means"].astype(float).tolist(),
        "hvg_dispersions": hv.var["dispersions"].astype(float).tolist(),
        "hvg_dispersions_norm": hv.var["dispersions_norm"].astype(float).tolist(),
        "hvg_rows": dense_rows(hv.X, CELLS).tolist(),
    }
    with open(out, "w") as f:
        json.dump(ref, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
