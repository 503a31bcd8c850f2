#!/usr/bin/env python3
"""PyTorch side of `cargo bench -p worker --features cuda --bench gpu_step`: the same masked-gene
model as model_step_torch.py (imported from it), one optimizer step = forward + backward +
clipping + AdamW, on the GPU in bf16 autocast, eager or torch.compile. Prints one JSON line.

    gpu_step_torch.py LAYERS HIDDEN HEADS FFN SEQ BATCH VOCAB MASK_RATIO DROPOUT WARMUP ITERS COMPILE
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_step_torch import MASK_ID, N_SPECIAL, MaskedGeneModel  # noqa: E402


def main(args):
    (layers, hidden, heads, ffn, seq, batch, vocab) = map(int, args[:7])
    mask_ratio, dropout = float(args[7]), float(args[8])
    warmup, iters, compile_ = int(args[9]), int(args[10]), args[11] == "1"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    genes = torch.randint(N_SPECIAL, vocab, (batch, seq), generator=g)
    n_mask = round(mask_ratio * seq)
    masked = torch.stack([torch.randperm(seq, generator=g)[:n_mask] for _ in range(batch)])
    flat = (masked + torch.arange(batch)[:, None] * seq).reshape(-1).sort().values
    ids = genes.clone().reshape(-1)
    targets = genes.reshape(-1)[flat]
    ids[flat] = MASK_ID
    ids, flat, targets = ids.reshape(batch, seq).to(dev), flat.to(dev), targets.to(dev)
    pad = torch.zeros(batch, seq, dtype=torch.bool, device=dev)
    model = MaskedGeneModel(vocab, seq, hidden, layers, heads, ffn, dropout).to(dev)
    model.train()
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(ids, pad, flat, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    print(json.dumps({
        "impl": "pytorch-compile" if compile_ else "pytorch-eager",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "median_ms": 1e3 * statistics.median(ts),
        "best_ms": 1e3 * min(ts),
        "last_loss": float(loss),
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
