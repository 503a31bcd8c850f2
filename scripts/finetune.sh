#!/usr/bin/env bash
# Fine-tune the quickstart model for cell types on the bundled example data: pretrains it first
# (scripts/quickstart.sh's job) unless runs/quickstart/checkpoints already holds a checkpoint,
# then `coordinator finetune` trains configs/finetune_cell_type.yaml's head on it with two
# workers and reports val/accuracy and val/f1_macro every epoch (runs/finetune_cell_type/).
# Extra arguments go to `coordinator finetune` (e.g. --set training.max_epochs=10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -q -p coordinator -p worker
if [ ! -e runs/quickstart/checkpoints/last ]; then
    cargo run --release -q -p coordinator -- launch --nodes 2 --config configs/quickstart.yaml
fi
exec cargo run --release -q -p coordinator -- finetune --nodes 2 \
    --config configs/finetune_cell_type.yaml --checkpoint runs/quickstart/checkpoints "$@"
