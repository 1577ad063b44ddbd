#!/usr/bin/env bash
# blas_reexec.sh — end to end: a program that believes OpenBLAS fell back to Prescott (test hook
# AQ_BLAS_TEST_CORENAME) re-executes itself with OPENBLAS_CORETYPE set and then reports corrected kernels; a
# user's OPENBLAS_CORETYPE is left alone; a normal run reports OpenBLAS's choice (or a correction, on a CPU where
# OpenBLAS really falls back).
#
#   bash tests/runtime/blas_reexec.sh build/bin
# Prints "ok NAME" or "FAIL NAME: reason" per case; exits 1 if any failed, 77 (skip) when OpenBLAS is not a
# DYNAMIC_ARCH build or the CPU has neither AVX2 nor AVX-512 (nothing to correct to).
set -u
BIN=${1:?usage: blas_reexec.sh BUILD_BIN_DIR}
export LC_ALL=C OMP_NUM_THREADS=1
unset OPENBLAS_CORETYPE AQ_BLAS_CORRECTED AQ_BLAS_TEST_CORENAME

flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then
  want=SkylakeX cpu=AVX-512
elif has avx2 && has fma; then
  want=Haswell cpu=AVX2
else
  echo "skip: this CPU has neither AVX2+FMA nor AVX-512, so there is no faster core to correct to"
  exit 77
fi

bench() { "$BIN/aq-bench" --config tiny --steps 1 --warmup 0 --threads 1 2>&1; }
passed=0 failed=0
check() {  # name, output, expected substring
  if grep -qF -- "$3" <<<"$2"; then
    echo "ok $1"
    passed=$((passed + 1))
  else
    echo "FAIL $1: expected \"$3\" in:"
    grep -i 'blas' <<<"$2" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

out=$(bench)
if grep -q 'blas OpenBLAS.*NOT corrected: .*DYNAMIC_ARCH' <<<"$out"; then
  echo "skip: this OpenBLAS is not a DYNAMIC_ARCH build (OPENBLAS_CORETYPE has no effect)"
  exit 77
fi
if grep -qE 'blas OpenBLAS .* kernels [A-Za-z0-9_]+ \((OpenBLAS.s own choice|corrected: )' <<<"$out"; then
  echo "ok plain run names its kernels"
  passed=$((passed + 1))
else
  check "plain run names its kernels" "$out" "kernels"
fi

out=$(AQ_BLAS_TEST_CORENAME=Prescott bench)
check "fallback is corrected after a re-exec" "$out" \
  "kernels $want (corrected: OpenBLAS chose Prescott on an $cpu CPU)"
# The JSON line carries the same facts for scripts.
check "JSON names the corrected kernels" "$out" "\"blas_kernels\":\"$want\",\"blas_choice\":\"corrected\""

out=$(AQ_BLAS_TEST_CORENAME=Prescott OPENBLAS_CORETYPE=Haswell bench)
check "user OPENBLAS_CORETYPE wins" "$out" "kernels Haswell (OPENBLAS_CORETYPE=Haswell set by the user)"

# The marker of a corrected process stops any further re-exec (no loop even if the hook stays set).
out=$(AQ_BLAS_TEST_CORENAME=Prescott AQ_BLAS_CORRECTED="OpenBLAS chose Prescott on an $cpu CPU" \
  OPENBLAS_CORETYPE=$want timeout 60 "$BIN/aq-bench" --config tiny --steps 1 --warmup 0 --threads 1 2>&1)
check "no second re-exec" "$out" "kernels $want (corrected: "

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
