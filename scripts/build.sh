#!/usr/bin/env bash
# build.sh — configure and build Aqueduct in build/ (Release). Extra CMake flags: AQ_CMAKE_ARGS="-DAQ_CUDA=OFF".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC2086
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release ${AQ_CMAKE_ARGS:-} > "$ROOT/build.log" 2>&1 ||
  { cat "$ROOT/build.log"; echo "build.sh: CMake configuration failed (log above)" >&2; exit 1; }
cmake --build "$ROOT/build" -j"$(nproc)" || { echo "build.sh: build failed (errors above)" >&2; exit 1; }
echo "build.sh: binaries in $ROOT/build/bin"
