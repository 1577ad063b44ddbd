#!/usr/bin/env bash
# bench_wan_smoke.sh (test) — `aq-bench wan --steps 3`: the whole WAN benchmark on a testbed of its own (up,
# calibration, flat / hier / bf16 / int8 runs, predictions, what-if tables, down). Checks: exit 0; the CSV has
# the 4 configurations; the predicted-vs-measured and what-if tables are printed; no testbed is left behind.
# Then centres of different speed (centre1 held to half a core, 1 + 1 ranks, 24 steps so that --balance auto
# splits after its warm-up and timed steps: 3 synchronous, 20 DiLoCo): the balance table has its rows, with the
# split each job chose and the balance rule's prediction (skipped without the cgroup v1 cpu controller that
# --cpu-quota needs).
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
if [[ -d /sys/fs/cgroup/cpu ]]; then
  rc=0
  timeout 170 "$BIN/aq-bench" wan --steps 24 --eval-batches 2 --ranks-per-centre 1,1 --cpu-quota centre1=0.5 \
    --grad-accum 2 --configs alone,sync-auto,diloco-auto --out "$TMP/bal" > "$TMP/bal.txt" 2>&1 || rc=$?
  cat "$TMP/bal.txt"
  check "aq-bench wan --cpu-quota exits 0 (got $rc)" $rc
  grep -q "^centres of different speed (--cpu-quota centre1=0.5" "$TMP/bal.txt"
  check "balance table" $?
  # sync --balance: 2 + 2 micro-batches dealt by speed, at least one each; DiLoCo: a pace of 1..50 per centre.
  grep -Eq "^sync --balance +[0-9]+,[0-9]+ .*\| [0-9]+,[0-9]+ " "$TMP/bal.txt"
  check "sync --balance row with the chosen and the predicted split" $?
  grep -Eq "^DiLoCo --balance +[0-9]+,[0-9]+ .*\| [0-9]+,[0-9]+ " "$TMP/bal.txt"
  check "DiLoCo --balance row with the chosen and the predicted pace" $?
  grep -Eq "^ +centre 1 +[0-9.]+ us per token" "$TMP/bal.txt"
  check "calibration has per-centre compute" $?
else
  echo "skip: centres of different speed (no cgroup v1 cpu controller at /sys/fs/cgroup/cpu)"
fi
echo "$fail failed"
[[ $fail -eq 0 ]]
