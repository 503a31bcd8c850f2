#!/usr/bin/env python3
"""Regenerates configs/tests/fixtures/sleap_nn_0.3.5_unet/params.json: for UNet pose configs,
every parameter sleap-nn 0.3.5 builds (name, shape, in registration order) and the total
count it writes as `model_config.total_params`. anvil's network plan is tested against it.

    /var/tmp/sleapnn-venv/bin/python scripts/sleap_nn_unet_params.py

Cases: the checked-in sleap-nn 0.3.5 fixtures with a UNet backbone and a single_instance,
centroid or centered_instance head, plus variations of the single_instance one over every
UNet field (filters, filters_rate, max_stride, stem_stride, middle_block, up_interpolate,
convs_per_block, output_stride, kernel_size, in_channels, a head stride finer than the
backbone's). Each case is resolved with `check_output_strides`, as sleap-nn's trainer does.
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
FIXTURES = REPO / "configs" / "tests" / "fixtures" / f"sleap_nn_{VERSION}"
OUT = REPO / "configs" / "tests" / "fixtures" / f"sleap_nn_{VERSION}_unet"
HEADS = ["single_instance", "centroid", "centered_instance"]
NODES = ["A", "B", "C"]


def head_of(cfg):
    return next(h for h in HEADS if cfg.model_config.head_configs.get(h) is not None)


def with_parts(cfg):
    """Part names come from the labels at training time; fix three so the head has channels."""
    head = head_of(cfg)
    conf = cfg.model_config.head_configs[head].confmaps
    if head != "centroid" and conf.get("part_names") is None:
        conf.part_names = NODES
    return cfg


def params(cfg):
    cfg = check_output_strides(copy.deepcopy(cfg))
    head = head_of(cfg)
    bb = get_backbone_type_from_cfg(cfg)
    model = Model(
        backbone_type=bb,
        backbone_config=cfg.model_config.backbone_config[bb],
        head_configs=cfg.model_config.head_configs[head],
        model_type=head,
    )
    # Only a model that runs counts: a config whose forward fails in sleap-nn is recorded as
    # its error (middle_block: false builds a decoder for the middle block's channels).
    unet = cfg.model_config.backbone_config.unet
    size = 2 * unet.max_stride
    model(torch.zeros(1, unet.in_channels, size, size))
    names = [[n, list(p.shape)] for n, p in model.named_parameters()]
    return {
        "total_params": sum(p.numel() for p in model.parameters()),
        "params": names,
        "resolved_unet": OmegaConf.to_container(cfg.model_config.backbone_config.unet),
        "head_output_stride": cfg.model_config.head_configs[head].confmaps.output_stride,
    }


VARIATIONS = {
    "filters16_rate2": {"filters": 16, "filters_rate": 2.0},
    "max_stride32": {"max_stride": 32},
    "max_stride8": {"max_stride": 8},
    "stem_stride4": {"stem_stride": 4, "max_stride": 32},
    "no_middle_block": {"middle_block": False},
    "transposed_convs": {"up_interpolate": False},
    "convs_per_block1": {"convs_per_block": 1},
    "convs_per_block3": {"convs_per_block": 3},
    "kernel5": {"kernel_size": 5},
    "rgb": {"in_channels": 3},
}
# The head's output stride decides the backbone's (check_output_strides sets the backbone's
# output_stride to the finest head's and raises max_stride to the coarsest).
HEAD_STRIDES = {"head_stride2": 2, "head_stride4": 4, "head_stride32": 32}


def main():
    cases = {}
    for path in sorted(FIXTURES.glob("*.yaml")):
        # Over the schema's defaults, as sleap-nn loads a file (sparse files leave fields out).
        cfg = verify_training_cfg(OmegaConf.load(path))
        mc = cfg.get("model_config")
        if mc is None or mc.backbone_config.get("unet") is None:
            continue
        if not any(mc.head_configs.get(h) is not None for h in HEADS):
            continue
        if any(mc.head_configs.get(h) is not None for h in mc.head_configs if h not in HEADS):
            continue
        cases[path.stem] = {"config": path.name, "overrides": {}, **params(with_parts(cfg))}
        assert "sleap_nn_error" not in cases[path.stem], path
    base = with_parts(
        verify_training_cfg(OmegaConf.load(FIXTURES / "api_single_instance_unet.yaml"))
    )
    for name, over in VARIATIONS.items():
        cfg = copy.deepcopy(base)
        for k, v in over.items():
            cfg.model_config.backbone_config.unet[k] = v
        try:
            built = params(cfg)
        except Exception as e:  # sleap-nn cannot build it; recorded so anvil's test knows why
            built = {"sleap_nn_error": f"{type(e).__name__}: {e}"}
        cases[name] = {"config": "api_single_instance_unet.yaml", "overrides": over, **built}
    for name, stride in HEAD_STRIDES.items():
        cfg = copy.deepcopy(base)
        cfg.model_config.backbone_config.unet.output_stride = 4
        cfg.model_config.head_configs.single_instance.confmaps.output_stride = stride
        cases[name] = {
            "config": "api_single_instance_unet.yaml",
            "overrides": {"output_stride": 4, "head.output_stride": stride},
            **params(cfg),
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "params.json").write_text(json.dumps({"sleap_nn": VERSION, "part_names": NODES, "cases": cases}, indent=1) + "\n")
    for k, c in cases.items():
        print(f"{k}: {c.get('total_params', c.get('sleap_nn_error'))} params")


if __name__ == "__main__":
    main()
