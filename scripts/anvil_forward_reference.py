#!/usr/bin/env python3
"""PyTorch forward pass of an anvil `transformer_encoder` checkpoint, to check anvil's cell
embeddings against (BENCHMARKS.md, "Why the pretrained embedding was constant").

Reads CHECKPOINT/model.safetensors, vocab.json and config.yaml (the head count), tokenizes
every cell of DATA as anvil's rank_value tokenizer does (library-size normalization to 1e4,
log1p, expressed genes by descending value with ties in column order, [CLS] first with value 0,
max_genes tokens), builds the same network from torch modules (gene + position embedding +
expression projection, pre-norm nn.TransformerEncoderLayer x L with GELU and ε 1e-5, the final
`encoder.norm`) and pools [CLS] (or the mean over real tokens with `--mean`). Prints the
largest difference to EMBEDDED's obsm["X_anvil"] (written by `coordinator embed` from the same
checkpoint), and how much of the [CLS] row before the final norm is the same for every cell.

Usage: python scripts/anvil_forward_reference.py CHECKPOINT DATA.h5ad EMBEDDED.h5ad [--mean]"""
import json
import struct
import sys

import anndata
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import yaml

torch.set_num_threads(1)
CLS = 3
N_SPECIAL = 4


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{path}: {name} is {t['dtype']}, expected F32"
        lo, hi = t["data_offsets"]
        a = np.frombuffer(raw[8 + n + lo:8 + n + hi], dtype="<f4").reshape(t["shape"])
        out[name] = torch.from_numpy(a.copy())
    return out


def tokenize(adata, genes, max_genes):
    col = {g: i for i, g in enumerate(genes)}
    ids_of_var = np.array([N_SPECIAL + col[g] for g in adata.var_names])
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x.astype(np.float32)
    x = np.log1p(x / x.sum(1, keepdims=True) * np.float32(1e4)).astype(np.float32)
    cells = []
    for row in x:
        nz = np.nonzero(row > 0)[0]
        order = nz[np.argsort(-row[nz], kind="stable")][:max_genes - 1]
        cells.append((np.concatenate([[CLS], ids_of_var[order]]),
                      np.concatenate([[0.0], row[order]]).astype(np.float32)))
    return cells


def build(w, layers, heads):
    d = w["gene_embedding.weight"].shape[1]
    ffn = w["encoder.layers.0.linear1.weight"].shape[0]
    stack = nn.ModuleList()
    for i in range(layers):
        layer = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, layer_norm_eps=1e-5)
        p = f"encoder.layers.{i}."
        layer.load_state_dict({k[len(p):]: v for k, v in w.items() if k.startswith(p)})
        stack.append(layer.eval())
    norm = nn.LayerNorm(d, eps=1e-5)
    norm.load_state_dict({"weight": w["encoder.norm.weight"], "bias": w["encoder.norm.bias"]})
    return stack, norm


def main():
    ckpt, data, embedded = sys.argv[1:4]
    mean = "--mean" in sys.argv[4:]
    w = load_safetensors(f"{ckpt}/model.safetensors")
    genes = json.load(open(f"{ckpt}/vocab.json"))["genes"]
    layers = len({k.split(".")[2] for k in w if k.startswith("encoder.layers.")})
    heads = yaml.safe_load(open(f"{ckpt}/config.yaml"))["model"]["num_heads"]
    max_len = w["position_embedding.weight"].shape[0]
    stack, norm = build(w, layers, heads)
    cells = tokenize(anndata.read_h5ad(data), genes, max_len)
    t = max(len(c[0]) for c in cells)
    b = len(cells)
    ids = torch.zeros(b, t, dtype=torch.long)
    vals = torch.zeros(b, t)
    pad = torch.ones(b, t, dtype=torch.bool)
    for r, (i, v) in enumerate(cells):
        ids[r, :len(i)] = torch.from_numpy(i)
        vals[r, :len(v)] = torch.from_numpy(v)
        pad[r, :len(i)] = False
    with torch.no_grad():
        x = w["gene_embedding.weight"][ids] + w["position_embedding.weight"][:t][None]
        if "expression_projection.weight" in w:
            x = x + vals[..., None] * w["expression_projection.weight"][:, 0] \
                + w["expression_projection.bias"]
        h = x
        for layer in stack:
            h = layer(h, src_key_padding_mask=pad)
        y = norm(h)
        if mean:
            keep = (~pad).float()[..., None]
            emb = (y * keep).sum(1) / keep.sum(1)
        else:
            emb = y[:, 0]
        cls_h = h[:, 0]
    ref = emb.numpy()
    got = np.asarray(anndata.read_h5ad(embedded).obsm["X_anvil"])
    print(f"max |anvil - torch| = {np.abs(got - ref).max():.3e} "
          f"(largest |value| {np.abs(ref).max():.3f})")
    c = cls_h.numpy().astype(np.float64)
    shared = np.linalg.norm(c.mean(0))
    spread = np.linalg.norm(c - c.mean(0), axis=1).mean()
    print(f"[CLS] row before encoder.norm: |mean over cells| {shared:.3f}, "
          f"mean |row - mean| {spread:.3f}")


if __name__ == "__main__":
    main()
