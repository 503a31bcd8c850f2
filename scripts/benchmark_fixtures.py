#!/usr/bin/env python3
"""Reference values for anvil's benchmark metrics, from scikit-learn.

Writes worker/tests/fixtures/benchmark_metrics.json: a fixed embedding (the inputs are stored
in the file, so the Rust test does not depend on numpy's generator) and what scikit-learn
computes on it -- Leiden partitions of a weighted graph (leidenalg), accuracy and F1 (macro, weighted), NMI, ARI, the silhouette (and scib's
ASW = (silhouette + 1) / 2), PCA scores, and LogisticRegression(C=1.0) fitted to its optimum
(newton-cholesky, tol 1e-14: the default lbfgs's objective, without its early stop). worker/tests/bench_parity.rs
compares anvil's implementation to these values.

Run: /var/tmp/anvil-venv/bin/python scripts/benchmark_fixtures.py
(the venv scripts/install-deps.sh makes, with scripts/requirements-test.txt).
"""

import json
import pathlib

import numpy as np
import sklearn
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
    silhouette_score,
)

OUT = pathlib.Path(__file__).resolve().parent.parent / "worker/tests/fixtures/benchmark_metrics.json"


def main():
    rng = np.random.default_rng(20261130)
    n_per, dim, k = 30, 6, 4
    centers = rng.normal(scale=2.0, size=(k, dim))
    y = np.repeat(np.arange(k), n_per)
    x = centers[y] + rng.normal(scale=1.5, size=(k * n_per, dim))
    perm = rng.permutation(len(y))
    x, y = np.round(x[perm], 6), y[perm]
    n_train = 90

    def logreg(xtr, ytr, xte, yte):
        # The same objective as the default lbfgs solver, solved exactly: lbfgs stops on its
        # ftol with gradient entries near 1e-6, too loose for a 1e-6 comparison of weights.
        clf = LogisticRegression(C=1.0, max_iter=100000, tol=1e-14, solver="newton-cholesky")
        clf.fit(xtr, ytr)
        pred = clf.predict(xte)
        return {
            "n_train": len(ytr),
            "coef": clf.coef_.tolist(),
            "intercept": clf.intercept_.tolist(),
            "proba": clf.predict_proba(xte).tolist(),
            "pred": pred.tolist(),
            "accuracy": accuracy_score(yte, pred),
            "f1_macro": f1_score(yte, pred, average="macro"),
            "f1_weighted": f1_score(yte, pred, average="weighted"),
        }

    multi = logreg(x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    yb = (y % 2).astype(int)
    binary = logreg(x[:n_train], yb[:n_train], x[n_train:], yb[n_train:])

    # Labelings with a class never predicted and one never true.
    truth = rng.integers(0, 5, size=200)
    pred = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 6, size=200))
    pred[pred == 3] = 5
    clusters = rng.integers(0, 7, size=200)

    sil = silhouette_score(x, y, metric="euclidean")

    # Leiden: a weighted planted-partition graph and leidenalg's partitions of it (modularity
    # with a resolution, as scanpy's leiden runs it); anvil's Leiden must reach a modularity
    # within a stated tolerance of these.
    n_nodes, groups = 300, 6
    g_of = rng.integers(0, groups, size=n_nodes)
    edges = []
    for i in range(n_nodes):
        for j in range(i + 1, n_nodes):
            p = 0.12 if g_of[i] == g_of[j] else 0.015
            if rng.random() < p:
                edges.append((i, j, round(float(rng.uniform(0.5, 1.5)), 6)))
    leiden = {"n": n_nodes, "groups": g_of.tolist(), "edges": edges, "runs": []}
    try:
        import igraph
        import leidenalg

        graph = igraph.Graph(n=n_nodes, edges=[(a, b) for a, b, _ in edges])
        weights = [w for _, _, w in edges]
        for res in (0.5, 1.0, 1.5):
            part = leidenalg.find_partition(
                graph,
                leidenalg.RBConfigurationVertexPartition,
                weights=weights,
                resolution_parameter=res,
                seed=0,
                n_iterations=-1,
            )
            leiden["runs"].append(
                {
                    "resolution": res,
                    "membership": list(part.membership),
                    "modularity": graph.modularity(part.membership, weights=weights, resolution=res),
                }
            )
        from importlib.metadata import version

        leiden["generator"] = f"leidenalg {version('leidenalg')}, igraph {version('igraph')}"
    except ImportError:
        raise SystemExit("leidenalg and igraph are needed (scripts/requirements-test.txt)")
    pca = PCA(n_components=3, svd_solver="full").fit_transform(x)

    doc = {
        "generator": f"scripts/benchmark_fixtures.py (scikit-learn {sklearn.__version__}, numpy {np.__version__})",
        "dim": dim,
        "n_classes": k,
        "x": x.tolist(),
        "y": y.tolist(),
        "logreg_multinomial": multi,
        "logreg_binary": binary,
        "classification": {
            "truth": truth.tolist(),
            "pred": pred.tolist(),
            "accuracy": accuracy_score(truth, pred),
            "f1_macro": f1_score(truth, pred, average="macro"),
            "f1_weighted": f1_score(truth, pred, average="weighted"),
        },
        "clustering": {
            "labels": truth.tolist(),
            "clusters": clusters.tolist(),
            "nmi": normalized_mutual_info_score(truth, clusters),
            "ari": adjusted_rand_score(truth, clusters),
            "nmi_pred": normalized_mutual_info_score(truth, pred),
            "ari_pred": adjusted_rand_score(truth, pred),
        },
        "leiden": leiden,
        "silhouette": sil,
        "asw_scib": (sil + 1) / 2,
        "pca3_abs": np.abs(pca).tolist(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
