#!/usr/bin/env python3
"""PyTorch CPU baseline for `cargo bench -p kernels --bench encoder`: forward+backward of one
nn.TransformerEncoderLayer(norm_first=True, batch_first=True) at the benchmark shapes, 2 threads.

Prints one line per shape: "<name> <ms per fwd+bwd> <tokens/s>". Usage:
    python3 kernels/scripts/bench_torch_encoder.py [iters] [dropout] [shape names...]
"""
import sys
import time

import torch
from torch import nn

SHAPES = {
    # name: (batch, seq, d_model, heads, ffn)
    "small_h128_s512": (16, 512, 128, 4, 512),
    "geneformer_h256_s2048": (8, 2048, 256, 4, 512),
}


def bench(name, iters, dropout):
    b, t, e, h, f = SHAPES[name]
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(e, h, dim_feedforward=f, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    layer.train()
    x = torch.randn(b, t, e, requires_grad=True)
    pad = torch.zeros(b, t, dtype=torch.bool)
    r = torch.randn(b, t, e)

    def step():
        layer.zero_grad(set_to_none=False)
        out = layer(x, src_key_padding_mask=pad)
        (out * r).sum().backward()

    step()  # warm-up
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    ms = 1e3 * min(ts)
    print(f"{name} {ms:.3f} {b * t / (ms / 1e3):.1f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    dropout = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    names = sys.argv[3:] or list(SHAPES)
    for n in names:
        bench(n, iters, dropout)
