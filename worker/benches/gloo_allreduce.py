"""torch.distributed gloo all-reduce timing, the comparison for benches/allreduce.rs.

usage: python3 gloo_allreduce.py WORLD SIZES_MB_COMMA_SEPARATED [fp32|bf16]
With bf16, each call does what DDP's bf16_compress_hook does to a bucket: cast the fp32 buffer
to bf16, all-reduce, divide, cast back. Prints "size_mb median_seconds" lines from rank 0, with the same iteration counts as the Rust
benchmark (one warm-up, median of the timed runs).
"""
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def iterations(mb):
    return 30 if mb <= 4 else 10 if mb <= 64 else 4


def run(rank, world, sizes, port, dtype):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for mb in sizes:
        buf = torch.ones(mb * 1024 * 1024 // 4, dtype=torch.float32)
        dist.all_reduce(buf)

        def mean():
            if dtype == "bf16":
                c = buf.to(torch.bfloat16)
                dist.all_reduce(c)
                c /= world
                buf.copy_(c)
            else:
                dist.all_reduce(buf)
                buf.div_(world)  # the mean, as the ring computes

        mean()
        times = []
        for _ in range(iterations(mb)):
            t = time.perf_counter()
            mean()
            times.append(time.perf_counter() - t)
        times.sort()
        if rank == 0:
            print(mb, times[len(times) // 2], flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1])
    sizes = [int(s) for s in sys.argv[2].split(",")]
    dtype = sys.argv[3] if len(sys.argv) > 3 else "fp32"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(world, sizes, port, dtype), nprocs=world)
