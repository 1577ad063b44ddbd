#!/usr/bin/env bash
# plot_run.sh — scripts/plot_run.py draws aq-train JSONL logs headless: one log and two overlaid (with labels,
# validation lines and communication columns) give non-empty PNGs; a file that is not a log is refused with one
# line and a non-zero exit. Skips (77) without python3-matplotlib.
# Usage: plot_run.sh SOURCE_DIR
set -u
SRC=$1
/usr/bin/python3 -c "import matplotlib" 2> /dev/null || { echo "SKIP: python3-matplotlib is not installed"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for run in a b; do
  for i in $(seq 1 30); do
    echo "{\"step\":$i,\"loss\":$(awk -v i=$i 'BEGIN{print 5.5/(1+i/10)}'),\"lr\":0.001,\"grad_norm\":1.0,\"ms\":50,\"tokens_per_s\":1000,\"comm_ms\":10,\"exposed_comm_ms\":4,\"wan_ms\":3}"
    ((i % 10 == 0)) && echo "{\"step\":$i,\"split\":\"val\",\"loss\":$(awk -v i=$i 'BEGIN{print 5.6/(1+i/10)}')}"
  done > "$TMP/$run.jsonl"
done
fail=0
/usr/bin/python3 "$SRC/scripts/plot_run.py" --out "$TMP/one.png" "$TMP/a.jsonl" > /dev/null || fail=1
/usr/bin/python3 "$SRC/scripts/plot_run.py" --out "$TMP/two.png" --label first --label second "$TMP/a.jsonl" "$TMP/b.jsonl" > /dev/null || fail=1
for p in one two; do [[ -s $TMP/$p.png ]] || { echo "FAIL: $p.png not written"; fail=1; }; done
echo "not json" > "$TMP/bad.jsonl"
err=$(/usr/bin/python3 "$SRC/scripts/plot_run.py" --out "$TMP/bad.png" "$TMP/bad.jsonl" 2>&1)
rc=$?
[[ $rc -ne 0 && $(echo "$err" | wc -l) -eq 1 && $err == *"not a JSON line"* ]] || { echo "FAIL: bad log: exit $rc: $err"; fail=1; }
err=$(/usr/bin/python3 "$SRC/scripts/plot_run.py" --label x --out "$TMP/l.png" "$TMP/a.jsonl" "$TMP/b.jsonl" 2>&1)
[[ $? -ne 0 && $err == *"1 --label for 2 logs"* ]] || { echo "FAIL: label count: $err"; fail=1; }
[[ $fail -eq 0 ]] && echo "4 passed, 0 failed" || echo "plot_run: failures above"
exit $fail
