#!/usr/bin/env bash
# gpu_check.sh — one command for a GPU machine with no network: build for the GPU that is present, run every
# GPU test and the CPU suite, and end with a summary table. Made to finish well within ten minutes.
#   scripts/gpu_check.sh            (build folder: build-gpu/, separate from the CPU build)
# It runs: every CUDA kernel against its CPU twin, 20 GPU training steps against the CPU, a short training under
# compute-sanitizer memcheck, the NCCL backend's conformance test on every GPU, and aq-bench on the GPU (fp32;
# bf16 and the PyTorch comparison come later).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=build-gpu
START=$(date +%s)

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_check.sh: no NVIDIA GPU visible (nvidia-smi -L failed); run this on a GPU machine" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /'
export PATH=/usr/local/cuda/bin:$PATH
nvcc --version | tail -1 | sed 's/^/nvcc: /'

# Build dependencies: installed through apt when it is reachable, else named so they can be brought along.
need=()
for h in /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h:libopenblas-openmp-dev \
         /usr/include/nlohmann/json.hpp:nlohmann-json3-dev /usr/include/CLI/CLI.hpp:libcli11-dev \
         /usr/include/gtest/gtest.h:libgtest-dev; do
  [[ -e ${h%%:*} ]] || need+=("${h##*:}")
done
if ((${#need[@]})); then
  ./scripts/install_deps.sh || { echo "gpu_check.sh: missing build packages: ${need[*]}" >&2; exit 1; }
fi

if ! cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DAQ_CUDA=ON -DAQ_CUDA_ARCHS=native > "$BUILD.log" 2>&1; then
  cat "$BUILD.log"
  echo "gpu_check.sh: CMake configuration failed" >&2
  exit 1
fi
cmake --build "$BUILD" -j"$(nproc)" > "$BUILD.build.log" 2>&1 || { tail -40 "$BUILD.build.log"; exit 1; }
BUILD_S=$(( $(date +%s) - START ))

summary() {  # LABEL → "passed failed skipped"
  ctest --test-dir "$BUILD" -L "$1" --output-on-failure --timeout 300 > "$BUILD.$1.log" 2>&1
  local total passed failed skipped
  total=$(grep -c "Test *#" "$BUILD.$1.log")
  failed=$(grep -cE "\*\*\*(Failed|Exception|Timeout)" "$BUILD.$1.log")
  skipped=$(grep -c "\*\*\*Skipped" "$BUILD.$1.log")
  passed=$((total - failed - skipped))
  echo "$passed $failed $skipped"
}
read -r GP GF GS < <(summary gpu)
read -r CP CF CS < <(summary cpu)
grep -E "\*\*\*(Failed|Exception|Timeout)" "$BUILD.gpu.log" "$BUILD.cpu.log"

# A short training on the GPU under compute-sanitizer (out-of-bounds and misaligned accesses). No leak check: the
# caching allocator keeps its blocks until exit by design.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
awk 'BEGIN { for (i = 0; i < 20000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BUILD/bin/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null
TRAIN=("$BUILD/bin/aq-train" --device cuda --data "$TMP/data/train_*.bin" --layers 2 --heads 4 --dim 64 --seq 64
       --batch 4)
MEMCHECK="not run (compute-sanitizer missing)"
if command -v compute-sanitizer > /dev/null; then
  if compute-sanitizer --tool memcheck --error-exitcode 9 "${TRAIN[@]}" --steps 2 \
      > "$BUILD.memcheck.log" 2>&1; then
    MEMCHECK="clean"
  else
    MEMCHECK="ERRORS (see $BUILD.memcheck.log)"
  fi
fi
# NCCL across every GPU of the machine (the ctest run above used one rank).
NCCL="not run (no mpirun or no NCCL build)"
NGPU=$(nvidia-smi -L | grep -c '^GPU')  # whole GPUs (MIG instances are indented lines)
if command -v mpirun > /dev/null && [[ -x $BUILD/bin/test_nccl ]]; then
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$NGPU" "$BUILD/bin/test_nccl" > "$BUILD.nccl.log" 2>&1
  case $? in
    0) NCCL="ok on $NGPU GPU(s)" ;;
    77) NCCL="skipped: $(grep -m1 SKIP "$BUILD.nccl.log")" ;;
    *) NCCL="FAILED (see $BUILD.nccl.log)" ;;
  esac
fi
# Benchmarks: the last line of aq-bench is JSON.
bench() { "$BUILD/bin/aq-bench" --device cuda --config "$1" --steps "$2" --warmup 2 2>&1 | tail -1; }
BT=$(bench tiny 20)
BG=$(bench gpt2-124m 10)

echo
echo "gpu_check summary ($(( $(date +%s) - START )) s; build ${BUILD_S} s)"
printf '%-22s %7s %7s %8s\n' "suite" "passed" "failed" "skipped"
printf '%-22s %7d %7d %8d\n' "gpu (CUDA kernels)" "$GP" "$GF" "$GS" "cpu" "$CP" "$CF" "$CS"
echo "memcheck (2 steps):    $MEMCHECK"
echo "nccl conformance:      $NCCL"
echo "bench tiny:            $BT"
echo "bench gpt2-124m fp32:  $BG"
echo "logs: $BUILD.gpu.log $BUILD.cpu.log $BUILD.memcheck.log"
[[ $GF -eq 0 && $CF -eq 0 && $GS -eq 0 && $MEMCHECK != ERRORS* && $NCCL != FAILED* ]]
