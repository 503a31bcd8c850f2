#!/usr/bin/env python3
"""Regenerates configs/tests/fixtures/sleap_nn_0.3.5/: sleap-nn config files written by
sleap-nn's own config code (PyPI sleap-nn 0.3.5), which anvil's tests load.

    python3 -m venv --system-site-packages /var/tmp/sleapnn-venv
    /var/tmp/sleapnn-venv/bin/pip install sleap-nn==0.3.5
    /var/tmp/sleapnn-venv/bin/python scripts/sleap_nn_configs.py

What it writes (every file is first loaded back through sleap-nn's own
`verify_training_cfg`, so each is a config sleap-nn 0.3.5 accepts):

- `api_<head>_<backbone>.yaml`: `TrainingJobConfig` built with `get_data_config`,
  `get_model_config` and `get_trainer_config` (the functions behind `sleap-nn train`'s
  Python API), every field written, for each pose head and backbone preset.
- `defaults_<head>_<backbone>.yaml`: the class defaults (`TrainingJobConfig()` with only a
  backbone and a head chosen), every field written, `train_labels_path: null`.
- `head_<name>.yaml`: the heads beyond pose (segmentation, embedding, bounding boxes) and the
  `pretrained` backbone, class defaults.
- `sparse_*.yaml`: short hand-written files of the kind users write, each using a field newer
  than the early guide (schedulers, eval, tiling, flip, negative frames, ...).
- `trainer_initial_config_*.yaml` / `trainer_training_config_*.yaml`: what `ModelTrainer`
  writes next to a model (`initial_config.yaml` before its `setup_config`, `training_config.yaml`
  after: skeletons, crop size, part names, strides resolved), made on the
  minimal_instance.pkg.slp labels when they are found (SLEAP_NN_LABELS or ../shared/data).
- `expected.json`: for each file, what sleap-nn resolves from it (backbone output and max
  stride after `check_output_strides`, a few defaults) for anvil's tests to compare against.
"""

import copy
import json
import os
import sys
from pathlib import Path

import sleap_nn
from omegaconf import OmegaConf
from sleap_nn.config.training_job_config import TrainingJobConfig, verify_training_cfg
from sleap_nn.config.get_config import (
    get_data_config,
    get_model_config,
    get_trainer_config,
)
from sleap_nn.config import model_config as mc
from sleap_nn.config.utils import check_output_strides, get_backbone_type_from_cfg

VERSION = "0.3.5"
if sleap_nn.__version__ != VERSION:
    sys.exit(f"expected sleap-nn {VERSION}, found {sleap_nn.__version__}")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "configs" / "tests" / "fixtures" / f"sleap_nn_{VERSION}"
HEADS = [
    "single_instance",
    "centroid",
    "centered_instance",
    "bottomup",
    "multi_class_bottomup",
    "multi_class_topdown",
]
BACKBONES = ["unet", "convnext", "swint"]
PRESETS = [
    "unet_medium_rf",
    "unet_large_rf",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "swint_small",
    "swint_base",
]

expected = {}


def resolved(cfg):
    """What sleap-nn makes of a config before building a model."""
    c = verify_training_cfg(copy.deepcopy(cfg))
    c = check_output_strides(c)
    bb = get_backbone_type_from_cfg(c)
    b = c.model_config.backbone_config[bb]
    t = c.trainer_config
    return {
        "backbone": bb,
        "backbone_output_stride": b.output_stride,
        "backbone_max_stride": b.max_stride,
        "batch_size": t.train_data_loader.batch_size,
        "max_epochs": t.max_epochs,
        "seed": t.seed,
    }


def write(name, cfg):
    """Checks `cfg` with sleap-nn's own loader, then saves it as sleap-nn saves configs."""
    if not isinstance(cfg, (dict,)) and not OmegaConf.is_config(cfg):
        cfg = OmegaConf.structured(cfg)
    verify_training_cfg(copy.deepcopy(cfg))
    path = OUT / name
    OmegaConf.save(cfg, path)
    # The file as saved must load too.
    back = OmegaConf.load(path)
    verify_training_cfg(back)
    try:
        expected[name] = resolved(back)
    except Exception as e:  # a resolution sleap-nn itself refuses
        expected[name] = {"error": str(e)}


def job(data=None, model=None, trainer=None):
    return TrainingJobConfig(
        data_config=data if data is not None else get_data_config(["train.slp"]),
        model_config=model,
        trainer_config=trainer if trainer is not None else get_trainer_config(),
    )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.yaml"):
        old.unlink()

    # The Python API, every head on every backbone, then the presets.
    for head in HEADS:
        for bb in BACKBONES:
            m = get_model_config(backbone_config=bb, head_configs=head)
            write(f"api_{head}_{bb}.yaml", job(model=m))
    for bb in PRESETS:
        m = get_model_config(backbone_config=bb, head_configs="single_instance")
        write(f"api_single_instance_{bb}.yaml", job(model=m))

    # Class defaults, labels to be given on the command line.
    for head in HEADS:
        for bb in BACKBONES:
            m = mc.ModelConfig(
                backbone_config=mc.get_backbone_config(bb)
                if hasattr(mc, "get_backbone_config")
                else get_model_config(backbone_config=bb, head_configs=head).backbone_config,
                head_configs=get_model_config(backbone_config=bb, head_configs=head).head_configs,
            )
            write(f"defaults_{head}_{bb}.yaml", TrainingJobConfig(model_config=m))

    # Heads beyond pose estimation and the `pretrained` backbone.
    unet = mc.BackboneConfig(unet=mc.UNetConfig())
    others = {
        "bottomup_segmentation": mc.HeadConfig(
            bottomup_segmentation=mc.BottomUpSegmentationConfig(
                segmentation=mc.SegmentationHeadConfig(),
                center=mc.InstanceCenterConfig(),
                offsets=mc.CenterOffsetConfig(),
            )
        ),
        "centered_instance_segmentation": mc.HeadConfig(
            centered_instance_segmentation=mc.CenteredInstanceSegmentationConfig(
                segmentation=mc.CenteredInstanceSegmentationHeadConfig()
            )
        ),
        "semantic_segmentation": mc.HeadConfig(
            semantic_segmentation=mc.SemanticSegmentationConfig(
                segmentation=mc.SegmentationHeadConfig()
            )
        ),
        "embedding": mc.HeadConfig(
            embedding=mc.EmbeddingConfig(embedding=mc.EmbeddingHeadConfig())
        ),
        "bbox_centernet": mc.HeadConfig(
            bbox_centernet=mc.BBoxCenterNetConfig(
                center=mc.BBoxCenterHeadConfig(),
                size=mc.BBoxSizeHeadConfig(),
                offset=mc.BBoxOffsetHeadConfig(),
            )
        ),
        "bbox_ssd": mc.HeadConfig(bbox_ssd=mc.BBoxSSDConfig(ssd=mc.SSDHeadConfig())),
    }
    for name, heads in others.items():
        m = mc.ModelConfig(backbone_config=unet, head_configs=heads)
        write(f"head_{name}.yaml", job(model=m))
    m = get_model_config(backbone_config="unet", head_configs="centroid")
    m.backbone_config = mc.BackboneConfig(pretrained=mc.PretrainedConfig())
    write("backbone_pretrained_centroid.yaml", job(model=m))

    # Short files as users write them; only the keys they care about.
    base = {
        "data_config": {"train_labels_path": ["train.slp"]},
        "model_config": {
            "backbone_config": {"unet": {"filters": 16, "max_stride": 16}},
            "head_configs": {"single_instance": {"confmaps": {"sigma": 2.5, "output_stride": 2}}},
        },
    }
    sparse = {
        "minimal": {},
        "null_labels": {"data_config": {"train_labels_path": None}},
        "cosine_annealing_warmup": {
            "trainer_config": {
                "lr_scheduler": {
                    "cosine_annealing_warmup": {"warmup_epochs": 3, "eta_min": 1e-6}
                }
            }
        },
        "linear_warmup_linear_decay": {
            "trainer_config": {
                "lr_scheduler": {
                    "linear_warmup_linear_decay": {"warmup_epochs": 2, "end_lr": 1e-7}
                }
            }
        },
        "eval_and_ckpt": {
            "trainer_config": {
                "eval": {"enabled": True, "frequency": 5},
                "model_ckpt": {"save_top_k": 2, "monitor": "val/loss", "mode": "min"},
                "viz_img_format": "jpg",
                "visualize_preds_during_training": True,
            }
        },
        "wandb_viz": {
            "trainer_config": {
                "use_wandb": False,
                "wandb": {"viz_enabled": False, "viz_box_size": 3.0, "current_run_id": "abc123"},
            }
        },
        "augment_flip_negative": {
            "data_config": {
                "use_negative_frames": True,
                "negative_loss_weight": 0.5,
                "parallel_caching": False,
                "cache_workers": 2,
                "augmentation_config": {
                    "geometric": {"flip_p": 0.5, "rotation_min": -180.0, "rotation_max": 180.0},
                    "intensity": {"uniform_noise_p": 0.5, "gaussian_noise_p": 0.5},
                },
            }
        },
        "loaders_auto_workers": {
            "trainer_config": {
                "train_data_loader": {"batch_size": 8, "num_workers": "auto"},
                "val_data_loader": {"num_workers": "auto"},
                "trainer_accelerator": "cuda",
            }
        },
        "tiling": {
            "data_config": {"preprocessing": {"tiling": {"enabled": True, "tile_size": 256}}}
        },
        "head_finer_than_backbone": {
            "model_config": {
                "backbone_config": {"unet": {"output_stride": 4, "max_stride": 16}},
                "head_configs": {"single_instance": {"confmaps": {"output_stride": 2}}},
            }
        },
        "head_coarser_than_max_stride": {
            "model_config": {
                "backbone_config": {"unet": {"output_stride": 2, "max_stride": 8}},
                "head_configs": {"single_instance": {"confmaps": {"output_stride": 16}}},
            }
        },
        "topdown_class_vectors": {
            "model_config": {
                "head_configs": {
                    "single_instance": None,
                    "multi_class_topdown": {
                        "confmaps": {"output_stride": 2, "loss_weight": 1.0},
                        "class_vectors": {"output_stride": 8, "num_fc_units": 32},
                    },
                }
            }
        },
        "centered_instance_loss_weight": {
            "model_config": {
                "head_configs": {
                    "single_instance": None,
                    "centered_instance": {
                        "confmaps": {"anchor_part": "thorax", "sigma": 1.5, "loss_weight": 2.0}
                    },
                }
            }
        },
    }
    for name, over in sparse.items():
        cfg = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(over))
        write(f"sparse_{name}.yaml", cfg)

    # What ModelTrainer writes next to a model.
    labels = os.environ.get("SLEAP_NN_LABELS") or str(
        REPO.parent / "shared" / "data" / "minimal_instance.pkg.slp"
    )
    if not Path(labels).exists():
        labels = "/work/shared/data/minimal_instance.pkg.slp"
    if Path(labels).exists():
        from sleap_nn.training.model_trainer import ModelTrainer

        # single_instance is left out: the minimal labels have two instances per frame.
        for head in ["centroid", "centered_instance", "bottomup"]:
            cfg = job(
                data=get_data_config([labels], use_same_data_for_val=True),
                model=get_model_config(backbone_config="unet", head_configs=head),
                trainer=get_trainer_config(max_epochs=1, run_name=f"minimal_{head}"),
            )
            cfg = OmegaConf.structured(cfg)
            trainer = ModelTrainer.get_model_trainer_from_config(cfg)
            trainer.setup_config()
            for which, c in [
                ("initial_config", trainer._initial_config),
                ("training_config", trainer.config),
            ]:
                c = copy.deepcopy(c)
                c.data_config.train_labels_path = ["minimal_instance.pkg.slp"]
                c.data_config.val_labels_path = None
                if which == "training_config":
                    # Written by `train()` once the model is built (its parameter count) and
                    # W&B started; filled in here with plausible values so the file has them.
                    c.model_config.total_params = 1953393
                    c.trainer_config.wandb.current_run_id = "x1y2z3"
                write(f"trainer_{which}_{head}.yaml", c)
    else:
        print(f"warning: {labels} not found; no trainer_*.yaml written", file=sys.stderr)

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(expected)} configs to {OUT}")


if __name__ == "__main__":
    main()
