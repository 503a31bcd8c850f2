#!/usr/bin/env python3
"""PyTorch side of `cargo bench -p worker --bench model_step`: the same masked-gene model and
training step as anvil's `transformer_encoder`, on 2 threads.

Model: gene embedding (vocab x hidden) + learned position embedding, dropout, an
nn.TransformerEncoder of pre-norm nn.TransformerEncoderLayer(norm_first=True, batch_first=True,
activation="gelu"), a final LayerNorm, and an output head tied to the gene embedding (plus a
bias) computed on the masked positions only; cross-entropy over those positions; gradient
clipping at 1.0 and AdamW, as anvil's trainer does. Every cell is full length; 15% of the
positions of each cell are masked (input id = [MASK], label = the original gene).

One configuration per process (the Rust bench starts one per (shape, precision, dropout)), so
the peak RSS printed is that configuration's. Usage:

    model_step_torch.py step LAYERS HIDDEN HEADS FFN SEQ BATCH VOCAB MASK_RATIO DROPOUT PREC WARMUP ITERS
    model_step_torch.py gemm N ITERS        # fp32 and bf16 square matmul GFLOP/s

PREC is "32" or "bf16-mixed" (torch.autocast("cpu", dtype=torch.bfloat16)). With
ANVIL_TORCH_COMPILE=1 the model is `torch.compile`d (inductor; forward and backward graphs,
compiled during the warm-up steps); clipping and AdamW stay eager. Prints one JSON line.
"""
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

MASK_ID = 2  # anvil's [MASK]; ids 0..3 are special tokens
N_SPECIAL = 4


class MaskedGeneModel(nn.Module):
    def __init__(self, vocab, seq, hidden, layers, heads, ffn, dropout):
        super().__init__()
        self.gene_embedding = nn.Embedding(vocab, hidden)
        self.position_embedding = nn.Embedding(seq, hidden)
        nn.init.normal_(self.gene_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=ffn, dropout=dropout,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, ids, pad, masked_idx, targets):
        b, t = ids.shape
        pos = torch.arange(t, device=ids.device)
        x = self.gene_embedding(ids) + self.position_embedding(pos)[None]
        x = self.dropout(x)
        h = self.encoder(x, src_key_padding_mask=pad)
        h = h.reshape(b * t, -1).index_select(0, masked_idx)
        logits = F.linear(self.norm(h), self.gene_embedding.weight, self.head_bias)
        return F.cross_entropy(logits.float(), targets)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cpu_seconds():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def step_bench(args):
    (layers, hidden, heads, ffn, seq, batch, vocab) = map(int, args[:7])
    mask_ratio, dropout = float(args[7]), float(args[8])
    prec = args[9]
    warmup, iters = int(args[10]), int(args[11])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    genes = torch.randint(N_SPECIAL, vocab, (batch, seq), generator=g)
    n_mask = round(mask_ratio * seq)
    masked = torch.stack([torch.randperm(seq, generator=g)[:n_mask] for _ in range(batch)])
    flat = (masked + torch.arange(batch)[:, None] * seq).reshape(-1).sort().values
    ids = genes.clone().reshape(-1)
    targets = genes.reshape(-1)[flat]
    ids[flat] = MASK_ID
    ids = ids.reshape(batch, seq)
    pad = torch.zeros(batch, seq, dtype=torch.bool)

    model = MaskedGeneModel(vocab, seq, hidden, layers, heads, ffn, dropout)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    compiled = os.environ.get("ANVIL_TORCH_COMPILE") == "1"
    run = torch.compile(model) if compiled else model
    use_bf16 = prec == "bf16-mixed"

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = run(ids, pad, flat, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    losses = []
    for _ in range(warmup):
        losses.append(step())
    ts = []
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        losses.append(step())
        ts.append(time.perf_counter() - t0)
    # Share of the threads' time this process got while timed (see the Rust side).
    cpu_share = (cpu_seconds() - cpu0) / ((time.perf_counter() - wall0) * torch.get_num_threads())
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "compiled": compiled,
        "threads": torch.get_num_threads(),
        "best_ms": 1e3 * min(ts),
        "median_ms": 1e3 * statistics.median(ts),
        "times_ms": [round(1e3 * t, 1) for t in ts],
        "cpu_share": round(cpu_share, 2),
        "masked": int(flat.numel()),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
    }), flush=True)


def gemm_bench(args):
    n, iters = int(args[0]), int(args[1])
    out = {"impl": "pytorch", "n": n}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n).to(dt)
        b = torch.randn(n, n).to(dt)
        torch.mm(a, b)
        best = math.inf
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_gflops"] = 2 * n ** 3 / best / 1e9
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "step":
        step_bench(rest)
    elif mode == "gemm":
        gemm_bench(rest)
    else:
        sys.exit(f"unknown mode {mode!r}; see the module docstring")
