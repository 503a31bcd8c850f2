#!/usr/bin/env bash
# The main job on the bundled example data (data/pbmc68k_counts.h5ad): a coordinator and two
# local workers pretrain the quickstart model, averaging gradients through shared memory (one host).
# Extra arguments go to `coordinator launch` (e.g. --set training.max_epochs=2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -q -p coordinator -p worker
exec cargo run --release -q -p coordinator -- launch --nodes 2 --config configs/quickstart.yaml "$@"
