#!/usr/bin/env bash
# Installs the system packages anvil needs to build, if they are missing. Idempotent.
#   libhdf5-dev + pkg-config: the HDF5 C library behind .h5ad and .slp reading (hdf5-metno).
#   openssl: the CLI the TLS tests use to make a CA and a server certificate.
set -euo pipefail

need=()
for pkg in libhdf5-dev pkg-config openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
