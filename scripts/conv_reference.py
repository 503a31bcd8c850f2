#!/usr/bin/env python3
"""Writes kernels/tests/fixtures/conv_reference.json: PyTorch's (and sleap-nn's) image ops on
small inputs, with outputs and the gradients of sum(out * dy), for kernels/tests/conv_parity.rs.

usage: /var/tmp/sleapnn-venv/bin/python scripts/conv_reference.py [OUT.json]
Needs torch and sleap-nn (for MaxPool2dWithSamePadding itself, not a re-implementation).
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from sleap_nn.architectures.common import MaxPool2dWithSamePadding

torch.manual_seed(0)
torch.set_default_dtype(torch.float32)


def tensor(t):
    t = t.detach().to(torch.float32).contiguous()
    return {"shape": list(t.shape), "data": [float(v) for v in t.flatten().tolist()]}


def run(module, x, extra=None):
    """Forward, then backward of sum(y * dy); returns (y, dy, x.grad)."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    return y, dy, x.grad


cases = []

# nn.Conv2d(padding="same") as the UNet's encoder/decoder convs, with a bias.
conv = nn.Conv2d(3, 4, kernel_size=3, padding="same", bias=True)
x = torch.randn(2, 3, 7, 6)
y, dy, dx = run(conv, x)
cases.append({"name": "conv2d_same_k3", "op": "conv2d", "k": 3, "stride": 1,
              "x": tensor(x), "weight": tensor(conv.weight), "bias": tensor(conv.bias),
              "y": tensor(y), "dy": tensor(dy), "dx": tensor(dx),
              "dweight": tensor(conv.weight.grad), "dbias": tensor(conv.bias.grad)})

# Even kernel "same" (PyTorch pads 0 before, 1 after), no bias.
conv = nn.Conv2d(2, 3, kernel_size=2, padding="same", bias=False)
x = torch.randn(1, 2, 5, 6)
y, dy, dx = run(conv, x)
cases.append({"name": "conv2d_same_k2_nobias", "op": "conv2d", "k": 2, "stride": 1,
              "x": tensor(x), "weight": tensor(conv.weight),
              "y": tensor(y), "dy": tensor(dy), "dx": tensor(dx),
              "dweight": tensor(conv.weight.grad)})

# The UNet's transposed-conv upsampling: k3, stride 2, padding 1, output_padding 1.
convt = nn.ConvTranspose2d(3, 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True)
x = torch.randn(2, 3, 4, 5)
y, dy, dx = run(convt, x)
cases.append({"name": "conv_transpose2d_k3s2p1op1", "op": "conv_transpose2d", "k": 3,
              "stride": 2, "pad": 1, "output_padding": 1,
              "x": tensor(x), "weight": tensor(convt.weight), "bias": tensor(convt.bias),
              "y": tensor(y), "dy": tensor(dy), "dx": tensor(dx),
              "dweight": tensor(convt.weight.grad), "dbias": tensor(convt.bias.grad)})

# sleap-nn's MaxPool2dWithSamePadding(2, 2) on odd sizes (pads with zeros), negative inputs
# included so the padded zeros win somewhere. A fresh module: it pads only on its first call.
x = torch.randn(2, 3, 5, 7) - 0.5
y, dy, dx = run(MaxPool2dWithSamePadding(kernel_size=2, stride=2, padding="same"), x)
cases.append({"name": "maxpool_same_k2s2_odd", "op": "maxpool2d_same", "k": 2, "stride": 2,
              "x": tensor(x), "y": tensor(y), "dy": tensor(dy), "dx": tensor(dx)})

# nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), odd input size.
x = torch.randn(2, 2, 5, 3)
y, dy, dx = run(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), x)
cases.append({"name": "upsample_x2_bilinear", "op": "bilinear",
              "x": tensor(x), "y": tensor(y), "dy": tensor(dy), "dx": tensor(dx)})

# F.interpolate(size=odd) as sleap-nn's decoder uses to match a skip's size, up and down.
for name, size, shape in [("interpolate_size_7x9", (7, 9), (1, 3, 4, 5)),
                          ("interpolate_size_3x5", (3, 5), (2, 1, 6, 7))]:
    x = torch.randn(*shape)
    y, dy, dx = run(lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False), x)
    cases.append({"name": name, "op": "bilinear",
                  "x": tensor(x), "y": tensor(y), "dy": tensor(dy), "dx": tensor(dx)})

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "kernels", "tests", "fixtures",
    "conv_reference.json")
with open(out, "w") as f:
    json.dump({"torch": torch.__version__, "cases": cases}, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {len(cases)} cases to {os.path.normpath(out)}")
