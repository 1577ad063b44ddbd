#!/usr/bin/env bash
# wan_testbed.sh (test) — the WAN testbed end to end: two emulated centres at 200 Mbit/s, 2 + 2 ranks of a short
# aq-train across them, then down. Checks:
#   - every rank sees its own centre (AQ_CENTRE and hostname), for an even and an unequal (3,1) split;
#   - the training banner places ranks 0,1 in centre0 and ranks 2,3 in centre1, and the run succeeds;
#   - each centre's link carried the gradient traffic: tx and rx between 0.5 and 4 gradients (4 B × parameters)
#     per step, plus 8 MiB for start-up (any all-reduce algorithm lands in this range: a hierarchical exchange
#     moves one gradient per direction, a flat ring 1.5, recursive doubling 2 per rank pair crossing);
#   - what centre0 sent, centre1 received (the hub adds only mpirun's control traffic).
# The bounds hold for fp32 gradients under any algorithm; a compressed exchange (int8) would need lower ones.
#   - the runtime's count of the bytes each centre sent (the sum of its ranks' wan_bytes) is within 5% of what
#     the link carried, for the hierarchical exchange in fp32 and with int8 compression (links at MTU 9000);
#   - with centre1 throttled (--cpu-quota), --balance auto gives it less work, synchronous and under DiLoCo.
# The testbed gets a name of its own (aqt<pid>), so a user's testbed is never touched, and is taken down on any
# exit. Skips (77) when not root or when this machine cannot create namespaces or tbf qdiscs.
# Usage: wan_testbed.sh BUILD_BIN_DIR TESTBED_SCRIPT
set -uo pipefail  # no -e: each check reports and the test goes on
BIN=$1
TB=$2
NAME=aqt$$
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: the WAN testbed needs root (network namespaces, tc); running as uid $(id -u)"
  exit 77
fi
TMP=$(mktemp -d)
cleanup() {
  "$TB" down --name "$NAME" > /dev/null 2>&1 || echo "WARNING: '$TB down --name $NAME' failed; remove the testbed by hand"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

rc=0
# MTU 9000: headers then add ~0.7% to the payload, so the runtime's byte counts can be held to 5% of the link's.
"$TB" up --centres 2 --rate 200mbit --mtu 9000 --name "$NAME" > "$TMP/up.txt" 2>&1 || rc=$?
if [[ $rc -eq 77 ]]; then
  echo "SKIP: $(cat "$TMP/up.txt")"
  exit 77
fi
[[ $rc -eq 0 ]] || { cat "$TMP/up.txt"; echo "FAIL: up exited $rc"; exit 1; }
grep -q "no latency emulated" "$TMP/up.txt" || { cat "$TMP/up.txt"; echo "FAIL: up does not say that latency is not emulated"; exit 1; }

fail=0
check() {  # WHAT CONDITION-STATUS
  if [[ $2 -eq 0 ]]; then echo "ok $1"; else echo "FAIL $1"; fail=$((fail + 1)); fi
}

# 1. Each rank's centre, even and unequal splits.
# stdout only: Open MPI's rsh launcher sometimes warns on stderr ("setpgid(...) failed in parent", a harmless
# race with the agent's exec); stderr is shown when the check fails.
where() {  # WHAT WANT NP [run options]: "rank centre hostname" lines, sorted by rank, must equal WANT
  local what=$1 want=$2 got
  shift 2
  got=$(timeout 60 "$TB" run "$@" --name "$NAME" -- sh -c 'echo "$OMPI_COMM_WORLD_RANK $AQ_CENTRE $(hostname)"' \
    2> "$TMP/where.err" | sort -n)
  [[ $got == "$want" ]]
  check "$what" $?
  [[ $got == "$want" ]] || { echo "$got"; cat "$TMP/where.err"; } | sed 's/^/    | /'
}
where "2+2 ranks see their centre" $'0 centre0 centre0\n1 centre0 centre0\n2 centre1 centre1\n3 centre1 centre1' 4
where "3+1 ranks see their centre" $'0 centre0 centre0\n1 centre0 centre0\n2 centre0 centre0\n3 centre1 centre1' 4 \
  --ranks-per-centre 3,1

# 2. Training across the centres; the link counters must move by the gradient traffic.
awk 'BEGIN { for (i = 0; i < 3000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null || { echo "FAIL: aq-prepare"; exit 1; }
STEPS=5
"$TB" bytes --name "$NAME" > "$TMP/before.txt"
start=$(date +%s)
rc=0
timeout 120 "$TB" run 4 --name "$NAME" --env OMP_NUM_THREADS=1 -- "$BIN/aq-train" --device cpu \
  --data "$TMP/data/train_*.bin" --steps $STEPS --batch 4 --seq 32 --threads 1 --log "$TMP/log.jsonl" \
  > "$TMP/train.txt" 2>&1 || rc=$?
"$TB" bytes --name "$NAME" > "$TMP/after.txt"
echo "training across 2 centres: exit $rc after $(($(date +%s) - start)) s"
[[ $rc -eq 0 ]]
check "aq-train across centres exits 0" $?
[[ $rc -eq 0 ]] || sed 's/^/    | /' "$TMP/train.txt" | tail -30
grep -Eq "^ +centre0 +rank +0 " "$TMP/train.txt" && grep -Eq "^ +centre0 +rank +1 " "$TMP/train.txt" &&
  grep -Eq "^ +centre1 +rank +2 " "$TMP/train.txt" && grep -Eq "^ +centre1 +rank +3 " "$TMP/train.txt"
check "banner: ranks 0,1 in centre0, ranks 2,3 in centre1" $?
[[ $(grep -c '"step"' "$TMP/log.jsonl" 2> /dev/null) -ge $STEPS ]]
check "$STEPS steps logged" $?

params=$(grep -Eo '[0-9]+ parameters' "$TMP/train.txt" | head -1 | cut -d' ' -f1)
[[ -n $params ]] || { echo "FAIL: no parameter count in the banner"; exit 1; }
grad=$((4 * params))
lo=$((grad * STEPS / 2))
hi=$((4 * grad * STEPS + 8 * 1024 * 1024))
delta() {  # CENTRE tx|rx
  local b a
  b=$(grep "^$1 " "$TMP/before.txt" | grep -Eo "$2=[0-9]+" | cut -d= -f2)
  a=$(grep "^$1 " "$TMP/after.txt" | grep -Eo "$2=[0-9]+" | cut -d= -f2)
  echo $((a - b))
}
echo "gradient: $params parameters = $grad B per step; link bytes expected in [$lo, $hi] per direction"
for c in centre0 centre1; do
  for d in tx rx; do
    v=$(delta $c $d)
    ((v >= lo && v <= hi))
    check "$c $d = $v B ($(awk -v v="$v" -v g="$grad" -v s=$STEPS 'BEGIN { printf "%.2f", v / g / s }') gradients per step)" $?
  done
done
# The bridge connects only the two centres and the hub, whose mpirun gets the daemons' control messages and the
# ranks' forwarded output: what one centre sent, the other received, give or take 1% and 512 KiB.
for pair in "centre0 centre1" "centre1 centre0"; do
  read -r a b <<< "$pair"
  s=$(delta "$a" tx)
  r=$(delta "$b" rx)
  diff=$((s > r ? s - r : r - s))
  ((diff <= s / 100 + 512 * 1024))
  check "$a sent $s B, $b received $r B" $?
done

# 3. The runtime's own count: the bytes each centre sent to the other ("wan: bytes sent by each centre", the sum
#    of its ranks' wan_bytes) within 5% of what its link carried, for the hierarchical exchange in fp32 (the
#    run above) and in int8.
counted() {  # FILE CENTRE
  sed -n 's/.*wan: bytes sent by each centre over [0-9]* steps://p' "$1" | tr ',' '\n' | awk -v c="$2" '$1 == c { print $2 }'
}
within5() {  # WHAT COUNTED LINK
  local what=$1 n=$2 l=$3
  [[ -n $n && $n -gt 0 ]] && awk -v n="$n" -v l="$l" 'BEGIN { d = (l - n) / n; exit !(d > -0.05 && d < 0.05) }'
  check "$what: runtime counted $n B, link carried $l B ($(awk -v n="${n:-0}" -v l="$l" 'BEGIN { if (n > 0) printf "%+.2f%%", 100 * (l - n) / n }'))" $?
}
for c in centre0 centre1; do within5 "hier fp32, $c" "$(counted "$TMP/train.txt" $c)" "$(delta $c tx)"; done
"$TB" bytes --name "$NAME" > "$TMP/before.txt"
rc=0
timeout 120 "$TB" run 4 --name "$NAME" --env OMP_NUM_THREADS=1 -- "$BIN/aq-train" --device cpu \
  --data "$TMP/data/train_*.bin" --steps $STEPS --batch 4 --seq 32 --threads 1 --wan-compress int8 \
  > "$TMP/int8.txt" 2>&1 || rc=$?
"$TB" bytes --name "$NAME" > "$TMP/after.txt"
[[ $rc -eq 0 ]]
check "aq-train --wan-compress int8 across centres exits 0" $?
[[ $rc -eq 0 ]] || sed 's/^/    | /' "$TMP/int8.txt" | tail -30
for c in centre0 centre1; do within5 "hier int8, $c" "$(counted "$TMP/int8.txt" $c)" "$(delta $c tx)"; done

# 4. A throttled centre (--cpu-quota: centre1's two ranks share a quarter of a core, a several-fold slowdown):
#    --balance auto must see it and give it less work — fewer micro-batches per step in synchronous data
#    parallelism, fewer inner steps per window under DiLoCo — and both runs must finish.
throttled() {  # WHAT FILE [aq-train flags]: runs aq-train with centre1 throttled, output to FILE; 1 = skipped
  local what=$1 file=$2
  shift 2
  rc=0
  timeout 300 "$TB" run 4 --name "$NAME" --env OMP_NUM_THREADS=1 --cpu-quota centre1=0.25 -- "$BIN/aq-train" \
    --device cpu --data "$TMP/data/train_*.bin" --batch 2 --seq 32 --threads 1 --balance auto --balance-steps 2 \
    "$@" > "$file" 2>&1 || rc=$?
  if [[ $rc -eq 77 ]]; then  # no cgroup v1 cpu controller here (wan_testbed.sh says why)
    echo "skip $what: $(tail -1 "$file")"
    return 1
  fi
  [[ $rc -eq 0 ]]
  check "$what: exits 0" $?
  [[ $rc -eq 0 ]] || sed 's/^/    | /' "$file" | tail -30
  return 0
}
share() {  # FILE CENTRE: the work the balance line gives the centre
  grep -Eo "centre $2: [0-9]+" "$1" | head -1 | awk '{ print $3 }'
}
if throttled "synchronous, centre1 at 0.25 core" "$TMP/balance.txt" --steps 6 --grad-accum 4; then
  a=$(share "$TMP/balance.txt" centre0)
  b=$(share "$TMP/balance.txt" centre1)
  [[ -n $a && -n $b ]] && ((a > b && a + b == 8))
  check "synchronous --balance auto: micro-batches per rank centre0 ${a:-?} > centre1 ${b:-?} (8 per rank pair)" $?
fi
if throttled "DiLoCo, centre1 at 0.25 core" "$TMP/pace.txt" --steps 12 --outer diloco --outer-steps 4; then
  a=$(share "$TMP/pace.txt" centre0)
  b=$(share "$TMP/pace.txt" centre1)
  [[ $a == 4 && -n $b ]] && ((b < 4))
  check "DiLoCo --balance auto: inner steps per window of 4, centre0 ${a:-?}, centre1 ${b:-?} (< 4)" $?
fi

echo "$fail failed"
[[ $fail -eq 0 ]]
