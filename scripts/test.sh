#!/usr/bin/env bash
# Everything CI checks: formatting, lints, and the whole test suite (release build, since
# several tests train models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export ANVIL_PYTHON="${ANVIL_VENV:-/var/tmp/anvil-venv}/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --release
