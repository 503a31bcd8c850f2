#!/usr/bin/env python3
"""sleap-nn's side of scripts/pose_bench.sh: train, predict and evaluate on CPU.

    pose_bench_sleapnn.py train CONFIG.yaml RUN_DIR STEP_TIMES.json
        Trains CONFIG with sleap-nn's ModelTrainer (the checkpoint goes to RUN_DIR) and
        writes the wall-clock time of every training step (the gap between consecutive
        batch ends within an epoch, so data loading and augmentation count, validation
        does not), as anvil's metrics.csv train/step_time_ms counts them.
    pose_bench_sleapnn.py predict RUN_DIR LABELS.slp OUT.slp
        Predicts LABELS' frames with sleap-nn's inference (the trained model in RUN_DIR).
    pose_bench_sleapnn.py eval GROUND_TRUTH.slp PREDICTIONS.slp METRICS.json
        sleap-nn's Evaluator: writes the headline metrics (oks_voc.mAP, mAR, distances).
"""

import json
import sys
import time

import torch


def train(config_path, run_dir, times_path):
    import lightning.pytorch as pl
    from omegaconf import OmegaConf
    from sleap_nn.config.training_job_config import TrainingJobConfig
    from sleap_nn.training.model_trainer import ModelTrainer

    class StepTimer(pl.Callback):
        def __init__(self):
            self.last = None
            self.epoch = None
            self.steps = []  # (epoch, seconds)

        def on_train_epoch_start(self, trainer, module):
            self.last = time.perf_counter()
            self.epoch = trainer.current_epoch

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.perf_counter()
            self.steps.append((self.epoch, now - self.last))
            self.last = now

    timer = StepTimer()
    setup = ModelTrainer._setup_loggers_callbacks

    def with_timer(self, *args, **kwargs):
        loggers, callbacks = setup(self, *args, **kwargs)
        return loggers, callbacks + [timer]

    ModelTrainer._setup_loggers_callbacks = with_timer
    cfg = TrainingJobConfig.load_sleap_config(config_path) if config_path.endswith(".json") else None
    if cfg is None:
        cfg = OmegaConf.load(config_path)
    cfg.trainer_config.ckpt_dir = run_dir
    cfg.trainer_config.run_name = "sleap_nn"
    started = time.perf_counter()
    trainer = ModelTrainer.get_model_trainer_from_config(cfg)
    trainer.train()
    total = time.perf_counter() - started
    with open(times_path, "w") as f:
        json.dump({"steps": timer.steps, "total_s": total, "threads": torch.get_num_threads()}, f)


def predict(run_dir, labels_path, out_path):
    from sleap_nn.legacy_predict import run_inference

    run_inference(
        data_path=labels_path,
        model_paths=[f"{run_dir}/sleap_nn"],
        output_path=out_path,
        device="cpu",
        peak_threshold=0.2,
        integral_refinement="integral",
        make_labels=True,
    )


def evaluate(gt_path, pr_path, out_path):
    import sleap_io as sio
    from sleap_nn.evaluation import Evaluator

    pred = sio.load_slp(pr_path)
    if not any(len(f.predicted_instances) for f in pred):
        # The Evaluator raises on predictions without instances; nothing matched scores 0.
        out = {"oks_voc.mAP": 0.0, "oks_voc.mAR": 0.0, "dist.p50": float("nan"),
               "dist.p90": float("nan"), "dist.avg": float("nan")}
        with open(out_path, "w") as f:
            json.dump(out, f, indent=1)
        return
    m = Evaluator(sio.load_slp(gt_path), pred).evaluate()
    out = {
        "oks_voc.mAP": float(m["voc_metrics"]["oks_voc.mAP"]),
        "oks_voc.mAR": float(m["voc_metrics"]["oks_voc.mAR"]),
        "dist.p50": float(m["distance_metrics"]["p50"]),
        "dist.p90": float(m["distance_metrics"]["p90"]),
        "dist.avg": float(m["distance_metrics"]["avg"]),
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    {"train": train, "predict": predict, "eval": evaluate}[sys.argv[1]](*sys.argv[2:])
