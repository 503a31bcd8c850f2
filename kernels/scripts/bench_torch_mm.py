"""torch.mm GFLOP/s for the shapes given on the command line, f32 and bf16, 2 threads.

    python3 bench_torch_mm.py ITERS M,N,K,TA,TB ...

Prints one line per shape and dtype: `M N K TA TB DTYPE GFLOPS` (best of ITERS after a
warm-up). TA/TB: 1 when the stored operand is the transpose (a stored [K, M], b stored [N, K]),
as anvil's matmul takes it; torch gets the matching transposed views.
"""
import sys
import time

import torch

torch.set_num_threads(2)
iters = int(sys.argv[1])
for spec in sys.argv[2:]:
    m, n, k, ta, tb = (int(x) for x in spec.split(","))
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(k, m) if ta else torch.randn(m, k)
        b = torch.randn(n, k) if tb else torch.randn(k, n)
        a, b = a.to(dtype), b.to(dtype)
        av = a.t() if ta else a
        bv = b.t() if tb else b
        out = torch.empty(m, n, dtype=dtype)
        torch.mm(av, bv, out=out)
        best = float("inf")
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.mm(av, bv, out=out)
            best = min(best, time.perf_counter() - t0)
        name = "f32" if dtype == torch.float32 else "bf16"
        print(m, n, k, ta, tb, name, 2.0 * m * n * k / best / 1e9, flush=True)
