# Sourced by scripts/test.sh and scripts/gpu-check.sh: puts NVRTC on the library path and names
# ptxas, from the CUDA toolkit when one is installed, else from the nvidia-cuda-nvrtc-cu12 /
# nvidia-cuda-nvcc-cu12 wheels in the test venv (scripts/install-deps.sh). anvil loads NVRTC at
# run time (cudarc's dynamic loading), so nothing of CUDA is needed to build.
venv_python="${ANVIL_VENV:-/var/tmp/anvil-venv}/bin/python"
if [ -x "$venv_python" ]; then
  site="$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if [ -d "$site/nvidia/cuda_nvrtc/lib" ]; then
    export LD_LIBRARY_PATH="$site/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if [ -z "${ANVIL_PTXAS:-}" ] && [ -x "$site/nvidia/cuda_nvcc/bin/ptxas" ]; then
    export ANVIL_PTXAS="$site/nvidia/cuda_nvcc/bin/ptxas"
  fi
fi
for cuda in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [ -n "$cuda" ] && [ -d "$cuda/lib64" ]; then
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$cuda/lib64"
    [ -z "${ANVIL_PTXAS:-}" ] && [ -x "$cuda/bin/ptxas" ] && export ANVIL_PTXAS="$cuda/bin/ptxas"
  fi
done
true
