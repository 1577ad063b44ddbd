#!/usr/bin/env bash
# bench_collectives.sh (test) — aq-bench collectives on 4 ranks cut into 2 centres (--centres 2), 2 sizes, flat
# and hier with no compression and int8. Checks: exit 0; the CSV has the header and 6 rows (flat none, hier none,
# hier int8 at each size); fp32 results are exact (max_rel_err 0), int8 within 1%; at every size hier's
# wan_bytes are below flat's and int8's below hier fp32's. No timing checks.
# Usage: bench_collectives.sh BUILD_BIN_DIR MPIEXEC
set -uo pipefail
BIN=$1
MPIRUN=$2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rc=0
timeout 100 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -np 4 "$BIN/aq-bench" collectives \
  --centres 2 --sizes 4K,64K --iters 2 --warmup 1 --algos flat,hier --compress none,int8 --csv "$TMP/c.csv" \
  > "$TMP/out.txt" 2>&1 || rc=$?
cat "$TMP/out.txt"
[[ $rc -eq 0 ]] || { echo "FAIL: aq-bench collectives exited $rc"; exit 1; }
python3 - "$TMP/c.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
fail = 0
def check(what, ok):
    global fail
    print(("ok " if ok else "FAIL ") + what)
    fail += not ok
check("6 rows (got %d)" % len(rows), len(rows) == 6)
by = {(r["algo"], r["compress"], int(float(r["bytes"]))): r for r in rows}
for size in (4096, 65536):
    f, h, q = by.get(("flat", "none", size)), by.get(("hier", "none", size)), by.get(("hier", "int8", size))
    if not (f and h and q):
        check("rows for %d bytes" % size, False)
        continue
    check("%d B: 4 ranks, 2 centres" % size, f["ranks"] == "4" and f["centres"] == "2")
    check("%d B: fp32 sums exact" % size, float(f["max_rel_err"]) == 0 and float(h["max_rel_err"]) == 0)
    check("%d B: int8 within 1%%" % size, float(q["max_rel_err"]) < 0.01)
    fw, hw, qw = float(f["wan_bytes"]), float(h["wan_bytes"]), float(q["wan_bytes"])
    check("%d B: wan_bytes hier %.0f < flat %.0f" % (size, hw, fw), 0 < hw < fw)
    check("%d B: wan_bytes int8 %.0f < hier fp32 %.0f" % (size, qw, hw), 0 < qw < hw)
sys.exit(1 if fail else 0)
PY
