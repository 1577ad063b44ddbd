#!/usr/bin/env bash
# bench_profile.sh — aq-bench on the CPU prints its BLAS kernels, the sgemm ceiling measured between the steps,
# the CPU MFU against it, and with --profile the per-op breakdown (every op family, "other", the GEMM shapes),
# in the human lines and in the JSON line. Checks the output's structure only: no timing is asserted.
#
#   bash tests/cli/bench_profile.sh build/bin
set -u
BIN=${1:?usage: bench_profile.sh BUILD_BIN_DIR}
export LC_ALL=C OMP_NUM_THREADS=1
out=$("$BIN/aq-bench" --config tiny --steps 2 --warmup 1 --threads 1 --profile 2>&1)
rc=$?
passed=0 failed=0
check() {  # name, fixed string expected in the output
  if grep -qF -- "$2" <<<"$out"; then
    echo "ok $1"
    passed=$((passed + 1))
  else
    echo "FAIL $1: \"$2\" not in the output"
    failed=$((failed + 1))
  fi
}
if [[ $rc != 0 ]]; then
  echo "FAIL aq-bench exited with $rc:"
  sed 's/^/    /' <<<"$out"
  exit 1
fi
check "banner names the BLAS kernels" "| blas OpenBLAS "
check "sgemm ceiling line" "sgemm ceiling "
check "ceiling measured between the steps" "(median of 2 passes between steps"
check "CPU MFU line" "CPU MFU vs sgemm ceiling "
check "profile header" "profile: exclusive wall time per step (mean of 2 measured steps"
for op in "fwd gemm attn.c_attn" "fwd gemm attn.c_proj" "fwd gemm mlp.c_fc" "fwd gemm mlp.c_proj" \
  "fwd gemm lm_head" "bwd gemm lm_head" "bwd gemm attn.c_attn" "fwd attention" "bwd attention" "fwd layernorm" \
  "bwd layernorm" "fwd gelu" "bwd gelu" "softmax-xent" "fwd embedding" "bwd embedding" "adamw" "grad norm" \
  "other (outside every region)"; do
  check "profile has $op" "  $op "
done
check "families" "by family: "
check "GEMM shapes" "GEMM shapes of the step, each timed alone"
check "JSON: cpu_mfu" '"cpu_mfu":'
check "JSON: ceiling" '"sgemm_ceiling_gflops":'
check "JSON: kernels" '"blas_kernels":'
check "JSON: profile" '"profile":{"step_ms":'
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
