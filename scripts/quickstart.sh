#!/usr/bin/env bash
# The main job on the bundled example data (data/pbmc68k_counts.h5ad).
# Today this validates the quickstart config and prints its resolved form; it becomes
# `coordinator launch --nodes 2 --config configs/quickstart.yaml` as training lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo run --release -q -p coordinator -- config validate --config configs/quickstart.yaml "$@"
