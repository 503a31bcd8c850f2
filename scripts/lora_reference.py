"""Reference values for anvil's LoRA adapters from HuggingFace peft (what scModelForge uses).

Two pre-norm nn.TransformerEncoderLayers (PyTorch's, batch_first, GELU, dropout 0) get peft's
LoRA adapters on scModelForge's default target modules (out_proj, linear1, linear2), random
non-zero A and B; merge_and_unload() folds them in (W + alpha/r · B·A) and the merged model runs
one forward over a padded batch. The file stores every parameter under anvil's names (the base
weights and lora_A/lora_B), the input, the key padding mask, the merged model's output and
the merged weights, for kernels/tests/lora_parity.rs.

What this also shows (the file records it): the adapted model's own forward in evaluation
equals the base model's exactly ("output" == "base_output"). PyTorch's encoder-layer fast
path reads the layers' weights directly and bypasses the adapters, and nn.MultiheadAttention
reads out_proj.weight directly in any mode, so an out_proj adapter never reaches the forward.
anvil applies every adapter on every path, which is what the merged model computes.

Run: python scripts/lora_reference.py kernels/tests/fixtures/lora_peft.json
(needs torch and peft; written with torch 2.15.0, peft 0.21.2).
"""

import json
import sys

import peft
import torch
from torch import nn

torch.manual_seed(0)
D, H, F, L, R, ALPHA = 8, 2, 12, 2, 2, 6
B, T = 2, 5


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            D, H, F, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, L, enable_nested_tensor=False)

    def forward(self, x, pad):
        return self.encoder(x, src_key_padding_mask=pad)


model = Encoder().eval()
config = peft.LoraConfig(
    r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["out_proj", "linear1", "linear2"]
)
lora = peft.get_peft_model(model, config)
with torch.no_grad():
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn_like(p) * 0.3)
lora.eval()

x = torch.randn(B, T, D)
pad = torch.zeros(B, T, dtype=torch.bool)
pad[1, 3:] = True


def anvil_name(name):
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".default.", ".")


params = {}
for name, p in lora.named_parameters():
    params[anvil_name(name)] = p.detach().reshape(-1).tolist()
with torch.no_grad():
    out = lora(x, pad)
    base_out = None
    with lora.disable_adapter():
        base_out = lora(x, pad)
    merged = lora.merge_and_unload()
    merged_out = merged(x, pad)
merged_weights = {
    n: p.detach().reshape(-1).tolist()
    for n, p in merged.named_parameters()
    if n.endswith(("out_proj.weight", "linear1.weight", "linear2.weight"))
}
json.dump(
    {
        "versions": {"torch": torch.__version__, "peft": peft.__version__},
        "d_model": D, "nhead": H, "dim_feedforward": F, "num_layers": L,
        "rank": R, "alpha": ALPHA, "batch": B, "seq": T,
        "params": params,
        "x": x.reshape(-1).tolist(),
        "key_padding": pad.reshape(-1).tolist(),
        "output": out.reshape(-1).tolist(),
        "base_output": base_out.reshape(-1).tolist(),
        "merged_output": merged_out.reshape(-1).tolist(),
        "merged_weights": merged_weights,
    },
    open(sys.argv[1], "w"),
)
print("max |adapted - merged| =", (out - merged_out).abs().max().item())
print("max |adapted - base| =", (out - base_out).abs().max().item())
print(sorted(params)[:8])
