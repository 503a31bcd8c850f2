#!/usr/bin/env python3
"""A leak-free comparison of fine-tuned embeddings with expression PCs (BENCHMARKS.md, issue 9).

`split`: writes TRAIN.h5ad and TEST.h5ad, a stratified 80/20 split of FILE's cells
(scikit-learn's train_test_split, seed 42, by obs.cell_type). Fine-tune on TRAIN only.

`probe`: scModelForge's linear probe (LogisticRegression(max_iter=1000, random_state=42))
trained on the TRAIN cells and scored on the TEST cells, for 50 PCs of log-normalized
expression (PCA fitted on the TRAIN cells) and for obsm["X_anvil"] of each pair of embedded
files that `coordinator embed` wrote (TRAIN_EMBEDDED TEST_EMBEDDED). The test cells' labels
were never seen by the fine-tuning nor by the probe's fit.

Usage: python scripts/heldout_probe.py split FILE.h5ad TRAIN.h5ad TEST.h5ad
       python scripts/heldout_probe.py probe TRAIN.h5ad TEST.h5ad [NAME TRAIN_EMB TEST_EMB ...]"""
import sys

import anndata
import pandas as pd

# Plain (object) strings as the bundled file has them, not pandas 3's string dtype, which
# anndata 0.11 refuses to write by default.
pd.set_option("future.infer_string", False)
import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder


def lognorm(a):
    x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def score(name, xtr, ytr, xte, yte):
    p = LogisticRegression(max_iter=1000, random_state=42).fit(xtr, ytr).predict(xte)
    print("%-40s acc %.4f  f1_macro %.4f  f1_weighted %.4f" % (
        name, accuracy_score(yte, p), f1_score(yte, p, average="macro"),
        f1_score(yte, p, average="weighted")))


if sys.argv[1] == "split":
    a = anndata.read_h5ad(sys.argv[2])
    idx = np.arange(a.n_obs)
    tr, te = train_test_split(idx, test_size=0.2, random_state=42, stratify=a.obs.cell_type.values)
    for cells, path in [(tr, sys.argv[3]), (te, sys.argv[4])]:
        a[np.sort(cells)].copy().write_h5ad(path)
    print(f"{len(tr)} training cells -> {sys.argv[3]}, {len(te)} test cells -> {sys.argv[4]}")
else:
    tr, te = anndata.read_h5ad(sys.argv[2]), anndata.read_h5ad(sys.argv[3])
    enc = LabelEncoder().fit(np.concatenate([tr.obs.cell_type.values, te.obs.cell_type.values]))
    ytr, yte = enc.transform(tr.obs.cell_type.values), enc.transform(te.obs.cell_type.values)
    pca = PCA(n_components=50, svd_solver="full").fit(lognorm(tr))
    score("50 PCs of log-normalized expression", pca.transform(lognorm(tr)), ytr,
          pca.transform(lognorm(te)), yte)
    rest = sys.argv[4:]
    for i in range(0, len(rest), 3):
        name, etr, ete = rest[i:i + 3]
        a, b = anndata.read_h5ad(etr), anndata.read_h5ad(ete)
        score(name, a.obsm["X_anvil"], ytr, b.obsm["X_anvil"], yte)
