"""PyTorch's side of `cargo bench -p kernels --bench attention`: forward + backward of
`torch.nn.functional.scaled_dot_product_attention` (its fused flash-attention CPU kernel where
it applies, i.e. without dropout) on the same shape, 2 threads.

    python3 attention_torch.py BATCH SEQ HEADS HEAD_DIM DROPOUT PRECISION WARMUP ITERS

PRECISION is "32" (fp32) or "bf16-mixed" (bf16 inputs, as autocast hands SDPA bf16 tensors).
Prints one JSON line: best forward and backward milliseconds.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
b, t, h, d = (int(x) for x in sys.argv[1:5])
dropout = float(sys.argv[5])
prec = sys.argv[6]
warmup, iters = int(sys.argv[7]), int(sys.argv[8])
dtype = torch.bfloat16 if prec == "bf16-mixed" else torch.float32
g = torch.Generator().manual_seed(0)
q, k, v = (
    (torch.randn(b, h, t, d, generator=g) * 0.5).to(dtype).requires_grad_(True)
    for _ in range(3)
)
dout = torch.randn(b, h, t, d, generator=g).to(dtype)
fwd, bwd = [], []
for it in range(warmup + iters):
    for x in (q, k, v):
        x.grad = None
    t0 = time.perf_counter()
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    t1 = time.perf_counter()
    o.backward(dout)
    t2 = time.perf_counter()
    if it >= warmup:
        fwd.append((t1 - t0) * 1e3)
        bwd.append((t2 - t1) * 1e3)
print(
    json.dumps(
        {
            "impl": "pytorch",
            "torch": torch.__version__,
            "fwd_ms": min(fwd),
            "bwd_ms": min(bwd),
        }
    )
)
