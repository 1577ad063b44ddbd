#!/usr/bin/env bash
# install_deps.sh — installs the Debian packages Aqueduct needs (only those missing).
#   scripts/install_deps.sh               build + run: compiler, CMake, OpenBLAS (OpenMP), Open MPI, nlohmann-json,
#                                         CLI11, GoogleTest, ICU (the tokenizer's Unicode classes), the fortunes corpus for the default training run, and
#                                         iproute2 (ip, tc) and python3 for the WAN testbed (scripts/wan_testbed.sh),
#                                         clang with libFuzzer's runtime (libclang-rt-14-dev, only recommended by
#                                         clang, so named here) for the fuzz harnesses (scripts/fuzz.sh)
#   scripts/install_deps.sh --reference   also python3-torch, numpy and matplotlib: the float64 PyTorch reference
#                                         check, scripts/bench_vs_pytorch.py and the scaling plot
set -euo pipefail
PKGS=(build-essential cmake libopenblas-openmp-dev openmpi-bin libopenmpi-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libicu-dev fortunes iproute2 python3 clang libclang-rt-14-dev)
if [[ "${1:-}" == "--reference" ]]; then
  PKGS+=(python3-numpy python3-torch python3-matplotlib)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install_deps.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install_deps.sh: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
