#!/usr/bin/env bash
# bench_wan_smoke.sh (test) — `aq-bench wan --steps 3`: the whole WAN benchmark on a testbed of its own (up,
# calibration, flat / hier / bf16 / int8 runs, predictions, what-if tables, down). Checks: exit 0; the CSV has
# the 4 configurations; the predicted-vs-measured and what-if tables are printed; no testbed is left behind.
# Skips (77) without root, as aq-bench wan itself does. No timing checks (3 steps are all warm-up).
# Usage: bench_wan_smoke.sh BUILD_BIN_DIR
set -uo pipefail
BIN=$1
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: aq-bench wan needs root (network namespaces, tc); running as uid $(id -u)"
  exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rc=0
timeout 170 "$BIN/aq-bench" wan --steps 3 --eval-batches 2 --out "$TMP/wan" > "$TMP/out.txt" 2>&1 || rc=$?
cat "$TMP/out.txt"
[[ $rc -eq 77 ]] && exit 77
fail=0
check() {  # WHAT STATUS
  if [[ $2 -eq 0 ]]; then echo "ok $1"; else echo "FAIL $1"; fail=$((fail + 1)); fi
}
[[ $rc -eq 0 ]]
check "aq-bench wan exits 0 (got $rc)" $?
for c in flat hier hier-bf16 hier-int8; do
  grep -q "^$c," "$TMP/wan.csv" 2> /dev/null
  check "CSV row $c" $?
done
grep -q "cost model vs measurement" "$TMP/out.txt" && grep -q "ordering" "$TMP/out.txt"
check "predicted vs measured table" $?
grep -q "What-if" "$TMP/out.txt"
check "what-if tables" $?
name=$(grep -Eo "testbed aqb[0-9]+ up" "$TMP/out.txt" | awk '{print $2}')
[[ -n $name ]] && ! ip netns list 2> /dev/null | grep -Eq "^$name-"
check "testbed '$name' taken down" $?
echo "$fail failed"
[[ $fail -eq 0 ]]
