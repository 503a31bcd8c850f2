#!/usr/bin/env python3
"""Reference values for anvil's perturbation benchmark, computed as scModelForge computes them.

Writes worker/tests/fixtures/perturbation.json: cells with perturbation labels, their expression
(X, float32, with zeros, one gene zero everywhere) and embeddings (float64), a FIXED train/test
split of the perturbation labels, and what scModelForge's PerturbationBenchmark.run
(scmodelforge/eval/perturbation.py) computes from them: the expression deltas against the
control (its sparse indicator-matrix means), the mean embeddings, sklearn's Ridge(alpha=1.0)
predictions, the mean-shift baseline, and the metrics (scipy's pearsonr, MSE, direction
accuracy on each test label's top DEGs), averaged over test labels. The split is stored because
anvil's seeded permutation is not numpy's. worker/tests/bench_parity.rs checks anvil against it.

Two cases: embedding width 12 > 6 training labels (scikit-learn's kernel form of the cholesky
solver) with n_top_genes 10, and width 4 (the normal equations) with n_top_genes 100, which is
capped to the 30 genes.

Run: /var/tmp/anvil-venv/bin/python scripts/perturbation_fixture.py
(needs numpy, scipy and scikit-learn: scripts/requirements-test.txt).
"""

import json
import pathlib

import numpy as np
import scipy
import scipy.sparse as sp
import sklearn
from scipy.stats import pearsonr
from sklearn.linear_model import Ridge

OUT = pathlib.Path(__file__).resolve().parent.parent / "worker/tests/fixtures/perturbation.json"

CONTROL = "control"
PERTS = ["KO_A", "KO_B", "KO_C", "KO_D", "KO_E", "KO_F", "KO_G", "KO_H", "KO_I"]
TEST = ["KO_B", "KO_F", "KO_H"]


def expression_deltas(X, labels):
    """scModelForge's compute_expression_deltas, on a CSR matrix."""
    unique_labels, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = (1.0 / counts[inverse]).astype(np.float64)
    indicator = sp.csr_matrix((weights, (inverse, np.arange(len(labels)))), shape=(len(unique_labels), len(labels)))
    group_means = np.asarray((indicator @ X).todense())
    ctrl = group_means[int(np.where(unique_labels == CONTROL)[0][0])].ravel()
    return {
        str(lab): (group_means[i].ravel() - ctrl).astype(np.float64)
        for i, lab in enumerate(unique_labels)
        if lab != CONTROL
    }


def find_top_degs(delta, n_top):
    n_top = min(n_top, len(delta))
    a = np.abs(delta)
    top = np.argpartition(a, -n_top)[-n_top:]
    top = top[np.argsort(a[top])[::-1]]
    # The chosen set must not depend on how ties are broken.
    if n_top < len(delta):
        assert np.sort(a)[::-1][n_top - 1] > np.sort(a)[::-1][n_top], "tie at the top-gene cut"
    return top


def benchmark(emb, X, labels, train_labels, test_labels, n_top_genes):
    """PerturbationBenchmark.run from step 1 on, with the split given."""
    deltas = expression_deltas(X, labels)
    pert_labels = sorted(deltas.keys())
    mean_emb = {lab: emb[labels == lab].mean(axis=0) for lab in pert_labels}
    ridge = Ridge(alpha=1.0, random_state=42)
    ridge.fit(np.array([mean_emb[lab] for lab in train_labels]), np.array([deltas[lab] for lab in train_labels]))
    y_pred = ridge.predict(np.array([mean_emb[lab] for lab in test_labels]))
    baseline = np.mean([deltas[lab] for lab in train_labels], axis=0)
    n_top = min(n_top_genes, X.shape[1])
    s = {k: [] for k in ["p", "m", "d", "bp", "bm", "bd"]}
    above = 0
    for i, lab in enumerate(test_labels):
        actual, predicted = deltas[lab], y_pred[i]
        deg = find_top_degs(actual, n_top)
        a, p, b = actual[deg], predicted[deg], baseline[deg]
        r_model, _ = pearsonr(a, p)
        r_base, _ = pearsonr(a, b)
        s["p"].append(float(r_model))
        s["bp"].append(float(r_base))
        s["m"].append(float(np.mean((a - p) ** 2)))
        s["bm"].append(float(np.mean((a - b) ** 2)))
        s["d"].append(float(np.mean(np.sign(a) == np.sign(p))))
        s["bd"].append(float(np.mean(np.sign(a) == np.sign(b))))
        if r_model > r_base:
            above += 1
    metrics = {
        "pearson_mean": float(np.mean(s["p"])),
        "mse_mean": float(np.mean(s["m"])),
        "direction_accuracy": float(np.mean(s["d"])),
        "baseline_pearson_mean": float(np.mean(s["bp"])),
        "baseline_mse_mean": float(np.mean(s["bm"])),
        "baseline_direction_accuracy": float(np.mean(s["bd"])),
        "fraction_above_baseline": float(above / len(test_labels)),
    }
    return {
        "n_top_genes": n_top_genes,
        "perturbations": pert_labels,
        "deltas": [deltas[lab].tolist() for lab in pert_labels],
        "mean_embeddings": [mean_emb[lab].tolist() for lab in pert_labels],
        "predictions": y_pred.tolist(),
        "baseline": baseline.tolist(),
        "metrics": metrics,
    }


def main():
    rng = np.random.default_rng(20261130)
    n_genes = 30
    sizes = [12] + [int(v) for v in rng.integers(3, 9, size=len(PERTS))]
    labels = np.array(sum(([lab] * n for lab, n in zip([CONTROL] + PERTS, sizes)), []), dtype=object)
    order = rng.permutation(len(labels))
    labels = labels[order]
    n = len(labels)

    # Expression: gamma noise with dropouts, each perturbation scaling its own genes up or down;
    # gene 29 is zero in every cell (a delta of exactly 0).
    effect = {lab: np.ones(n_genes) for lab in [CONTROL] + PERTS}
    for lab in PERTS:
        genes = rng.choice(n_genes - 1, size=8, replace=False)
        effect[lab][genes] = rng.choice([0.3, 2.5, 4.0], size=8)
    base = rng.gamma(2.0, 1.0, size=n_genes)
    X = np.zeros((n, n_genes))
    for i, lab in enumerate(labels):
        X[i] = base * effect[lab] * rng.gamma(4.0, 0.25, size=n_genes)
    X *= rng.random((n, n_genes)) > 0.25
    X[:, n_genes - 1] = 0.0
    X = np.round(X, 3).astype(np.float32)
    Xs = sp.csr_matrix(X)

    # Embeddings: a per-perturbation centre (partly a function of its effect) plus noise.
    def embeddings(dim):
        proj = rng.normal(size=(n_genes, dim)) / np.sqrt(n_genes)
        centre = {lab: np.log(effect[lab]) @ proj + rng.normal(scale=0.3, size=dim) for lab in effect}
        e = np.array([centre[lab] for lab in labels]) + rng.normal(scale=0.5, size=(n, dim))
        return np.round(e, 6)

    train = [lab for lab in PERTS if lab not in TEST]
    cases = []
    for dim, n_top in [(12, 10), (4, 100)]:
        emb = embeddings(dim)
        case = benchmark(emb, Xs, labels, train, TEST, n_top)
        case["dim"] = dim
        case["embeddings"] = emb.tolist()
        cases.append(case)

    doc = {
        "generator": (
            f"scripts/perturbation_fixture.py (scikit-learn {sklearn.__version__}, scipy {scipy.__version__}, "
            f"numpy {np.__version__})"
        ),
        "perturbation_key": "perturbation",
        "control_label": CONTROL,
        "labels": labels.tolist(),
        "n_genes": n_genes,
        "x": X.astype(np.float64).tolist(),
        "train": train,
        "test": TEST,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}")
    for c in cases:
        print(c["dim"], c["metrics"])


if __name__ == "__main__":
    main()
