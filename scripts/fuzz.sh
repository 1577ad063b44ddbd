#!/usr/bin/env bash
# fuzz.sh — build the libFuzzer harnesses of tests/fuzz (clang, ASan + UBSan) in build-fuzz/ and run them.
#   scripts/fuzz.sh --replay              run every harness over its seed corpus once (seconds; what CI does)
#   scripts/fuzz.sh --time 600 [NAME…]    fuzz each harness (or the named ones: safetensors, checkpoint_meta, shard,
#                                         cli_numbers, tokenizer_json, tokenizer_roundtrip) for that many seconds,
#                                         one after the other; new inputs go to build-fuzz/corpus/NAME, crashes to
#                                         build-fuzz/crashes/NAME (copy a fixed one into tests/fuzz/corpus/NAME)
#   scripts/fuzz.sh --build               build only
# Needs clang and libFuzzer's runtime (scripts/install_deps.sh). AQ_FUZZ_BUILD overrides build-fuzz/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${AQ_FUZZ_BUILD:-$ROOT/build-fuzz}
ALL=(safetensors checkpoint_meta shard cli_numbers tokenizer_json tokenizer_roundtrip)
mode="" seconds=0
case "${1:-}" in
  --replay) mode=replay; shift ;;
  --build) mode=build; shift ;;
  --time) mode=fuzz; seconds=${2:?--time needs seconds}; shift 2 ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
names=("$@")
((${#names[@]})) || names=("${ALL[@]}")

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found; run scripts/install_deps.sh" >&2; exit 1; }
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -DAQ_FUZZ=ON -DAQ_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; echo "fuzz.sh: configure failed" >&2; exit 1; }
fi
targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}" || { echo "fuzz.sh: build failed" >&2; exit 1; }
[[ $mode == build ]] && exit 0

# Leak checking stays on (libFuzzer's -detect_leaks=1 default); a parser that fails must not leak either.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for n in "${names[@]}"; do
  seeds=$ROOT/tests/fuzz/corpus/$n
  dict=()
  [[ -f $ROOT/tests/fuzz/$n.dict ]] && dict=(-dict="$ROOT/tests/fuzz/$n.dict")
  if [[ $mode == replay ]]; then
    # -runs=0 over the seed folder: every file is executed once, nothing is mutated.
    if "$BUILD/bin/fuzz_$n" -runs=0 -artifact_prefix="$BUILD/" "$seeds" > "$BUILD/replay_$n.log" 2>&1; then
      echo "fuzz.sh: $n: $(ls "$seeds" | wc -l) corpus files replayed, no failure"
    else
      tail -40 "$BUILD/replay_$n.log"; echo "fuzz.sh: $n: FAILED on its corpus (log $BUILD/replay_$n.log)" >&2; status=1
    fi
  else
    mkdir -p "$BUILD/corpus/$n" "$BUILD/crashes/$n"
    echo "fuzz.sh: fuzzing $n for $seconds s (log $BUILD/fuzz_$n.log)"
    if ! "$BUILD/bin/fuzz_$n" -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=4096 \
        "${dict[@]}" -artifact_prefix="$BUILD/crashes/$n/" "$BUILD/corpus/$n" "$seeds" > "$BUILD/fuzz_$n.log" 2>&1; then
      status=1; echo "fuzz.sh: $n: FOUND A FAILURE (log $BUILD/fuzz_$n.log, input in $BUILD/crashes/$n)" >&2
    fi
    grep -E "^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb" "$BUILD/fuzz_$n.log" | sed "s/^/fuzz.sh: $n: /"
  fi
done
exit $status
