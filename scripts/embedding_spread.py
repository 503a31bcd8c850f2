#!/usr/bin/env python3
"""How constant is a cell embedding? (BENCHMARKS.md, "Why the pretrained embedding was constant")

For each EMBEDDED.h5ad (an obsm matrix, default "X_anvil"; `--key K` for another): the mean
pairwise cosine similarity of the rows, the mean per-dimension standard deviation against the
mean row norm, how many principal components hold 90% of the variance, and scModelForge's
linear probe (LogisticRegression(max_iter=1000, random_state=42) on a stratified 80/20 split,
seed 42, by obs.cell_type) on the raw embedding and on the standardized one (a nearly constant
embedding can still separate cells linearly once each dimension is rescaled).

Usage: python scripts/embedding_spread.py [--key K] EMBEDDED.h5ad [EMBEDDED.h5ad ...]"""
import sys

import anndata
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder, StandardScaler


def probe(x, y, scale):
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=42, stratify=y)
    xtr, xte = x[tr], x[te]
    if scale:
        s = StandardScaler().fit(xtr)
        xtr, xte = s.transform(xtr), s.transform(xte)
    p = LogisticRegression(max_iter=1000, random_state=42).fit(xtr, y[tr]).predict(xte)
    return accuracy_score(y[te], p), f1_score(y[te], p, average="macro")


def spread(x):
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = n @ n.T
    k = len(x)
    mean_cos = (c.sum() - np.trace(c)) / (k * (k - 1))
    std_ratio = x.std(0).mean() / np.linalg.norm(x, axis=1).mean()
    ev = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    pcs90 = int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.9) + 1)
    return mean_cos, std_ratio, pcs90


args = sys.argv[1:]
key = "X_anvil"
if args[:1] == ["--key"]:
    key, args = args[1], args[2:]
print("%-60s %8s %9s %6s %14s %14s" % ("file", "mean cos", "std/|x|", "PCs90",
                                       "probe acc/F1", "scaled acc/F1"))
for path in args:
    a = anndata.read_h5ad(path)
    x = np.asarray(a.obsm[key], dtype=np.float64)
    y = LabelEncoder().fit_transform(a.obs.cell_type.values)
    mean_cos, std_ratio, pcs90 = spread(x)
    (acc, f1), (sacc, sf1) = probe(x, y, False), probe(x, y, True)
    print("%-60s %8.4f %9.4f %6d %7.3f/%.3f %7.3f/%.3f" % (
        path[-60:], mean_cos, std_ratio, pcs90, acc, f1, sacc, sf1))
