#!/usr/bin/env python3
"""Regenerates worker/tests/fixtures/unet_reference/cases.json: for small UNet pose configs,
sleap-nn 0.3.5's model with its initial weights, a random input, the confidence maps it
computes, the MSE loss against a random target and every parameter's gradient. anvil's
worker::pose::unet is tested against it (worker/tests/unet_parity.rs).

    /var/tmp/sleapnn-venv/bin/python scripts/unet_reference.py

The model is built as sleap-nn's trainer builds it (verify_training_cfg, check_output_strides,
Model) and run in float64 (a double copy of the initialized float32 weights), so the fixture
is a reference more precise than the f32 model under test.
"""

import copy
import json
import sys
from pathlib import Path

import sleap_nn
import torch
from omegaconf import OmegaConf
from sleap_nn.architectures.model import Model
from sleap_nn.config.training_job_config import verify_training_cfg
from sleap_nn.config.utils import check_output_strides, get_backbone_type_from_cfg

VERSION = "0.3.5"
if sleap_nn.__version__ != VERSION:
    sys.exit(f"expected sleap-nn {VERSION}, found {sleap_nn.__version__}")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "worker" / "tests" / "fixtures" / "unet_reference" / "cases.json"


def yaml_text(unet, parts, head_stride):
    unet_items = ", ".join(f"{k}: {json.dumps(v)}" for k, v in unet.items())
    return (
        "data_config: {train_labels_path: [x.slp]}\n"
        "model_config:\n"
        "  backbone_config:\n"
        f"    unet: {{{unet_items}}}\n"
        "  head_configs:\n"
        "    single_instance:\n"
        f"      confmaps: {{part_names: {json.dumps(parts)}, sigma: 1.5, output_stride: {head_stride}}}\n"
    )


# (name, unet fields, part names, head output stride, input n/h/w)
CASES = [
    (
        "bilinear_stride8",
        {"filters": 3, "filters_rate": 2.0, "max_stride": 8, "in_channels": 1, "up_interpolate": True},
        ["head", "tail"],
        1,
        (2, 32, 32),
    ),
    (
        "transposed_rgb_stride16",
        {"filters": 4, "filters_rate": 1.5, "max_stride": 16, "in_channels": 3, "up_interpolate": False},
        ["a", "b", "c"],
        1,
        (2, 32, 48),
    ),
    (
        "bilinear_head_stride2",
        {"filters": 4, "filters_rate": 1.5, "max_stride": 16, "in_channels": 1, "up_interpolate": True},
        ["a", "b"],
        2,
        (2, 32, 48),
    ),
]


def floats(t):
    # 9 significant digits: every f32 weight exactly, references to ~1e-9, and a small file.
    return [float(f"{x:.9g}") for x in t.detach().reshape(-1).tolist()]


def run_case(seed, name, unet, parts, head_stride, nhw):
    text = yaml_text(unet, parts, head_stride)
    cfg = verify_training_cfg(OmegaConf.create(text))
    cfg = check_output_strides(copy.deepcopy(cfg))
    bb = get_backbone_type_from_cfg(cfg)
    torch.manual_seed(seed)
    model = Model(
        backbone_type=bb,
        backbone_config=cfg.model_config.backbone_config[bb],
        head_configs=cfg.model_config.head_configs["single_instance"],
        model_type="single_instance",
    )
    model = model.double()
    n, h, w = nhw
    c = unet["in_channels"]
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    outputs = model(x)
    assert len(outputs) == 1, list(outputs)
    y = next(iter(outputs.values()))
    t = torch.rand(y.shape, generator=g, dtype=torch.float64)
    loss = torch.nn.MSELoss()(y, t)
    model.zero_grad()
    loss.backward()
    params = list(model.named_parameters())
    return {
        "name": name,
        "config_yaml": text,
        "channels": len(parts),
        "n": n,
        "h": h,
        "w": w,
        "in_channels": c,
        "output_shape": list(y.shape),
        "weights": {k: floats(p) for k, p in params},
        "shapes": {k: list(p.shape) for k, p in params},
        "input": floats(x),
        "target": floats(t),
        "output": floats(y),
        "loss": loss.item(),
        "grads": {k: floats(p.grad) for k, p in params},
    }


def main():
    cases = [run_case(i, *c) for i, c in enumerate(CASES)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sleap_nn": VERSION, "cases": cases}, separators=(",", ":")) + "\n")
    for c in cases:
        count = sum(len(v) for v in c["weights"].values())
        print(f"{c['name']}: {count} params, output {c['output_shape']}, loss {c['loss']:.6f}")
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
