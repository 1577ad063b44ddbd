#!/usr/bin/env python3
"""Compare an Aqueduct training run against the float64 PyTorch reference.

Reads both JSONL step logs (training lines only: lines carrying "split" are
eval lines and are skipped), matches them by step and reports loss relative
error (plus lr and grad_norm relative error, for information); then compares
the final checkpoints tensor by tensor with ||ours - ref||_2 / ||ref||_2 in
float64 (absolute ||ours - ref||_2 where ||ref||_2 == 0).

Usage:
  compare_reference.py --ours-log A.jsonl --ref-log B.jsonl \
      --ours-model A.safetensors --ref-model B.safetensors \
      [--loss-tol 1e-4] [--weight-tol 1e-3] [--show-worst 5]

Last line: "reference check: PASS (...)" or "reference check: FAIL ...". Exit
status 0 on pass, 1 on fail or when logs/checkpoints do not line up (then the
one line is "reference check: FAIL: <reason>").

Interpreter: Debian's /usr/bin/python3 (needs numpy).
"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt2 import read_safetensors  # noqa: E402


def die(msg):
    print(f"reference check: FAIL: {msg}")
    sys.exit(1)


def read_steps(path):
    """Return {step: record} for the training lines of a JSONL log."""
    steps = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                die(f"{path}:{lineno}: invalid JSON ({e})")
            if "split" in rec or "step" not in rec or "loss" not in rec:
                continue
            step = int(rec["step"])
            if step in steps:
                die(f"{path}: step {step} logged twice")
            steps[step] = rec
    return steps


def rel_err(a, b):
    """|a - b| / |b| (absolute error when b == 0); inf for missing/NaN."""
    if a is None or b is None:
        return math.inf
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def compare_logs(ours_path, ref_path):
    ours, ref = read_steps(ours_path), read_steps(ref_path)
    if sorted(ours) != sorted(ref):
        die(f"step counts differ: ours has {len(ours)} steps "
            f"({min(ours, default=0)}..{max(ours, default=0)}), reference has "
            f"{len(ref)} ({min(ref, default=0)}..{max(ref, default=0)})")
    if not ref:
        die("no training steps in the logs")
    print(f"{'step':>5} | {'ours loss':>12} | {'ref loss':>12} | {'rel err':>9} | "
          f"{'lr rel err':>10} | {'gnorm rel err':>13}")
    worst = 0.0
    for step in sorted(ref):
        a, b = ours[step], ref[step]
        err = rel_err(a["loss"], b["loss"])
        worst = max(worst, err)
        print(f"{step:5d} | {float(a['loss']):12.6f} | {float(b['loss']):12.6f} | "
              f"{err:9.2e} | {rel_err(a.get('lr'), b.get('lr')):10.2e} | "
              f"{rel_err(a.get('grad_norm'), b.get('grad_norm')):13.2e}")
    return worst


def compare_models(ours_path, ref_path, show_worst):
    ours, _ = read_safetensors(ours_path)
    ref, _ = read_safetensors(ref_path)
    missing = sorted(set(ref) - set(ours))
    extra = sorted(set(ours) - set(ref))
    if missing or extra:
        die(f"tensor names differ: missing in ours {missing[:5]}, "
            f"not in reference {extra[:5]}")
    errs = {}
    for name, b in ref.items():
        a = ours[name]
        if a.shape != b.shape:
            die(f"tensor {name}: ours {list(a.shape)} vs reference {list(b.shape)}")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = float(np.linalg.norm((a64 - b64).ravel()))
        ref_norm = float(np.linalg.norm(b64.ravel()))
        err = diff / ref_norm if ref_norm > 0 else diff
        errs[name] = err if math.isfinite(err) else math.inf
    ranked = sorted(errs.items(), key=lambda kv: kv[1], reverse=True)
    print(f"weights: {len(errs)} tensors compared; worst {min(show_worst, len(ranked))}:")
    for name, err in ranked[:show_worst]:
        print(f"  {err:10.3e}  {name} {list(ref[name].shape)}")
    return ranked[0][1] if ranked else 0.0


def main():
    ap = argparse.ArgumentParser(description="compare a run against the PyTorch reference")
    ap.add_argument("--ours-log", required=True)
    ap.add_argument("--ref-log", required=True)
    ap.add_argument("--ours-model", required=True)
    ap.add_argument("--ref-model", required=True)
    ap.add_argument("--loss-tol", type=float, default=1e-4)
    ap.add_argument("--weight-tol", type=float, default=1e-3)
    ap.add_argument("--show-worst", type=int, default=5)
    args = ap.parse_args()

    for path in (args.ours_log, args.ref_log, args.ours_model, args.ref_model):
        if not os.path.isfile(path):
            die(f"file not found: {path}")
    loss_err = compare_logs(args.ours_log, args.ref_log)
    weight_err = compare_models(args.ours_model, args.ref_model, args.show_worst)
    ok = loss_err <= args.loss_tol and weight_err <= args.weight_tol
    print(f"tolerances: loss rel err <= {args.loss_tol:g}, weight rel err <= {args.weight_tol:g}")
    print(f"reference check: {'PASS' if ok else 'FAIL'} (max loss rel err {loss_err:.3e}, "
          f"max weight rel err {weight_err:.3e})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
