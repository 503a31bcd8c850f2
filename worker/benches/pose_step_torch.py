"""PyTorch side of worker/benches/pose_step.rs: the same UNet (sleap-nn's layer list, passed in
as JSON) at the same batch, per conv layer and as a whole training step (forward, MSE loss,
backward, Adam). Prints JSON lines; times are medians of `iters` after warm-up.

    python pose_step_torch.py SPEC_JSON BATCH SIDE ITERS THREADS ONLY_STEP [DEVICE]

DEVICE is "cpu" (default) or "cuda" (each phase then ends with torch.cuda.synchronize()).
"""

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

spec = json.loads(sys.argv[1])
batch, side, iters, threads, only_step = map(int, sys.argv[2:7])
device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
torch.set_num_threads(threads)
torch.manual_seed(0)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def conv(c_in, c_out, k):
    return torch.nn.Conv2d(c_in, c_out, k, padding="same")


class UNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.ModuleList(
            torch.nn.ModuleList(conv(*c) for c in convs) for _, convs in spec["enc"]
        )
        self.pool_first = [p for p, _ in spec["enc"]]
        self.middle = torch.nn.ModuleList(conv(*c) for c in spec["middle"])
        self.dec = torch.nn.ModuleList(
            torch.nn.ModuleList(conv(*c) for c in convs) for _, convs in spec["dec"]
        )
        self.skips = [s for s, _ in spec["dec"]]
        self.head = conv(*spec["head"])

    def forward(self, x):
        feats = []
        for pool, block in zip(self.pool_first, self.enc):
            if pool:
                x = F.max_pool2d(x, 2, 2)
            for c in block:
                x = F.relu(c(x))
            feats.append(x)
        x = F.max_pool2d(x, 2, 2)
        for c in self.middle:
            x = F.relu(c(x))
        for skip, block in zip(self.skips, self.dec):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if skip is not None:
                x = torch.cat((feats[skip], x), dim=1)
            for c in block:
                x = F.relu(c(x))
        return self.head(x)


def layer_shapes(model):
    """(name, module, input side, needs dx) of every conv, in forward order."""
    out = []
    hw = side
    for bi, (pool, block) in enumerate(zip(model.pool_first, model.enc)):
        if pool:
            hw //= 2
        for i, c in enumerate(block):
            out.append((f"enc{bi}_conv{i}", c, hw, not (bi == 0 and i == 0)))
    hw //= 2
    for i, c in enumerate(model.middle):
        out.append((f"middle_conv{i}", c, hw, True))
    for bi, block in enumerate(model.dec):
        hw *= 2
        for i, c in enumerate(block):
            out.append((f"dec{bi}_conv{i}", c, hw, True))
    out.append(("head", model.head, hw, True))
    return out


model = UNet().to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.rand(batch, spec["enc"][0][1][0][0], side, side, device=device)
with torch.no_grad():
    target = torch.rand_like(model(x))


def ms(a, b):
    return (b - a) * 1e3


phases = {"step_ms": [], "forward_ms": [], "loss_ms": [], "backward_ms": [], "optimizer_ms": []}
for it in range(iters + 3):
    sync()
    t0 = time.perf_counter()
    y = model(x)
    sync()
    t1 = time.perf_counter()
    loss = F.mse_loss(y, target)
    sync()
    t2 = time.perf_counter()
    opt.zero_grad()
    loss.backward()
    sync()
    t3 = time.perf_counter()
    opt.step()
    sync()
    t4 = time.perf_counter()
    if it >= 3:
        for k, v in zip(phases, (ms(t0, t4), ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4))):
            phases[k].append(v)
print(
    json.dumps(
        {"bench": "step", "impl": "pytorch", "device": device}
        | {k: round(statistics.median(v), 2) for k, v in phases.items()}
    )
)

if not only_step:
    total_f = total_a = 0.0
    for name, c, hw, needs_dx in layer_shapes(model):
        xi = torch.randn(batch, c.in_channels, hw, hw, requires_grad=needs_dx)
        dy = torch.randn(batch, c.out_channels, hw, hw)
        fwd, allt = [], []
        for it in range(iters + 2):
            t0 = time.perf_counter()
            y = c(xi)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            if it >= 2:
                fwd.append(ms(t0, t1))
                allt.append(ms(t0, t2))
        f, a = statistics.median(fwd), statistics.median(allt)
        total_f += f
        total_a += a
        print(
            json.dumps(
                {
                    "bench": "layer",
                    "impl": "pytorch",
                    "layer": name,
                    "hw": hw,
                    "fwd_ms": round(f, 3),
                    "fwd_bwd_ms": round(a, 3),
                }
            )
        )
    print(
        json.dumps(
            {
                "bench": "layers_total",
                "impl": "pytorch",
                "fwd_ms": round(total_f, 2),
                "fwd_bwd_ms": round(total_a, 2),
            }
        )
    )
