#!/usr/bin/env bash
# Everything CI checks: formatting, lints, the whole test suite (release build, since several
# tests train models), and deploy/slurm/anvil.sbatch on a real one-node Slurm cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export ANVIL_PYTHON="${ANVIL_VENV:-/var/tmp/anvil-venv}/bin/python"
# The ffmpeg that media-file videos (mp4, avi, ...) are decoded with in the tests.
ANVIL_FFMPEG="${ANVIL_FFMPEG:-$("$ANVIL_PYTHON" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')}"
export ANVIL_FFMPEG
source scripts/cuda-env.sh
# The suites write their run directories under the system temp dir; give them a private one that
# goes away when everything passed (kept, and named, when something failed).
TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/anvil-tests.XXXXXX")
export TMPDIR
trap '[ "${passed:-}" = 1 ] && rm -rf "$TMPDIR" || echo "test files kept in $TMPDIR" >&2' EXIT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --release
# The CUDA path builds and its kernels compile (NVRTC, ptxas) with no GPU here; the GPU suites
# then report every case SKIPPED with the reason unless a device is present.
cargo clippy --release -p kernels -p worker --features cuda --all-targets -- -D warnings
cargo test --release -p kernels -p worker --features cuda --test cuda_compile --test gpu_ops --test gpu

# The Slurm test starts munged, slurmctld and slurmd, so it needs root (or sudo without a
# password). CI always runs it; elsewhere it is skipped, loudly, when neither is available.
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/slurm-test.sh
elif sudo -n true 2>/dev/null; then
  sudo -E env "PATH=$PATH" bash scripts/slurm-test.sh
elif [ -n "${CI:-}" ]; then
  echo "error: the Slurm test needs root or passwordless sudo, and CI must run it" >&2
  exit 1
else
  echo "SKIPPED: scripts/slurm-test.sh (the real Slurm test) needs root or passwordless sudo" >&2
fi
passed=1
