"""Tokenized cells/s on one core: anvil (Rust) vs the Python path (anndata backed + numpy).

The issue's reference is the published scModelForge package's own path (CellDataset +
RankValueTokenizer + MaskingStrategy, ~1,300 cells/s per process). This script looks for it
(`import scmodelforge`) and records whether it was found; the numpy path below is the
stand-in measured in the same run. The package's rate is not timed here: it was not
installable where this script was written (not on PyPI), so its path is not implemented
against an API that could not be run. `QUOTED_PACKAGE_CELLS_PER_S` is the issue's figure,
reported as such (not measured).

Both paths do the same work per cell: read the row, library-size normalize to 1e4, log1p,
rank the expressed genes by value (descending, stable), keep 2047 (+[CLS] = 2048 tokens),
and mask 15% of the genes (80% [MASK] / 10% random / 10% kept).

    pip install anndata numpy scipy
    python data/benches/bench_tokenize.py [--file F] [--cells 50000] [--genes 20000] \
        [--python-cells 5000]

Without --file it generates the input with `coordinator data synth` (50,000 x 20,000,
about 2,000 expressed genes per cell). Both measurements are pinned to CPU 0 when `taskset`
exists. Prints one JSON line with both rates and their ratios, by wall time and by the
thread's CPU time (the latter is what to compare on a shared, busy machine).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_GENES = 2048
TARGET_SUM = 1e4
MASK_RATIO, RANDOM_RATIO, KEEP_RATIO = 0.15, 0.1, 0.1
N_SPECIAL, MASK, CLS = 4, 2, 3
# The figure for scModelForge's CellDataset + RankValueTokenizer + MaskingStrategy.
QUOTED_PACKAGE_CELLS_PER_S = 1300.0


def pin():
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def cargo_env():
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return env


def ensure_file(args):
    if args.file:
        return args.file
    path = os.path.join(args.workdir, f"synth_{args.cells}x{args.genes}.h5ad")
    if not os.path.exists(path):
        os.makedirs(args.workdir, exist_ok=True)
        subprocess.run(
            ["cargo", "run", "--release", "-q", "-p", "coordinator", "--", "data", "synth",
             "--cells", str(args.cells), "--genes", str(args.genes), "--out", path],
            cwd=REPO, env=cargo_env(), check=True,
        )
    return path


def rust(path, cells):
    subprocess.run(["cargo", "bench", "-p", "data", "--bench", "tokenize", "--no-run", "-q"],
                   cwd=REPO, env=cargo_env(), check=True)
    out = subprocess.run(
        pin() + ["cargo", "bench", "-q", "-p", "data", "--bench", "tokenize", "--", path, "--cells", str(cells)],
        cwd=REPO, env=cargo_env(), check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def python_path(path, cells, block=1024, seed=42):
    import anndata as ad

    os.sched_setaffinity(0, {0}) if hasattr(os, "sched_setaffinity") else None
    t0 = time.perf_counter()
    c0 = time.thread_time()
    a = ad.read_h5ad(path, backed="r")
    names = np.asarray(a.var_names)
    # vocabulary: union of genes, sorted, ids from 4 (as anvil builds it)
    order = np.argsort(names, kind="stable")
    vocab_id = np.empty(len(names), dtype=np.int64)
    vocab_id[order] = np.arange(len(names)) + N_SPECIAL
    vocab_len = len(names) + N_SPECIAL
    rng = np.random.default_rng(seed)
    n = min(cells, a.n_obs)
    tokens = 0
    for start in range(0, n, block):
        end = min(start + block, n)
        x = a.X[start:end]  # scipy CSR read from the backed file
        totals = np.asarray(x.sum(axis=1)).ravel()
        for i in range(end - start):
            lo, hi = x.indptr[i], x.indptr[i + 1]
            vals = x.data[lo:hi].astype(np.float32)
            genes = vocab_id[x.indices[lo:hi]]
            keep = vals > 0
            vals, genes = vals[keep], genes[keep]
            vals = np.log1p(vals * np.float32(TARGET_SUM / totals[i])) if totals[i] > 0 else vals
            top = np.argsort(-vals, kind="stable")[: MAX_GENES - 1]
            ids = np.concatenate(([CLS], genes[top]))
            v = np.concatenate(([0.0], vals[top])).astype(np.float32)
            # masking
            labels = np.full(len(ids), -100, dtype=np.int64)
            k = len(ids) - 1
            if k > 0:
                m = max(1, int(round(MASK_RATIO * k)))
                pos = 1 + rng.choice(k, size=m, replace=False)
                labels[pos] = ids[pos]
                v[pos] = -1.0
                u = rng.random(m)
                to_mask = u < 1 - RANDOM_RATIO - KEEP_RATIO
                to_rand = (~to_mask) & (u < 1 - KEEP_RATIO)
                ids[pos[to_mask]] = MASK
                ids[pos[to_rand]] = rng.integers(N_SPECIAL, vocab_len, size=int(to_rand.sum()))
            tokens += len(ids)
    dt = time.perf_counter() - t0
    cpu = time.thread_time() - c0
    return {"cells": n, "seconds": round(dt, 3), "cells_per_s": round(n / dt, 1),
            "cpu_s": round(cpu, 3), "cells_per_cpu_s": round(n / cpu, 1),
            "mean_tokens": round(tokens / n, 1)}


def package_status():
    """Whether the published scModelForge package is importable, and its version."""
    try:
        import importlib.metadata as md

        import scmodelforge  # noqa: F401

        return {"installed": True, "version": md.version("scmodelforge"),
                "timed": False, "note": "installed, but its path is not timed by this script"}
    except Exception as e:  # ImportError, or a broken install
        return {"installed": False, "timed": False,
                "note": f"scmodelforge not importable ({type(e).__name__}); "
                        "ratios against the issue's quoted figure instead"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file")
    ap.add_argument("--cells", type=int, default=50000)
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--python-cells", type=int, default=5000,
                    help="cells for the (slow) Python path; its rate is per cell either way")
    ap.add_argument("--workdir", default="/tmp/anvil-bench")
    args = ap.parse_args()
    path = ensure_file(args)
    r = rust(path, args.cells)
    py = python_path(path, args.python_cells)
    out = {
        "file": path,
        "anvil": r,
        "python": py,
        "speedup_sequential": round(r["sequential_cells_per_s"] / py["cells_per_s"], 1),
        "speedup_loader": round(r["loader_cells_per_s"] / py["cells_per_s"], 1),
        "speedup_sequential_cpu": round(r["sequential_cells_per_cpu_s"] / py["cells_per_cpu_s"], 1),
        "speedup_loader_cpu": round(r["loader_cells_per_cpu_s"] / py["cells_per_cpu_s"], 1),
        "speedup_sequential128_cpu":
            round(r["sequential128_cells_per_cpu_s"] / py["cells_per_cpu_s"], 1),
        "scmodelforge_package": package_status(),
        "quoted_package_cells_per_s": QUOTED_PACKAGE_CELLS_PER_S,
        "speedup_sequential_cpu_vs_quoted_package":
            round(r["sequential_cells_per_cpu_s"] / QUOTED_PACKAGE_CELLS_PER_S, 1),
        "speedup_sequential128_cpu_vs_quoted_package":
            round(r["sequential128_cells_per_cpu_s"] / QUOTED_PACKAGE_CELLS_PER_S, 1),
        "speedup_loader_cpu_vs_quoted_package":
            round(r["loader_cells_per_cpu_s"] / QUOTED_PACKAGE_CELLS_PER_S, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
