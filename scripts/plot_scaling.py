#!/usr/bin/env python3
"""Plot the CSV written by `aq-bench scaling`: tokens/s and scaling efficiency against world size, one line per
mode and tensor-parallel size. Usage: plot_scaling.py TABLE.csv OUT.png (needs Debian's python3-matplotlib)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_scaling.py TABLE.csv OUT.png")
    with open(sys.argv[1]) as f:
        rows = list(csv.DictReader(f))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    series = sorted({(r["mode"], r["tp"]) for r in rows})
    for mode, tp in series:
        pts = sorted((int(r["world"]), float(r["tokens_per_s"]), float(r["efficiency"]))
                     for r in rows if r["mode"] == mode and r["tp"] == tp)
        # Every series starts from the one-rank baseline it is measured against.
        base = [(1, float(r["tokens_per_s"]), 1.0) for r in rows
                if r["mode"] == mode and r["world"] == "1" and r["tp"] == "1"]
        if base and pts and pts[0][0] != 1:
            pts = base[:1] + pts
        label = f"{mode}, tp={tp}"
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax2.plot([p[0] for p in pts], [100 * p[2] for p in pts], "o-", label=label)
    ax1.set_xlabel("ranks")
    ax1.set_ylabel("tokens/s (all ranks)")
    ax1.set_title("throughput")
    ax2.set_xlabel("ranks")
    ax2.set_ylabel("scaling efficiency (%)")
    ax2.set_title("efficiency vs one rank")
    ax2.axhline(100, color="gray", lw=0.5)
    worlds = sorted({int(r["world"]) for r in rows})
    for ax in (ax1, ax2):
        ax.set_xticks(worlds)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
