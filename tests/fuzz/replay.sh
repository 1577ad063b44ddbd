#!/usr/bin/env bash
# replay.sh — CTest's fuzz_replay: build the fuzz harnesses with clang (scripts/fuzz.sh, in BUILD_DIR/fuzz so
# the test never touches a developer's build-fuzz/) and run each over its seed corpus once.
#   bash tests/fuzz/replay.sh SOURCE_DIR [BUILD_DIR]
set -euo pipefail
SRC=${1:?usage: replay.sh SOURCE_DIR [BUILD_DIR]}
export AQ_FUZZ_BUILD=${2:-$SRC/build}/fuzz
# libFuzzer's runtime comes from libclang-rt-14-dev, which clang only recommends: say so rather than fail inside CMake.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe/p.cpp"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" >"$probe/log" 2>&1; then
  echo "FAIL: clang++ cannot build a libFuzzer program ($(head -c 300 "$probe/log" | tr '\n' ' ')); run scripts/install_deps.sh (clang, libclang-rt-14-dev)"
  exit 1
fi
exec "$SRC/scripts/fuzz.sh" --replay
