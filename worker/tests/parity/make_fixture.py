"""Reference values for the transformer_encoder parity test (worker/tests/parity.rs).

Builds anvil's transformer_encoder in PyTorch with the same parameter names -- gene and
position embeddings, Linear(1, H) expression projection, pre-norm
nn.TransformerEncoder with a final LayerNorm, gene_head tied to the gene embedding -- runs one masked-gene-prediction batch with padding in fp32 and
writes the weights, the batch, the loss and every parameter gradient to encoder_fixture.json.

    python3 worker/tests/parity/make_fixture.py   (torch from PyPI)
"""

import json
import math
import os

import torch
from torch import nn

torch.manual_seed(1234)
torch.set_num_threads(1)

V, H, HEADS, FFN, LAYERS, MAXLEN = 20, 16, 2, 32, 2, 12
B, T = 3, 10
PAD, MASK, CLS = 0, 2, 3


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.gene_embedding = nn.Embedding(V, H)
        self.position_embedding = nn.Embedding(MAXLEN, H)
        self.expression_projection = nn.Linear(1, H)
        layer = nn.TransformerEncoderLayer(
            H, HEADS, FFN, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, LAYERS, norm=nn.LayerNorm(H), enable_nested_tensor=False
        )
        self.gene_head = nn.Linear(H, V)
        self.gene_head.weight = self.gene_embedding.weight  # tied output projection

    def forward(self, ids, values, pad):
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        x = (
            self.gene_embedding(ids)
            + self.position_embedding(pos)
            + self.expression_projection(values.unsqueeze(-1))
        )
        h = self.encoder(x, src_key_padding_mask=pad)
        return self.gene_head(h)


model = Model()
# Perturb norms and biases away from their 1/0 init so their gradients are tested in general.
with torch.no_grad():
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))
model.train()

lengths = [10, 7, 4]
ids = torch.full((B, T), PAD, dtype=torch.long)
values = torch.zeros(B, T)
labels = torch.full((B, T), -100, dtype=torch.long)
mask = torch.zeros(B, T, dtype=torch.long)
g = torch.Generator().manual_seed(7)
for b, n in enumerate(lengths):
    ids[b, 0] = CLS
    genes = torch.randperm(V - 4, generator=g)[: n - 1] + 4
    ids[b, 1:n] = genes
    values[b, 1:n] = torch.sort(torch.rand(n - 1, generator=g) * 3, descending=True).values
    mask[b, :n] = 1
    # mask two (or one) gene positions: [MASK] id, value -1, label = original gene
    k = 2 if n > 4 else 1
    for j in (torch.randperm(n - 1, generator=g)[:k] + 1).tolist():
        labels[b, j] = ids[b, j]
        ids[b, j] = MASK
        values[b, j] = -1.0

logits = model(ids, values, mask == 0)
loss = nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
loss.backward()

out = {
    "config": {"vocab": V, "hidden": H, "heads": HEADS, "ffn": FFN, "layers": LAYERS,
               "max_seq_len": MAXLEN, "batch": B, "seq": T},
    "batch": {
        "gene_ids": ids.reshape(-1).tolist(),
        "values": values.reshape(-1).tolist(),
        "labels": labels.reshape(-1).tolist(),
        "attention_mask": mask.reshape(-1).tolist(),
    },
    "loss": loss.item(),
    "params": {n: {"shape": list(p.shape), "data": p.detach().reshape(-1).tolist()}
               for n, p in model.named_parameters()},
    "grads": {n: p.grad.reshape(-1).tolist() for n, p in model.named_parameters()},
    "torch_version": torch.__version__,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoder_fixture.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"loss {loss.item():.6f} ({len(out['params'])} tensors) -> {path}")
