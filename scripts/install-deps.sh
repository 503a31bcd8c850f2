#!/usr/bin/env bash
# Installs the system packages anvil needs to build, if they are missing. Idempotent.
#   libhdf5-dev + pkg-config: the HDF5 C library behind .h5ad and .slp reading (hdf5-metno).
#   openssl: the CLI the TLS tests use to make a CA and a server certificate.
#   g++: compiles kernels/cuda/conv.cu for the host in kernels/tests/cuda_conv_kernels_on_host.rs.
set -euo pipefail

need=()
for pkg in libhdf5-dev pkg-config openssl g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Python tools the tests use to check anvil's outputs against the reference implementations
# (never needed by anvil itself): a virtual environment outside the clone, reused across runs.
# scripts/test.sh exports ANVIL_PYTHON pointing at it.
venv="${ANVIL_VENV:-/var/tmp/anvil-venv}"
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv
fi
req="$(dirname "$0")/requirements-test.txt"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
  echo "installing test tools into $venv: $(grep -v '^#' "$req" | tr '\n' ' ')"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
