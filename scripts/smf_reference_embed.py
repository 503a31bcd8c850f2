#!/usr/bin/env python3
"""Pretrain scModelForge's own transformer_encoder on a config and write its cell embeddings
(BERT-style reference for the embedding check in BENCHMARKS.md).

Trains with scModelForge's TrainingPipeline pieces (CellDataModule, the registered model,
ScModelForgeLightningModule, Lightning's Trainer on the CPU), then embeds every cell of the
config's first data file with `model.encode` (no masking) twice: with the training
preprocessing (normalize + log1p, as the model saw the cells) and as scModelForge's
`extract_embeddings` does it (raw values). Writes OUT_DIR/{untrained,pretrained}.h5ad with
obsm["X_anvil"] (the preprocessed values) and obsm["X_raw"] (raw values), and
OUT_DIR/metrics.csv with the training and validation loss per step, and the trained
weights in OUT_DIR/model.pt.

Usage: python scripts/smf_reference_embed.py CONFIG.yaml OUT_DIR [EPOCHS]"""
import copy
import csv
import os
import sys

import anndata
import numpy as np
import pandas as pd
import torch

pd.set_option("future.infer_string", False)
torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402
from scmodelforge.config.schema import load_config  # noqa: E402
from scmodelforge.data.dataset import CellDataset  # noqa: E402
from scmodelforge.data.preprocessing import PreprocessingPipeline  # noqa: E402
from scmodelforge.models.registry import get_model  # noqa: E402
from scmodelforge.training.data_module import CellDataModule, TokenizedCellDataset  # noqa: E402
from scmodelforge.training.lightning_module import ScModelForgeLightningModule  # noqa: E402


def embed(model, adata, tokenizer, preprocessing):
    ds = TokenizedCellDataset(CellDataset(adata, tokenizer.gene_vocab, preprocessing), tokenizer)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=tokenizer._collate)
    model.eval()
    out = []
    with torch.no_grad():
        for b in loader:
            out.append(model.encode(b["input_ids"], b["attention_mask"], values=b.get("values")))
    return torch.cat(out).numpy()


class LossLog(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rows.append((trainer.global_step, "train", float(outputs["loss"])))
        if trainer.global_step % 20 == 0:
            print(f"step {trainer.global_step} loss {float(outputs['loss']):.4f}", flush=True)

    def on_validation_epoch_end(self, trainer, module):
        v = trainer.callback_metrics.get("val/loss")
        if v is not None:
            self.rows.append((trainer.global_step, "val", float(v)))


cfg = load_config(sys.argv[1])
out_dir = sys.argv[2]
if len(sys.argv) > 3:
    cfg.training.max_epochs = int(sys.argv[3])
os.makedirs(out_dir, exist_ok=True)
pl.seed_everything(cfg.training.seed, workers=True)
dm = CellDataModule(cfg.data, cfg.tokenizer, training_batch_size=cfg.training.batch_size,
                    num_workers=0, val_split=cfg.training.val_split, seed=cfg.training.seed)
dm.setup()
cfg.model.vocab_size = len(dm.gene_vocab)
model = get_model(cfg.model.architecture, cfg.model)
pp = cfg.data.preprocessing
preprocessing = PreprocessingPipeline(normalize=pp.normalize, target_sum=pp.target_sum,
                                      log1p=pp.log1p)
adata = anndata.read_h5ad(cfg.data.paths[0])
print(f"vocab {len(dm.gene_vocab)}, log(vocab) {np.log(len(dm.gene_vocab)):.4f}, "
      f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)


def write(name, m):
    a = anndata.AnnData(obs=adata.obs.copy())
    a.obsm["X_anvil"] = embed(m, adata, dm.tokenizer, preprocessing)
    a.obsm["X_raw"] = embed(m, adata, dm.tokenizer, None)
    a.write_h5ad(os.path.join(out_dir, f"{name}.h5ad"))


write("untrained", copy.deepcopy(model))
log = LossLog()
trainer = pl.Trainer(max_epochs=cfg.training.max_epochs, precision="32-true", accelerator="cpu",
                     devices=1, gradient_clip_val=cfg.training.gradient_clip, callbacks=[log],
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     num_sanity_val_steps=0)
module = ScModelForgeLightningModule(model=model, optimizer_config=cfg.training.optimizer,
                                     scheduler_config=cfg.training.scheduler)
trainer.fit(module, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())
write("pretrained", model)
torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["step", "split", "loss"])
    w.writerows(log.rows)
print("val losses:", [round(r[2], 4) for r in log.rows if r[1] == "val"], flush=True)
