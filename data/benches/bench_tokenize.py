"""Tokenized cells/s on one core: anvil (Rust) vs the Python path (anndata backed + numpy).

The issue's reference is the published scModelForge package's own path (CellDataset +
RankValueTokenizer + MaskingStrategy, ~1,300 cells/s per process). When `import scmodelforge`
works (installed, or on PYTHONPATH), `scmodelforge_path` times that path with the package's
own classes, wired the way its CellDataModule does, and the JSON reports its rate and anvil's
ratios against it; otherwise it is skipped. The numpy path below is a re-implementation
measured in the same run. `QUOTED_PACKAGE_CELLS_PER_S` is the issue's figure, reported as
such (not measured).

Both paths do the same work per cell: read the row, library-size normalize to 1e4, log1p,
rank the expressed genes by value (descending, stable), keep 2047 (+[CLS] = 2048 tokens),
and mask 15% of the genes (80% [MASK] / 10% random / 10% kept).

    pip install anndata numpy scipy
    python data/benches/bench_tokenize.py [--file F] [--cells 50000] [--genes 20000] \
        [--python-cells 5000] [--package-cells 5000]

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

        import scmodelforge

        try:
            version = md.version("scmodelforge")
        except md.PackageNotFoundError:  # importable from PYTHONPATH, no dist metadata
            version = getattr(scmodelforge, "__version__", "unknown")
        return {"installed": True, "version": version, "location": os.path.dirname(scmodelforge.__file__),
                "timed": True, "note": "its path is timed below (scmodelforge_path)"}
    except Exception as e:  # ImportError, or a broken install
        return {"installed": False, "timed": False,
                "note": f"scmodelforge not importable ({type(e).__name__}); "
                        "ratios against the issue's quoted figure instead"}


def scmodelforge_path(path, cells, cells_as_read=1000, seed=42):
    """The published package's own path, on the first cells of `path`.

    Wired as the package's CellDataModule.setup() + TokenizedCellDataset.__getitem__ do it:
    read the .h5ad into memory (anndata.read_h5ad, what its loader does for a local path),
    GeneVocab.from_adata, PreprocessingPipeline(library_size, 1e4, log1p), CellDataset,
    RankValueTokenizer(max_len=2048, prepend_cls=True), MaskingStrategy(0.15, 0.8 [MASK],
    0.1 random, vocab_size=len(vocab)); then per cell: dataset[i] -> tokenize -> masking.apply.
    The load + setup is timed separately (`setup_*`); the per-cell loop gives `cells_per_*`.

    Two runs of the same loop: `as_read` on the matrix exactly as anndata returns it (for a
    file with int64 indptr and int32 indices, scipy copies/upcasts the whole index arrays on
    every row lookup, so each `X[i]` costs the size of the matrix), over the first
    `cells_as_read` cells; and `int32_indptr` on the same CSR arrays with indptr cast to int32
    (what scipy/anndata hold when a matrix with nnz < 2^31 is written with int32 indptr),
    over the first `cells` cells. Nothing in the package is changed for either.
    """
    import anndata as ad
    import scipy.sparse as sp
    import torch
    from scmodelforge.data import CellDataset, GeneVocab, PreprocessingPipeline
    from scmodelforge.tokenizers import MaskingStrategy, RankValueTokenizer

    os.sched_setaffinity(0, {0}) if hasattr(os, "sched_setaffinity") else None
    torch.set_num_threads(1)  # one core, like the other paths; the ops here are per-cell and small
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.thread_time()
    adata = ad.read_h5ad(path)
    vocab = GeneVocab.from_adata(adata)
    preprocessing = PreprocessingPipeline(normalize="library_size", target_sum=TARGET_SUM, log1p=True)
    dataset = CellDataset(adata, vocab, preprocessing)
    tokenizer = RankValueTokenizer(vocab, max_len=MAX_GENES, prepend_cls=True)
    masking = MaskingStrategy(
        mask_ratio=MASK_RATIO,
        mask_action_ratio=1.0 - RANDOM_RATIO - KEEP_RATIO,
        random_replace_ratio=RANDOM_RATIO,
        vocab_size=len(vocab),
    )
    setup_s = time.perf_counter() - t0
    setup_cpu = time.thread_time() - c0
    x = adata.X
    matrix = {"type": type(x).__name__, "indptr": str(x.indptr.dtype), "indices": str(x.indices.dtype),
              "data": str(x.dtype)} if sp.issparse(x) else {"type": type(x).__name__}

    def loop(n):
        tokens = masked = 0
        t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
        for i in range(n):
            sample = dataset[i]
            cell = tokenizer.tokenize(
                expression=sample["expression"],
                gene_indices=sample["gene_indices"],
                metadata=sample.get("metadata"),
            )
            cell = masking.apply(cell)
            tokens += int(cell.input_ids.shape[0])
            masked += int(cell.masked_positions.sum())
        dt = time.perf_counter() - t1
        cpu = time.thread_time() - c1
        return {"cells": n, "seconds": round(dt, 3), "cells_per_s": round(n / dt, 1),
                "cpu_s": round(cpu, 3), "cells_per_cpu_s": round(n / cpu, 1),
                "process_cpu_s": round(time.process_time() - p1, 3),
                "mean_tokens": round(tokens / n, 1), "mean_masked": round(masked / n, 1)}

    as_read = loop(min(cells_as_read, len(dataset)))
    int32 = None
    if sp.issparse(x) and x.format == "csr" and x.indptr.dtype != np.int32 and x.nnz < 2**31:
        adata.X = sp.csr_matrix((x.data, x.indices, x.indptr.astype(np.int32)), shape=x.shape)
        int32 = loop(min(cells, len(dataset)))
    return {"file_cells": len(dataset), "matrix": matrix,
            "setup_seconds": round(setup_s, 3), "setup_cpu_s": round(setup_cpu, 3),
            "as_read": as_read, "int32_indptr": int32}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file")
    ap.add_argument("--cells", type=int, default=50000)
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--python-cells", type=int, default=5000,
                    help="cells for the (slow) Python path; its rate is per cell either way")
    ap.add_argument("--package-cells", type=int, default=5000,
                    help="cells for the scModelForge package path (when importable), int32-indptr run")
    ap.add_argument("--package-cells-as-read", type=int, default=1000,
                    help="cells for the package path on the matrix as read (slow on int64 indptr)")
    ap.add_argument("--workdir", default="/tmp/anvil-bench")
    args = ap.parse_args()
    path = ensure_file(args)
    r = rust(path, args.cells)
    py = python_path(path, args.python_cells)
    status = package_status()
    pkg = scmodelforge_path(path, args.package_cells, args.package_cells_as_read) if status["installed"] else None
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
        "scmodelforge_package": status,
        "quoted_package_cells_per_s": QUOTED_PACKAGE_CELLS_PER_S,
        "speedup_sequential_cpu_vs_quoted_package":
            round(r["sequential_cells_per_cpu_s"] / QUOTED_PACKAGE_CELLS_PER_S, 1),
        "speedup_sequential128_cpu_vs_quoted_package":
            round(r["sequential128_cells_per_cpu_s"] / QUOTED_PACKAGE_CELLS_PER_S, 1),
        "speedup_loader_cpu_vs_quoted_package":
            round(r["loader_cells_per_cpu_s"] / QUOTED_PACKAGE_CELLS_PER_S, 1),
    }
    if pkg is not None:
        out["scmodelforge"] = pkg
        for label in ("as_read", "int32_indptr"):
            p = pkg[label]
            if p is None:
                continue
            out[f"speedup_sequential_vs_package_{label}"] = round(r["sequential_cells_per_s"] / p["cells_per_s"], 1)
            out[f"speedup_loader_vs_package_{label}"] = round(r["loader_cells_per_s"] / p["cells_per_s"], 1)
            out[f"speedup_sequential_cpu_vs_package_{label}"] = \
                round(r["sequential_cells_per_cpu_s"] / p["cells_per_cpu_s"], 1)
            out[f"speedup_loader_cpu_vs_package_{label}"] = \
                round(r["loader_cells_per_cpu_s"] / p["cells_per_cpu_s"], 1)
            out[f"speedup_sequential128_cpu_vs_package_{label}"] = \
                round(r["sequential128_cells_per_cpu_s"] / p["cells_per_cpu_s"], 1)
            out[f"numpy_vs_package_{label}_cpu"] = round(py["cells_per_cpu_s"] / p["cells_per_cpu_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
