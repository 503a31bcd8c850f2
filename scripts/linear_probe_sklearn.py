#!/usr/bin/env python3
"""scModelForge's linear probe (its code: scikit-learn split, LogisticRegression) on 50 PCs of
log-normalized expression of FILE and on obsm["X_anvil"] of each EMBEDDED file that
`coordinator embed` wrote; a cross-check of `coordinator benchmark` (BENCHMARKS.md).

Usage: python scripts/linear_probe_sklearn.py FILE.h5ad [EMBEDDED.h5ad ...]"""
import sys, anndata, numpy as np, scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.decomposition import PCA
def probe(e, labels):
    y = LabelEncoder().fit_transform(labels)
    xtr, xte, ytr, yte = train_test_split(e, y, test_size=0.2, random_state=42, stratify=y)
    p = LogisticRegression(max_iter=1000, random_state=42).fit(xtr, ytr).predict(xte)
    return accuracy_score(yte, p), f1_score(yte, p, average="macro"), f1_score(yte, p, average="weighted")
a = anndata.read_h5ad(sys.argv[1])
x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
pcs = PCA(n_components=50, svd_solver="full").fit_transform(x)
print("pca50 (numpy log-normalize + sklearn PCA + scModelForge probe): acc %.4f f1_macro %.4f f1_weighted %.4f" % probe(pcs, a.obs.cell_type.values))
for f in sys.argv[2:]:
    b = anndata.read_h5ad(f)
    print(f, "(obsm X_anvil, scModelForge probe): acc %.4f f1_macro %.4f f1_weighted %.4f" % probe(b.obsm["X_anvil"], b.obs.cell_type.values))
