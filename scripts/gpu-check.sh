#!/usr/bin/env bash
# What a maintainer runs first on a GPU machine (one H100/H200: under 10 minutes, most of it the
# build). Builds with --features cuda, compiles every CUDA kernel for sm_80/sm_90 and reports
# registers and spills, runs the GPU op suite (each op against the CPU backend) and the
# worker's GPU suite (50 training steps against the CPU run, a UNet and a pose run against the
# CPU, NCCL between two GPUs, a dead rank), then measures training throughput of Geneformer-6L
# and a 12-layer model in bf16 against PyTorch on the same GPU (eager and torch.compile):
# tokens/s, MFU and peak memory; and the pose UNet's training step against PyTorch's.
#
#   bash scripts/gpu-check.sh            # everything
#   bash scripts/gpu-check.sh --no-bench # suites only
#
# Needs: cargo, an NVIDIA driver; NVRTC from the CUDA toolkit or the nvidia-cuda-nvrtc-cu12
# wheel (installed into the test venv by scripts/install-deps.sh); for the comparison, a python3
# with CUDA PyTorch (ANVIL_TORCH_PYTHON, default python3). Every GPU test fails here instead
# of skipping when no device opens (ANVIL_REQUIRE_GPU=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=1
[ "${1:-}" = "--no-bench" ] && bench=0

source scripts/cuda-env.sh
export ANVIL_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
  echo "nvidia-smi: no NVIDIA driver found"

echo "== build (--features cuda)"
cargo build --release -p worker --features cuda
echo "== kernel compile check (NVRTC sm_80/sm_90, ptxas registers and spills)"
cargo test --release -p kernels --features cuda --test cuda_compile -- --nocapture
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "== no GPU on this machine: the build and the kernel compile check passed;" >&2
  echo "   the GPU suites and the throughput comparison need a device" >&2
  exit 2
fi
echo "== GPU op suite (CUDA against the CPU backend)"
cargo test --release -p kernels --features cuda --test gpu_ops
echo "== worker GPU suite (training, pose, NCCL, dead rank)"
cargo test --release -p worker --features cuda --test gpu
if [ "$bench" = 1 ]; then
  echo "== throughput against PyTorch (bf16)"
  cargo bench -p worker --features cuda --bench gpu_step -- --iters 10
  echo "== pose UNet training step against PyTorch (fp32, batch 16 at 256x256)"
  ANVIL_TORCH_PYTHON="${ANVIL_TORCH_PYTHON:-python3}" \
    cargo bench -p worker --features cuda --bench pose_step -- --cuda --batch 16 --side 256 --iters 20
fi
