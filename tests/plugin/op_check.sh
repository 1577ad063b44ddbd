#!/usr/bin/env bash
# op_check.sh — `aq-op check` end to end.
#   good: every built-in operator and examples/custom_op's myorg::squared_relu pass (exit 0, no FAIL line), and
#         every built-in that `aq-op list` declares appears in the output.
#   wrong: tests/plugin/wrong_ops.cpp's operators, each wrong in one way, produce FAIL lines naming the op and the
#         check that catches it, and exit 1.
#   mpi:  under mpirun with NP ranks, every sharding rule of the built-ins and the example plugin also runs with
#         one shard per rank ("xNP mpi" lines), and all pass.
# usage: op_check.sh good|wrong AQ_OP PLUGIN.so
#        op_check.sh mpi AQ_OP PLUGIN.so NP MPIRUN [MPIRUN ARGS...]
set -euo pipefail
mode=$1 aq_op=$2 plugin=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT

if [[ $mode == good ]]; then
  rc=0
  "$aq_op" check --plugin "$plugin" >"$out" 2>&1 || rc=$?
  cat "$out"
  [[ $rc == 0 ]] || { echo "op_check: aq-op check exited $rc, expected 0"; exit 1; }
  ! grep -q " FAIL " "$out" || { echo "op_check: FAIL lines above"; exit 1; }
  ops=$("$aq_op" list | awk '/^op aq::/ {print $2}')
  [[ -n $ops ]] || { echo "op_check: aq-op list printed no built-in operator"; exit 1; }
  for op in $ops myorg::squared_relu; do
    grep -q "^$op " "$out" || { echo "op_check: $op does not appear in aq-op check's output"; exit 1; }
  done
  # Every op gets a line for each check (ok, skip or "not applicable", never silence).
  for op in $ops myorg::squared_relu; do
    for check in kernels shape backward determinism cuda-vs-cpu sharding; do
      grep -qE "^$op +$check" "$out" || { echo "op_check: no $check line for $op"; exit 1; }
    done
  done
  grep -qE "^summary: .* 0 FAIL" "$out" || { echo "op_check: no summary line with 0 FAIL"; exit 1; }
  echo "op_check good: $(echo $ops | wc -w) built-ins and myorg::squared_relu pass"
elif [[ $mode == mpi ]]; then
  np=$4
  shift 4
  rc=0
  "$@" -np "$np" "$aq_op" check --plugin "$plugin" >"$out" 2>&1 || rc=$?
  cat "$out"
  [[ $rc == 0 ]] || { echo "op_check: mpirun -np $np aq-op check exited $rc, expected 0"; exit 1; }
  ! grep -q " FAIL " "$out" || { echo "op_check: FAIL lines above"; exit 1; }
  grep -q "and on the $np MPI ranks" "$out" || { echo "op_check: aq-op check did not see $np MPI ranks"; exit 1; }
  for op in $("$aq_op" list | awk '/^op aq::/ {print $2}' | grep -v '^aq::adamw$\|^aq::classifier$') myorg::squared_relu; do
    grep -qE "^$op +sharding .* x$np mpi +ok \($np MPI ranks" "$out" || { echo "op_check: no x$np mpi line for $op"; exit 1; }
  done
  echo "op_check mpi: every sharding rule holds on $np MPI ranks"
else
  rc=0
  "$aq_op" check --plugin "$plugin" wrong::short_shape wrong::flipped_grad wrong::global_norm wrong::noisy \
    wrong::overwrites >"$out" 2>&1 || rc=$?
  cat "$out"
  [[ $rc == 1 ]] || { echo "op_check: aq-op check exited $rc on the wrong plugin, expected 1"; exit 1; }
  expect() {
    grep -qE "$1" "$out" || { echo "op_check: expected a line matching: $1"; exit 1; }
  }
  expect '^wrong::short_shape +shape cpu/F64 +FAIL .*output "y": .*canary bytes past the end overwritten'
  expect '^wrong::short_shape +shape cpu/F32 +FAIL .*canary bytes past the end overwritten'
  expect '^wrong::flipped_grad +backward cpu/F64 +FAIL d/d x\['
  expect '^wrong::flipped_grad +shape cpu/F64 +ok'
  expect '^wrong::flipped_grad +sharding elementwise x2 +ok'
  expect '^wrong::global_norm +sharding elementwise x2 +FAIL (y|dx) S\(0\) gathered differs'
  expect '^wrong::global_norm +sharding elementwise x3 +FAIL'
  expect '^wrong::global_norm +sharding replicated x2 +ok'
  expect '^wrong::global_norm +backward cpu/F64 +ok'
  expect '^wrong::noisy +determinism cpu/F64 +FAIL output "y" differs between two runs'
  expect '^wrong::noisy +backward +not applicable: the op declares no backward'
  expect '^wrong::overwrites +backward cpu/F64 +FAIL d/d x\['
  expect '^wrong::overwrites +shape cpu/F64 +ok'
  expect '^summary: 5 operators, .* [1-9][0-9]* FAIL'
  echo "op_check wrong: every deliberate mistake was caught by its check"
fi
