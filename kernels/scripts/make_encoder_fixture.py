#!/usr/bin/env python3
"""Writes the PyTorch reference for the encoder-layer parity test (tests/torch_parity.rs).

nn.TransformerEncoderLayer(norm_first=True, batch_first=True, dropout=0) with fixed weights,
a small batch with a key padding mask, loss = sum(out * R) for a fixed R. The fixture holds the
weights (PyTorch names), inputs, mask, R, the output, the loss and every gradient.

Format (little endian): b"ANVILFX1\n", then one text line per tensor "name d0 d1 ...\n",
then b"END\n", then each tensor's float32 data in the same order.

    pip install torch numpy   # CPU is enough
    python3 kernels/scripts/make_encoder_fixture.py kernels/tests/fixtures
"""
import os
import sys

import numpy as np
import torch
from torch import nn


def write(path, tensors):
    with open(path, "wb") as f:
        f.write(b"ANVILFX1\n")
        for name, t in tensors:
            dims = " ".join(str(d) for d in t.shape) if t.ndim else "1"
            f.write(f"{name} {dims}\n".encode())
        f.write(b"END\n")
        for _, t in tensors:
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())


def make(activation, out_path):
    torch.manual_seed(1234)
    B, T, E, H, F = 3, 7, 16, 4, 32
    layer = nn.TransformerEncoderLayer(
        E, H, dim_feedforward=F, dropout=0.0, activation=activation,
        batch_first=True, norm_first=True,
    )
    with torch.no_grad():
        # Non-trivial norms and biases so their gradients are exercised.
        for name, p in layer.named_parameters():
            if name.endswith("bias") or name.startswith("norm"):
                p.add_(0.2 * torch.randn_like(p))
    layer.train()  # the training path (dropout is 0 anyway)
    x = torch.randn(B, T, E, requires_grad=True)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 3:] = True
    r = torch.randn(B, T, E)
    out = layer(x, src_key_padding_mask=pad)
    loss = (out * r).sum()
    loss.backward()
    tensors = [("input", x.detach().numpy()), ("pad", pad.float().numpy()),
               ("r", r.numpy()), ("output", out.detach().numpy()),
               ("loss", np.array([loss.item()])), ("grad.input", x.grad.numpy())]
    for name, p in layer.named_parameters():
        tensors.append((f"param.{name}", p.detach().numpy()))
        tensors.append((f"grad.{name}", p.grad.numpy()))
    write(out_path, tensors)
    print(out_path, "loss", loss.item(), "torch", torch.__version__)


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
    os.makedirs(d, exist_ok=True)
    make("relu", os.path.join(d, "encoder_layer_relu.bin"))
    make("gelu", os.path.join(d, "encoder_layer_gelu.bin"))
