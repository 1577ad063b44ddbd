#!/usr/bin/env python3
"""Benchmark Aqueduct's aq-bench against an eager PyTorch float32 training step.

For each named config, runs `aq-bench --config NAME --threads N --steps S
--warmup W` (its last stdout line is a JSON result) and then this script in a
hidden `--torch-worker NAME` mode in a separate process, so that each side's
peak RSS is its own. The PyTorch worker times full training steps (zero_grad,
forward, loss, backward, clip_grad_norm_(1.0), AdamW step) on random tokens.
Prints a comparison table and whether the targets are met.

Usage:
  bench_vs_pytorch.py [--bench build/bin/aq-bench] [--configs tiny,gpt2-124m]
      [--threads N] [--steps 5] [--warmup 1] [--json-out FILE] [--torch-only]

Configs (B = batch, T = sequence length):
  tiny       L=4  H=4  C=128 V=256   n_positions=128  B=16 T=128
  gpt2-124m  L=12 H=12 C=768 V=50257 n_positions=1024 B=4  T=256

Interpreter: Debian's /usr/bin/python3 (the worker needs torch; the driver
itself uses only the standard library).
"""

import argparse
import json
import os
import subprocess
import sys
import time

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(SCRIPT_DIR)

CONFIGS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=256, n_positions=128,
                 batch=16, seq=128),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                      n_positions=1024, batch=4, seq=256),
}

# config -> {metric: (comparison, threshold)}; speed = aq/torch tokens per s,
# memory = aq/torch peak RSS.
TARGETS = {
    "tiny": {"speed": (">=", 2.5)},
    "gpt2-124m": {"speed": (">=", 1.1), "memory": ("<=", 0.7)},
}


# --------------------------------------------------------------------------
# PyTorch worker (runs in its own process)
# --------------------------------------------------------------------------

def _current_rss_mib():
    """Resident set size of this process now, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def torch_worker(name, threads, steps, warmup):
    import resource

    import torch

    sys.path.insert(0, SCRIPT_DIR)
    import torch_gpt2 as tg

    spec = CONFIGS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(1337)
    cfg = tg.GPT2Config(spec["n_layer"], spec["n_head"], spec["n_embd"],
                        spec["vocab_size"], spec["n_positions"])
    model = tg.GPT2(cfg)  # float32, GPT-2 random init
    model.train()
    baseline_mib = _current_rss_mib()

    B, T = spec["batch"], spec["seq"]
    gen = torch.Generator().manual_seed(42)
    batches = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen)
               for _ in range(warmup + steps)]
    optimizer = torch.optim.AdamW(tg.adamw_param_groups(model, 0.1), lr=3e-4,
                                  betas=(0.9, 0.95), eps=1e-8)

    def train_step(tokens):
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    for tokens in batches[:warmup]:
        train_step(tokens)
    start = time.perf_counter()
    for tokens in batches[warmup:]:
        loss = train_step(tokens)
    elapsed = time.perf_counter() - start

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({
        "config": name,
        "tokens_per_s": B * T * steps / elapsed,
        "peak_rss_mb": peak_mib,
        "ms_per_step": 1000.0 * elapsed / steps,
        "baseline_rss_mb": baseline_mib,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "last_loss": loss,
        "torch_version": torch.__version__,
    }), flush=True)


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def run_json(cmd, label):
    """Run `cmd`, echo its output, and parse its last stdout line as JSON."""
    print(f"[{label}] $ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    for ln in lines[:-1]:
        print(f"[{label}] {ln}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        sys.exit(f"error: {label} exited with status {proc.returncode}\n{tail}")
    try:
        result = json.loads(lines[-1])
        for key in ("tokens_per_s", "peak_rss_mb"):
            float(result[key])
    except (IndexError, ValueError, KeyError, TypeError):
        sys.exit(f"error: {label}: last stdout line is not a JSON result with "
                 f"tokens_per_s and peak_rss_mb: {lines[-1] if lines else '<no output>'}")
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


def check_targets(name, speed, memory):
    """Return {metric: {"target", "value", "met"}} for the config's targets."""
    values = {"speed": speed, "memory": memory}
    out = {}
    for metric, (op, threshold) in TARGETS.get(name, {}).items():
        value = values[metric]
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out[metric] = {"target": f"{op} {threshold}x", "value": value, "met": met}
    return out


def fmt(value, width, prec, suffix=""):
    """Right-aligned number (or "-" when missing) in `width` columns."""
    text = "-" if value is None else f"{value:.{prec}f}{suffix}"
    return text.rjust(width)


def main():
    ap = argparse.ArgumentParser(description="aq-bench vs PyTorch eager benchmark")
    ap.add_argument("--bench", default=os.path.join(REPO_ROOT, "build", "bin", "aq-bench"),
                    help="path of the aq-bench binary (default: build/bin/aq-bench)")
    ap.add_argument("--configs", default="tiny,gpt2-124m",
                    help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps")
    ap.add_argument("--json-out", help="write the results as JSON here")
    ap.add_argument("--torch-only", action="store_true", help="skip aq-bench")
    ap.add_argument("--torch-worker", metavar="NAME", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        sys.exit("error: need --steps >= 1, --warmup >= 0, --threads >= 1")
    if args.torch_worker:
        torch_worker(args.torch_worker, args.threads, args.steps, args.warmup)
        return

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        sys.exit(f"error: unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if not args.torch_only and not os.access(args.bench, os.X_OK):
        sys.exit(f"error: aq-bench not found at {args.bench}; build first (./scripts/build.sh)")

    common = ["--threads", str(args.threads), "--steps", str(args.steps),
              "--warmup", str(args.warmup)]
    results = []
    for name in names:
        aq = None
        if not args.torch_only:
            aq = run_json([args.bench, "--config", name] + common, f"aq {name}")
        pt = run_json([sys.executable, os.path.abspath(__file__), "--torch-worker", name]
                      + common, f"torch {name}")
        speed = aq["tokens_per_s"] / pt["tokens_per_s"] if aq else None
        memory = aq["peak_rss_mb"] / pt["peak_rss_mb"] if aq else None
        results.append({"config": name, "aq": aq, "torch": pt, "speed_ratio": speed,
                        "memory_ratio": memory, "targets": check_targets(name, speed, memory)})

    print()
    print(f"threads={args.threads} steps={args.steps} warmup={args.warmup}")
    header = (f"{'config':<10} | {'aq tok/s':>10} | {'torch tok/s':>11} | {'speed (aq/torch)':>16} | "
              f"{'aq peak MiB':>11} | {'torch peak MiB':>14} | {'memory (aq/torch)':>17}")
    print(header)
    print("-" * len(header))
    for r in results:
        aq, pt = r["aq"] or {}, r["torch"]
        print(f"{r['config']:<10} | {fmt(aq.get('tokens_per_s'), 10, 0)} | "
              f"{pt['tokens_per_s']:11.0f} | {fmt(r['speed_ratio'], 16, 2, 'x')} | "
              f"{fmt(aq.get('peak_rss_mb'), 11, 1)} | {pt['peak_rss_mb']:14.1f} | "
              f"{fmt(r['memory_ratio'], 17, 2, 'x')}")
    print()
    print("targets:")
    for r in results:
        for metric, t in r["targets"].items():
            status = {True: "met", False: "NOT met", None: "n/a (aq-bench skipped)"}[t["met"]]
            print(f"  {r['config']:<10} {metric:<6} {fmt(t['value'], 0, 2, 'x')} "
                  f"(target {t['target']}): {status}")

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                       "results": results}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
