#!/usr/bin/env python3
"""check_trace.py — validates an aq-train/aq-bench --trace file (Chrome Trace Event Format).

Checks: the file is JSON with a traceEvents list; every rank 0..N-1 is a process with a process_name naming its
host, centre and tp/dp coordinates; every span is a complete event ("ph":"X") with ts/dur >= 0, a step inside
the window, and spans on one (pid, tid) never overlap partially; forward/backward block spans exist on every
rank; with --buckets, gradient-bucket all-reduce spans carry their bytes and at least one overlaps a backward
block span of the same rank in time (the buckets overlap backward); --tp: tensor-parallel spans exist; --expect
NAME: a span whose name starts with NAME exists. Prints span counts by name (block and bucket numbers folded)
and the overlap figures; exits 1 with one line per failure.

Usage: check_trace.py FILE --ranks N --steps A:B [--buckets] [--tp] [--expect NAME]...
"""
import argparse
import collections
import json
import re
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--steps", required=True)
    ap.add_argument("--buckets", action="store_true")
    ap.add_argument("--tp", action="store_true")
    ap.add_argument("--expect", action="append", default=[])
    a = ap.parse_args()
    first, last = (int(x) for x in a.steps.split(":"))
    errors = []

    with open(a.file) as f:
        doc = json.load(f)
    events = doc["traceEvents"]
    names = {}
    spans = collections.defaultdict(list)  # (pid, tid) -> [(ts, end, event)]
    for e in events:
        if e.get("ph") == "M":
            if e["name"] == "process_name":
                names[e["pid"]] = e["args"]["name"]
            continue
        if e.get("ph") != "X":
            errors.append(f"event of phase {e.get('ph')!r} (expected X or M): {e}")
            continue
        if e["dur"] < 0:
            errors.append(f"negative duration: {e}")
        step = e["args"]["step"]
        if not first <= step <= last:
            errors.append(f"span outside --trace-steps {a.steps}: {e}")
        spans[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e))

    for r in range(a.ranks):
        n = names.get(r)
        if n is None:
            errors.append(f"rank {r} has no process_name")
        elif not all(k in n for k in (f"rank {r}", "centre", "tp ", "dp ")):
            errors.append(f"rank {r}'s process_name lacks host/centre/tp/dp: {n!r}")
    if sorted(names) != list(range(a.ranks)):
        errors.append(f"processes {sorted(names)}, expected ranks 0..{a.ranks - 1}")

    # Proper nesting per (pid, tid): sorted by start (longest first), a stack of open spans.
    eps = 1e-6
    for key, lst in spans.items():
        lst.sort(key=lambda s: (s[0], -s[1]))
        stack = []
        for ts, end, e in lst:
            while stack and stack[-1][1] <= ts + eps:
                stack.pop()
            if stack and end > stack[-1][1] + eps:
                errors.append(f"pid {key[0]} tid {key[1]}: {e['name']!r} [{ts}, {end}] overlaps "
                              f"{stack[-1][2]['name']!r} [{stack[-1][0]}, {stack[-1][1]}] partially")
                break
            stack.append((ts, end, e))

    def fold(name):
        return re.sub(r"\d+", "N", name)

    counts = collections.Counter(fold(e["name"]) for lst in spans.values() for _, _, e in lst)
    print("span counts by name (numbers folded to N):")
    for name, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {c:6d}  {name}")

    by_rank = collections.defaultdict(list)
    for (pid, _), lst in spans.items():
        by_rank[pid].extend(lst)
    for r in range(a.ranks):
        got = {fold(e["name"]) for _, _, e in by_rank[r]}
        for want in ("fwd block N", "bwd block N", "optimizer step", "data loading", "step N"):
            if want not in got:
                errors.append(f"rank {r}: no {want!r} span")
        if a.tp and not any(e["cat"] == "tp collectives" for _, _, e in by_rank[r]):
            errors.append(f"rank {r}: no tensor-parallel collective span (--tp)")
    for want in a.expect:
        if not any(e["name"].startswith(want) for lst in spans.values() for _, _, e in lst):
            errors.append(f"no span named {want!r}...")

    if a.buckets:
        total = overlapping = 0
        overlap_ms = 0.0
        for r in range(a.ranks):
            bwd = [(ts, end) for ts, end, e in by_rank[r] if e["name"].startswith("bwd block")]
            buckets = [(ts, end, e) for ts, end, e in by_rank[r] if re.fullmatch(r"bucket \d+ all-reduce", e["name"])]
            if not buckets:
                errors.append(f"rank {r}: no gradient-bucket all-reduce span")
            for ts, end, e in buckets:
                total += 1
                if not e["args"].get("bytes", 0) > 0:
                    errors.append(f"rank {r}: bucket span without bytes: {e}")
                if e["tid"] % 100 != 1:
                    errors.append(f"rank {r}: bucket span on tid {e['tid']}, not the dp buckets thread")
                o = sum(max(0.0, min(end, b1) - max(ts, b0)) for b0, b1 in bwd)
                if o > 0:
                    overlapping += 1
                    overlap_ms += o / 1000
        print(f"bucket all-reduces: {total}; overlapping a backward block span of their rank: {overlapping} "
              f"({overlap_ms:.2f} ms of overlap in all)")
        if overlapping == 0:
            errors.append("no bucket all-reduce overlaps a backward block span on its rank")

    other = doc.get("otherData", {})
    if other:
        print("otherData:", json.dumps(other))
    for e in errors[:20]:
        print("FAIL:", e)
    if errors:
        sys.exit(1)
    print(f"ok: {sum(len(v) for v in spans.values())} spans from {len(names)} ranks, properly nested")


if __name__ == "__main__":
    main()
