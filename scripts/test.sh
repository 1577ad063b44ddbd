#!/usr/bin/env bash
# test.sh — install what is missing (including PyTorch for the float64 reference check), build, and run the
# whole test suite through CTest. Extra arguments go to ctest, e.g.  ./scripts/test.sh -R Attention
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
./scripts/install_deps.sh --reference
./scripts/build.sh
ctest --test-dir build --output-on-failure --timeout 600 "$@"
