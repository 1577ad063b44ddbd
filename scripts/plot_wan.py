#!/usr/bin/env python3
"""plot_wan.py — the figure of `aq-bench wan`: step time (compute vs exposed communication, with the cost
model's prediction), bytes across centres per step, and the training-loss curves.

Usage: plot_wan.py TABLE.csv OUT.png [LABEL=RUN.jsonl ...]   (Debian's python3-matplotlib)
"""
import csv
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: plot_wan.py TABLE.csv OUT.png [LABEL=RUN.jsonl ...]")
    rows = list(csv.DictReader(open(sys.argv[1])))
    curves = [a.split("=", 1) for a in sys.argv[3:]]
    names = [r["config"] for r in rows]
    step = [float(r["step_ms"]) for r in rows]
    exposed = [float(r["exposed_max_ms"]) for r in rows]
    pred = [float(r["pred_step_ms"]) for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    x = range(len(rows))
    compute = [s - e for s, e in zip(step, exposed)]
    ax[0].bar(x, compute, label="step - exposed (rank that waited most)", color="#4c72b0")
    ax[0].bar(x, exposed, bottom=compute, label="exposed communication", color="#dd8452")
    ax[0].scatter(x, pred, marker="D", color="black", zorder=3, label="cost model")
    ax[0].set_xticks(list(x), names)
    ax[0].set_ylabel("ms per step (median)")
    ax[0].set_title("step time at %s" % rows[0]["rate"])
    ax[0].legend(fontsize=8)
    w = 0.4
    ax[1].bar([i - w / 2 for i in x], [float(r["link_bytes"]) / 1e6 for r in rows], w, label="link counters")
    ax[1].bar([i + w / 2 for i in x], [float(r["wan_bytes_ranks"]) / 1e6 for r in rows], w, label="ranks' wan_bytes")
    ax[1].set_xticks(list(x), names)
    ax[1].set_ylabel("MB across centres per step")
    ax[1].set_title("bytes across centres")
    ax[1].legend(fontsize=8)
    for label, path in curves:
        steps, losses = [], []
        for line in open(path):
            j = json.loads(line)
            if "split" in j:
                continue
            steps.append(j["step"])
            losses.append(j["loss"])
        k = 10  # running mean: the curves overlap otherwise
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax[2].plot(steps, smooth, label=label, linewidth=1)
    ax[2].set_xlabel("step")
    ax[2].set_ylabel("training loss (running mean of 10)")
    ax[2].set_title("loss")
    if curves:
        ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
