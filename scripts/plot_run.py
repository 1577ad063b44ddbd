#!/usr/bin/env python3
"""Plot one or more aq-train JSONL logs (--log) to a PNG: training and validation loss, tokens/s, and per step the
compute / communication / exposed-communication split (plus wan_ms across centres). Several logs are overlaid,
each with its label. Needs Debian's python3-matplotlib; runs headless.

Usage: plot_run.py [--out run.png] [--label NAME]... LOG.jsonl [LOG.jsonl ...]
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path):
    steps, val = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"plot_run.py: {path}:{n}: not a JSON line ({e.msg}); pass aq-train's --log file")
            (val if j.get("split") == "val" else steps).append(j)
    if not steps:
        sys.exit(f"plot_run.py: {path} has no step lines; pass a log written by aq-train --log")
    return steps, val


def main():
    ap = argparse.ArgumentParser(description="Plot aq-train JSONL logs")
    ap.add_argument("logs", nargs="+", help="aq-train --log files")
    ap.add_argument("--out", default="run.png", help="PNG to write (run.png)")
    ap.add_argument("--label", action="append", default=[], help="label of each log, in order (default: file name)")
    a = ap.parse_args()
    if a.label and len(a.label) != len(a.logs):
        sys.exit(f"plot_run.py: {len(a.label)} --label for {len(a.logs)} logs; give one per log or none")
    fig, (ax_loss, ax_tps, ax_time) = plt.subplots(1, 3, figsize=(15, 4))
    for i, path in enumerate(a.logs):
        steps, val = read_log(path)
        label = a.label[i] if a.label else path
        x = [s["step"] for s in steps]
        # Steps a paced DiLoCo centre sat out ("idle") repeat its last loss: leave them off the loss curve.
        trained = [s for s in steps if not s.get("idle")]
        line, = ax_loss.plot([s["step"] for s in trained], [s["loss"] for s in trained], lw=0.8, alpha=0.7,
                             label=f"{label} train")
        if val:
            ax_loss.plot([v["step"] for v in val], [v["loss"] for v in val], "o-", color=line.get_color(),
                         label=f"{label} val")
        ax_tps.plot(x, [s["tokens_per_s"] for s in steps], lw=0.8, label=label)
        ms = [s["ms"] for s in steps]
        comm = [s.get("comm_ms", 0.0) for s in steps]
        exposed = [s.get("exposed_comm_ms", 0.0) for s in steps]
        ax_time.plot(x, [m - e for m, e in zip(ms, exposed)], lw=0.8, color=line.get_color(), label=f"{label} compute")
        if any(comm):
            ax_time.plot(x, comm, "--", lw=0.8, color=line.get_color(), label=f"{label} comm")
            ax_time.plot(x, exposed, ":", lw=1.2, color=line.get_color(), label=f"{label} exposed")
        if any(s.get("wan_ms", 0.0) for s in steps):
            ax_time.plot(x, [s.get("wan_ms", 0.0) for s in steps], "-.", lw=0.8, color=line.get_color(),
                         label=f"{label} wan")
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax_tps.set(xlabel="step", ylabel="tokens/s (all ranks)", title="throughput")
    ax_time.set(xlabel="step", ylabel="ms", title="step time split (compute = step - exposed)")
    for ax in (ax_loss, ax_tps, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"plot_run.py: wrote {a.out}")


if __name__ == "__main__":
    main()
