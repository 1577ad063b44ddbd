#!/usr/bin/env bash
# gpu_check.sh — one command for a GPU machine with no network: build for the GPU that is present, run every
# GPU test and the CPU suite, benchmark GPT-2 124M on the GPU against PyTorch, and end with a summary table.
#   scripts/gpu_check.sh            (build folder: build-gpu/, separate from the CPU build; logs build-gpu.*)
# It runs: every CUDA kernel against its CPU twin, 20 GPU training steps against the CPU, DiLoCo on the GPU
# against the CPU (fp32; bf16 saved and resumed), one DiLoCo job across a GPU centre and a CPU centre (1 GPU
# rank + 2 CPU ranks, needs MPI), a short training under
# compute-sanitizer memcheck, the NCCL backend's conformance test on every GPU, aq-bench on the GPU (tiny and
# gpt2-124m at T=256 in fp32; GPT-2 124M at T=1024, B=16 in bf16 with MFU, peak device memory and the step-loop
# cudaMalloc count) and, when a python3 with a CUDA build of torch is found ($PYTHON first, then python3, python,
# /usr/bin/python3), scripts/bench_vs_pytorch.py --device cuda: the same bf16 model in PyTorch eager and
# torch.compile.
#
# Time plan on one H100 with 16 cores (the whole is planned for < 10 minutes; the figures are estimates):
#   1. configure + build (-DAQ_CUDA_ARCHS=native, -j$(nproc))                       ~3-4 min
#   2. ctest -L gpu (kernels vs CPU, 20 GPU steps vs CPU for GPT-2 and a Llama, DiLoCo on the GPU vs the CPU
#      (CudaTraining.*Diloco*), the mixed GPU + CPU DiLoCo job (mixed_centres_gpu), NCCL np1) ~1-2 min
#   3. ctest -L cpu, nproc/2 tests at a time                                          ~1 min
#      (includes aq_op_check: with a GPU visible, `aq-op check` compares every built-in's CUDA kernels, fp32 and
#      bf16, forward and backward, with the CPU kernels through the generic call path; its "cuda-vs-cpu" lines)
#   4. compute-sanitizer memcheck, 2 steps of a 2-layer model          (limit 150 s)    ~30 s
#   5. NCCL conformance on every GPU (needs MPI)                       (limit 120 s)    ~10 s
#      and, with 2+ GPUs, 5 steps across 2 centres with int8 on the cross-centre hop (limit 60 s)  ~10 s
#   6. aq-bench tiny fp32 20 steps, gpt2-124m T=256 fp32 10 steps      (limit 90 s each) ~20 s
#   7. aq-bench gpt2-124m-1k bf16, 3 warm-up + 30 steps                (limit 150 s)    ~20-30 s
#   8. bench_vs_pytorch.py --device cuda: aq, torch eager, torch.compile (30 steps each after 3 warm-up; the
#      compile happens in warm-up)                                      (limit 300 s)    ~2-3 min
# Stages 4-8 run under `timeout`, bounded by a deadline of GPU_CHECK_BUDGET_S (570) seconds from the start: a
# stage that would cross it is shortened, torch.compile is dropped (eager only) when less than 180 s are left,
# and a stage with too little time left is skipped with the reason printed.
# Without Open MPI the build has no MPI (and so no NCCL backend); the MPI/NCCL stages are skipped with the reason.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
BUILD=build-gpu
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-570}

left() { echo $((START + BUDGET - $(date +%s))); }
limit() {  # WANT_S → min(WANT_S, seconds left before the deadline)
  local l
  l=$(left)
  if ((l < $1)); then echo "$l"; else echo "$1"; fi
}
stamp() { date +%s; }

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

# ---- 1. build ---------------------------------------------------------------------------------------------
if ! cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DAQ_CUDA=ON -DAQ_CUDA_ARCHS=native > "$BUILD.log" 2>&1; then
  cat "$BUILD.log"
  echo "gpu_check.sh: CMake configuration failed" >&2
  exit 1
fi
grep -E "Aqueduct: (CUDA|MPI|NCCL)" "$BUILD.log" | sed 's/^-- /build: /'
HAVE_MPI=0
grep -q "Aqueduct: MPI ON" "$BUILD.log" && HAVE_MPI=1
((HAVE_MPI)) || echo "build: no MPI (Open MPI not found): single-process build; the MPI and NCCL stages are skipped"
cmake --build "$BUILD" -j"$(nproc)" > "$BUILD.build.log" 2>&1 || { tail -40 "$BUILD.build.log"; exit 1; }
BUILD_S=$(($(stamp) - START))
echo "build: ${BUILD_S} s"

# ---- 2-3. test suites -------------------------------------------------------------------------------------
summary() {  # LABEL [PARALLEL] → "passed failed skipped"
  ctest --test-dir "$BUILD" -L "$1" --output-on-failure --timeout 300 -j"${2:-1}" > "$BUILD.$1.log" 2>&1
  local total passed failed skipped
  total=$(grep -c "Test *#" "$BUILD.$1.log")
  failed=$(grep -cE "\*\*\*(Failed|Exception|Timeout)" "$BUILD.$1.log")
  skipped=$(grep -c "\*\*\*Skipped" "$BUILD.$1.log")
  passed=$((total - failed - skipped))
  echo "$passed $failed $skipped"
}
T0=$(stamp)
read -r GP GF GS < <(summary gpu)
T_GPU=$(($(stamp) - T0))
T0=$(stamp)
# The CPU tests run two OpenMP threads each and use their own temporary folders: half the cores' worth at once.
read -r CP CF CS < <(summary cpu $(($(nproc) / 2 > 1 ? $(nproc) / 2 : 1)))
T_CPU=$(($(stamp) - T0))
grep -E "\*\*\*(Failed|Exception|Timeout)" "$BUILD.gpu.log" "$BUILD.cpu.log"
echo "tests: gpu ${T_GPU} s, cpu ${T_CPU} s ($(left) s left of the ${BUDGET} s budget)"

# ---- 4. compute-sanitizer ---------------------------------------------------------------------------------
# A short training on the GPU under compute-sanitizer (out-of-bounds and misaligned accesses). No leak check: the
# caching allocator keeps its blocks until exit by design.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
awk 'BEGIN { for (i = 0; i < 20000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BUILD/bin/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null
TRAIN=("$BUILD/bin/aq-train" --device cuda --data "$TMP/data/train_*.bin" --layers 2 --heads 4 --dim 64 --seq 64
       --batch 4)
T0=$(stamp)
MEMCHECK="not run (compute-sanitizer missing)"
if command -v compute-sanitizer > /dev/null; then
  L=$(limit 150)
  if ((L < 30)); then
    MEMCHECK="skipped: time budget (${L} s left)"
  else
    timeout "$L" compute-sanitizer --tool memcheck --error-exitcode 9 "${TRAIN[@]}" --steps 2 > "$BUILD.memcheck.log" 2>&1
    case $? in
      0) MEMCHECK="clean" ;;
      124) MEMCHECK="TIMEOUT after ${L} s (see $BUILD.memcheck.log)" ;;
      *) MEMCHECK="ERRORS (see $BUILD.memcheck.log)" ;;
    esac
  fi
fi
T_MEMCHECK=$(($(stamp) - T0))

# ---- 5. NCCL across every GPU of the machine (the ctest run above used one rank) --------------------------
T0=$(stamp)
NGPU=$(nvidia-smi -L | grep -c '^GPU')  # whole GPUs (MIG instances are indented lines)
if ((!HAVE_MPI)); then
  NCCL="skipped: the build has no MPI (Open MPI absent); the NCCL backend exchanges its id over MPI"
elif ! command -v mpirun > /dev/null; then
  NCCL="skipped: no mpirun on PATH"
elif [[ ! -x $BUILD/bin/test_nccl ]]; then
  NCCL="skipped: no NCCL in this build (nccl.h / libnccl not found by CMake)"
else
  L=$(limit 120)
  if ((L < 20)); then
    NCCL="skipped: time budget (${L} s left)"
  else
    timeout "$L" mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$NGPU" "$BUILD/bin/test_nccl" \
      > "$BUILD.nccl.log" 2>&1
    case $? in
      0) NCCL="ok on $NGPU GPU(s)" ;;
      77) NCCL="skipped: $(grep -m1 SKIP "$BUILD.nccl.log")" ;;
      124) NCCL="TIMEOUT after ${L} s (see $BUILD.nccl.log)" ;;
      *) NCCL="FAILED (see $BUILD.nccl.log)" ;;
    esac
  fi
fi
# Two centres on GPUs: the hierarchical exchange with int8 on the cross-centre hop, encoded on the device
# (parallel/algo/codec_cuda.cu; the kernels alone are in test_codec_cuda above). Needs a GPU per rank.
if ((NGPU >= 2)) && [[ $NCCL == ok* ]]; then
  L=$(limit 60)
  if ((L < 15)); then
    NCCL="$NCCL; centres: skipped (time budget)"
  elif timeout "$L" mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 "${TRAIN[@]}" --steps 5 \
      --centres 2 --wan-compress int8 > "$BUILD.centres.log" 2>&1; then
    NCCL="$NCCL; 2 centres, hier int8 on GPUs: ok ($(grep -m1 -o 'wan: bytes sent.*' "$BUILD.centres.log"))"
  else
    NCCL="$NCCL; 2 centres, hier int8 on GPUs: FAILED (see $BUILD.centres.log)"
  fi
fi
T_NCCL=$(($(stamp) - T0))

# ---- 6-7. aq-bench on the GPU -----------------------------------------------------------------------------
# Each run's output is in $BUILD.bench-TAG.log; its last line is JSON. ROWS collects "label<TAB>json or reason".
ROWS=()
BENCH_FAIL=0
bench() {  # TAG LABEL LIMIT_S aq-bench-args...
  local tag=$1 label=$2 want=$3 l rc json
  shift 3
  l=$(limit "$want")
  if ((l < 15)); then
    ROWS+=("$label	skipped: time budget (${l} s left)")
    BENCH_FAIL=1
    return
  fi
  timeout "$l" "$BUILD/bin/aq-bench" --device cuda "$@" > "$BUILD.bench-$tag.log" 2>&1
  rc=$?
  json=$(tail -1 "$BUILD.bench-$tag.log")
  if ((rc == 0)) && [[ $json == \{* ]]; then
    ROWS+=("$label	$json")
    # Every step after the first must be served by the caching allocator.
    if ! grep -q '"step_loop_device_mallocs":0[,}]' <<< "$json"; then BENCH_FAIL=1; fi
  elif ((rc == 124)); then
    ROWS+=("$label	TIMEOUT after ${l} s (see $BUILD.bench-$tag.log)")
    BENCH_FAIL=1
  else
    ROWS+=("$label	FAILED: $(grep -m1 'error' "$BUILD.bench-$tag.log" || tail -1 "$BUILD.bench-$tag.log")")
    BENCH_FAIL=1
  fi
}
T0=$(stamp)
bench tiny "aq tiny fp32" 90 --config tiny --dtype fp32 --steps 20 --warmup 2
bench gpt2-124m "aq gpt2-124m T256 fp32" 90 --config gpt2-124m --dtype fp32 --steps 10 --warmup 2
bench gpt2-124m-1k "aq gpt2-124m-1k bf16" 150 --config gpt2-124m-1k --dtype bf16 --steps 30 --warmup 3
T_BENCH=$(($(stamp) - T0))
sed -n '/^device cuda/,/^device memory/p' "$BUILD.bench-gpt2-124m-1k.log" 2> /dev/null

# ---- 8. PyTorch on the same GPU ---------------------------------------------------------------------------
T0=$(stamp)
rm -f "$BUILD.torch.json"
TORCH_PY=""
TORCH="not run"
for py in ${PYTHON:-} python3 python /usr/bin/python3; do
  command -v "$py" > /dev/null || continue
  probe=$(timeout 120 "$py" -c 'import sys, torch
if not torch.cuda.is_available():
    print("torch %s without CUDA (torch.version.cuda = %s)" % (torch.__version__, torch.version.cuda)); sys.exit(3)
print("torch %s, CUDA %s" % (torch.__version__, torch.version.cuda))' 2>&1)
  case $? in
    0) TORCH_PY=$(command -v "$py"); TORCH="$(tail -1 <<< "$probe") ($TORCH_PY)"; break ;;
    3) TORCH="skipped: $py has $(tail -1 <<< "$probe")" ;;
    *) [[ $TORCH == "not run" ]] && TORCH="skipped: no python with torch ($py: $(tail -1 <<< "$probe"))" ;;
  esac
done
[[ $TORCH == "not run" ]] && TORCH="skipped: no python3 on PATH"
if [[ -n $TORCH_PY ]]; then
  L=$(limit 300)
  MODES=eager,compile
  ((L < 180)) && MODES=eager && TORCH="$TORCH; torch.compile dropped: time budget (${L} s left)"
  if ((L < 60)); then
    TORCH="skipped: time budget (${L} s left)"
  else
    timeout "$L" "$TORCH_PY" scripts/bench_vs_pytorch.py --device cuda --bench "$BUILD/bin/aq-bench" \
      --configs gpt2-124m-1k --steps 30 --warmup 3 --modes "$MODES" --timeout $((L - 5)) \
      --json-out "$BUILD.torch.json" > "$BUILD.torch.log" 2>&1
    rc=$?
    ((rc == 124)) && TORCH="TIMEOUT after ${L} s (see $BUILD.torch.log); $TORCH"
    ((rc != 0 && rc != 124)) && TORCH="FAILED (exit $rc, see $BUILD.torch.log); $TORCH"
    sed -n '/^gpt2-124m-1k: GPT-2/,$p' "$BUILD.torch.log"
  fi
fi
T_TORCH=$(($(stamp) - T0))

# ---- summary ----------------------------------------------------------------------------------------------
echo
echo "gpu_check summary ($(($(stamp) - START)) s; build ${BUILD_S} s, gpu tests ${T_GPU} s, cpu tests ${T_CPU} s," \
     "memcheck ${T_MEMCHECK} s, nccl ${T_NCCL} s, aq-bench ${T_BENCH} s, pytorch ${T_TORCH} s)"
printf '%-22s %7s %7s %8s\n' "suite" "passed" "failed" "skipped"
printf '%-22s %7d %7d %8d\n' "gpu (CUDA kernels)" "$GP" "$GF" "$GS" "cpu" "$CP" "$CF" "$CS"
echo "memcheck (2 steps):    $MEMCHECK"
echo "nccl conformance:      $NCCL"
echo "pytorch:               $TORCH"
echo
FMT_PY=${TORCH_PY:-$(command -v python3 || command -v /usr/bin/python3 || true)}
if [[ -n $FMT_PY ]]; then
  printf '%s\n' "${ROWS[@]}" | "$FMT_PY" -c '
import json, sys
torch_json = sys.argv[1]
rows = []
for line in sys.stdin:
    label, _, rest = line.rstrip("\n").partition("\t")
    try:
        rows.append((label, json.loads(rest), None))
    except ValueError:
        rows.append((label, None, rest))
ratios = ""
try:
    with open(torch_json) as f:
        res = json.load(f)["results"][0]
    for mode, r in res["torch"].items():
        label = ("torch.compile" if mode == "compile" else "torch eager") + " 1k bf16"
        if "error" in r:
            rows.append((label, None, r["error"].splitlines()[0][:150]))
        else:
            r = dict(r, mfu=res["torch_mfu"].get(mode), step_loop_device_mallocs=None,
                     note="attention %s, AdamW %s, max_memory_allocated" % (r.get("attention"), r.get("adamw")))
            rows.append((label, r, None))
    ratios = ", ".join("%s %s" % (k, "-" if v is None else "%.2fx" % v) for k, v in res["ratios"].items())
    if res.get("aq"):
        rows.append(("aq 1k bf16 (same run)", dict(res["aq"], mfu=res.get("aq_mfu")), None))
except (OSError, ValueError, KeyError, IndexError):
    pass
def num(v, f):
    return "-" if v is None else f % v
print("%-26s %10s %8s %6s %9s %11s  %s" % ("benchmark", "tokens/s", "ms/step", "MFU", "peak MiB", "step-loop", "notes"))
print("%-26s %10s %8s %6s %9s %11s" % ("", "", "", "", "(device)", "cudaMallocs"))
for label, r, err in rows:
    if r is None:
        print("%-26s %10s %8s %6s %9s %11s  %s" % (label, "-", "-", "-", "-", "-", err))
        continue
    mfu = r.get("mfu")
    note = r.get("note") or (r.get("peak_source", "") if mfu is None else "")
    print("%-26s %10s %8s %6s %9s %11s  %s" % (label, num(r.get("tokens_per_s"), "%.0f"), num(r.get("ms_per_step"), "%.1f"),
          num(None if mfu is None else 100 * mfu, "%.1f%%"), num(r.get("device_peak_mib"), "%.0f"),
          num(r.get("step_loop_device_mallocs"), "%d"), note))
if ratios:
    print("aq / PyTorch (same run, tokens/s): " + ratios + "   (targets: aq/compile >= 1.0x, aq MFU >= 45%)")
' "$BUILD.torch.json"
else
  printf '%s\n' "${ROWS[@]}"
fi
echo "logs: $BUILD.gpu.log $BUILD.cpu.log $BUILD.memcheck.log $BUILD.bench-*.log $BUILD.torch.log"
[[ $GF -eq 0 && $CF -eq 0 && $GS -eq 0 && $MEMCHECK != ERRORS* && $MEMCHECK != TIMEOUT* && $NCCL != FAILED* &&
   $NCCL != TIMEOUT* && $NCCL != *"hier int8 on GPUs: FAILED"* && $BENCH_FAIL -eq 0 ]]
