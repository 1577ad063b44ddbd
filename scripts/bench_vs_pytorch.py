#!/usr/bin/env python3
"""Benchmark Aqueduct's aq-bench against the same GPT-2 training step in PyTorch.

CPU (the default, --device cpu): for each named config, runs `aq-bench
--config NAME --threads N --steps S --warmup W` (its last stdout line is a JSON
result) and then this script in a hidden `--torch-worker NAME` mode in a
separate process, so that each side's peak RSS is its own. The PyTorch worker
times full float32 eager training steps (zero_grad, forward, loss, backward,
clip_grad_norm_(1.0), AdamW step) on random tokens. Prints a comparison table
and whether the targets are met.

GPU (--device cuda): GPT-2 124M at full context (config gpt2-124m-1k, B=16,
T=1024) on one GPU, measured in one run: aq-bench (--device cuda --dtype bf16),
then PyTorch eager, then torch.compile, each in its own process (so each
peak is its own and a failing compile cannot take the others down). PyTorch
runs bf16 autocast over fp32 master weights, attention through
F.scaled_dot_product_attention when available, fused AdamW when available, and
the same hyper-parameters as aq (AdamW lr 3e-4, betas (0.9, 0.95), eps 1e-8,
weight decay 0.1 on >= 2-D tensors, clip 1.0). Warm-up steps (torch.compile
compiles in the first) are not timed; the timed loop is bracketed by
torch.cuda.synchronize(). The table gives tokens/s, MFU, peak device memory
(aq: its caching allocator's peak; torch: torch.cuda.max_memory_allocated)
and the ratios aq/eager and aq/compile. MFU = FLOPs/token x tokens/s / peak,
FLOPs/token = 6*N + 6*L*C*T, and the peak is the one aq-bench used (its table
by GPU name, or --peak-tflops). Targets: aq >= 1.0x torch.compile, MFU >= 45%.
No torch, torch without CUDA, or a failing torch.compile are reported with the
reason, and the rest still runs.

Usage:
  bench_vs_pytorch.py [--device cpu|cuda] [--bench build/bin/aq-bench]
      [--configs tiny,gpt2-124m] [--batch B] [--threads N] [--steps S]
      [--warmup W] [--dtype bf16|fp32] [--modes eager,compile]
      [--peak-tflops X] [--timeout SECONDS] [--json-out FILE] [--torch-only]

Configs (B = batch, T = sequence length):
  tiny          L=4  H=4  C=128 V=256   n_positions=128  B=16 T=128   (CPU default)
  gpt2-124m     L=12 H=12 C=768 V=50257 n_positions=1024 B=4  T=256   (CPU default)
  gpt2-124m-1k  L=12 H=12 C=768 V=50257 n_positions=1024 B=16 T=1024  (GPU default)
Defaults: CPU --steps 5 --warmup 1; GPU --steps 20 --warmup 3.

BLAS kernels (CPU mode): Debian's OpenBLAS falls back to its SSE3 "Prescott"
kernels on CPUs it does not know (e.g. Intel family 6 model 207), 3.6x slower.
aq-bench corrects that itself (runtime/blas_setup.h); for torch, which loads
the same OpenBLAS through libblas.so.3, a probe process imports torch and asks
the loaded OpenBLAS for its core name, and when it is an SSE/AVX-era core on an
AVX2/AVX-512 CPU the torch worker is started with OPENBLAS_CORETYPE=SkylakeX
(or Haswell), which must be set before torch loads OpenBLAS. A user's
OPENBLAS_CORETYPE is left alone. The table prints the kernels each side used.
AQ_BLAS_TEST_CORENAME (tests) makes the probe believe OpenBLAS reported that
core, as aq-bench does.

Interpreter: CPU mode, Debian's /usr/bin/python3 (python3-torch 1.13). GPU
mode, a python3 with a CUDA build of torch (>= 2.0 for SDPA, fused AdamW and
torch.compile). The driver itself uses only the standard library; the workers
run under the same interpreter (sys.executable).
"""

import argparse
import contextlib
import inspect
import json
import math
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
    "gpt2-124m-1k": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                         n_positions=1024, batch=16, seq=1024),
}
DEFAULT_CONFIGS = {"cpu": "tiny,gpt2-124m", "cuda": "gpt2-124m-1k"}
DEFAULT_STEPS = {"cpu": (5, 1), "cuda": (20, 3)}  # (measured, warm-up)

# CPU: config -> {metric: (comparison, threshold)}; speed = aq/torch tokens per s,
# memory = aq/torch peak RSS.
TARGETS = {
    "tiny": {"speed": (">=", 2.5)},
    "gpt2-124m": {"speed": (">=", 1.1), "memory": ("<=", 0.7)},
}
# GPU (every config): aq tokens/s over torch.compile's, and aq's MFU.
CUDA_TARGETS = {"aq/compile": (">=", 1.0), "aq MFU": (">=", 0.45)}

MIB = 1024.0 * 1024.0


def flops_per_token(n_params, n_layer, n_embd, seq):
    """Model FLOPs per trained token: 6N (forward + backward matmuls over every
    parameter) + 6*L*C*T (causal attention, QK^T and AV) — aq-bench's formula."""
    return 6.0 * n_params + 6.0 * n_layer * n_embd * seq


# --------------------------------------------------------------------------
# PyTorch workers (each runs in its own process)
# --------------------------------------------------------------------------

def _current_rss_mib():
    """Resident set size of this process now, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_rss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# --------------------------------------------------------------------------
# BLAS kernels: the same rule as runtime/blas_setup.cpp
# --------------------------------------------------------------------------

_SSE_ERA = {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "barcelona", "opteron",
            "opteron_sse3", "bobcat", "nano", "katmai", "coppermine", "northwood", "banias", "athlon",
            "generic", "unknown"}
_AVX_ERA = {"sandybridge", "bulldozer", "piledriver", "steamroller"}


def cpu_features():
    """(avx2_fma, avx512) from /proc/cpuinfo, as __builtin_cpu_supports sees them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    avx2 = "avx2" in flags and "fma" in flags
    avx512 = avx2 and all(x in flags for x in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))
    return avx2, avx512


def decide_coretype(corename, config, user_coretype, features):
    """(OPENBLAS_CORETYPE to set or None, reason) — aq::decide_blas_kernels in Python."""
    if user_coretype:
        return None, f"OPENBLAS_CORETYPE={user_coretype} set by the user"
    avx2, avx512 = features
    name = (corename or "").lower()
    if name not in _SSE_ERA and name not in _AVX_ERA or not (avx2 or avx512):
        return None, ""
    reason = f"OpenBLAS chose {corename} on an {'AVX-512' if avx512 else 'AVX2'} CPU"
    if "DYNAMIC_ARCH" not in (config or ""):
        return None, reason + ", and this OpenBLAS is not a DYNAMIC_ARCH build, so it cannot be corrected"
    return ("SkylakeX" if avx512 else "Haswell"), reason


def loaded_openblas():
    """Core name, config and path of the OpenBLAS this process has loaded (after `import torch`), or Nones."""
    import ctypes
    paths = []
    with open("/proc/self/maps") as f:
        for ln in f:
            path = ln.split()[-1] if len(ln.split()) >= 6 else ""
            if "blas" in os.path.basename(path).lower() and path not in paths:
                paths.append(path)
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode(), lib.openblas_get_config().decode(), path
        except (OSError, AttributeError):
            continue
    return None, None, (paths[0] if paths else None)


def torch_blas_info():
    """What the torch in this process uses for its GEMMs: {"blas", "kernels", "choice"} (choice: openblas, user,
    corrected, not corrected, unknown). Honours the AQ_BLAS_TEST_CORENAME hook like aq-bench."""
    core, config, path = loaded_openblas()
    if core is None:
        return {"blas": f"not OpenBLAS ({path or 'no BLAS library found in the process'})", "kernels": None,
                "choice": "unknown"}
    hook = os.environ.get("AQ_BLAS_TEST_CORENAME")
    corrected = os.environ.get("AQ_BLAS_CORRECTED")
    user = os.environ.get("OPENBLAS_CORETYPE")
    if corrected and user:
        choice, why = "corrected", "corrected: " + corrected
    elif user:
        choice, why = "user", f"OPENBLAS_CORETYPE={user} set by the user"
    else:
        if hook:
            core = hook
        _, reason = decide_coretype(core, config, None, cpu_features())
        choice, why = ("not corrected", "NOT corrected: " + reason) if reason else ("openblas", "OpenBLAS's own choice")
    version = " ".join(config.split()[:2])
    return {"blas": f"{version} kernels {core} ({why})", "kernels": core, "choice": choice, "library": path}


# Run by the driver under the workers' interpreter before the torch worker: which OpenBLAS core does torch get?
_BLAS_PROBE = r"""
import json, sys
sys.path.insert(0, %r)
import bench_vs_pytorch as b
import torch
core, config, path = b.loaded_openblas()
print(json.dumps({"corename": core, "config": config, "library": path}))
""" % SCRIPT_DIR


def torch_blas_env(timeout=120):
    """Environment for the torch worker: OPENBLAS_CORETYPE set when torch's OpenBLAS falls back (see the top)."""
    env = dict(os.environ)
    if env.get("OPENBLAS_CORETYPE") or env.get("AQ_BLAS_CORRECTED"):
        return env  # the user's choice, or already corrected
    try:
        proc = subprocess.run([sys.executable, "-c", _BLAS_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError):
        print("[torch blas] probe failed; torch runs with OpenBLAS's own choice", flush=True)
        return env
    core = env.get("AQ_BLAS_TEST_CORENAME") or info.get("corename")
    coretype, reason = decide_coretype(core, info.get("config"), None, cpu_features())
    if coretype:
        print(f"[torch blas] {reason}: the torch worker runs with OPENBLAS_CORETYPE={coretype}", flush=True)
        env["OPENBLAS_CORETYPE"] = coretype
        env["AQ_BLAS_CORRECTED"] = reason
    return env


def torch_worker(name, batch, threads, steps, warmup):
    """CPU: eager float32 training steps (the original comparison)."""
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

    B, T = batch, spec["seq"]
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

    print(json.dumps({
        "config": name,
        "tokens_per_s": B * T * steps / elapsed,
        "peak_rss_mb": _peak_rss_mib(),
        "ms_per_step": 1000.0 * elapsed / steps,
        "baseline_rss_mb": baseline_mib,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "last_loss": loss,
        "torch_version": torch.__version__,
        **{"blas" if k == "blas" else "blas_" + k: v for k, v in torch_blas_info().items()},
    }), flush=True)


def _emit_error(reason, **extra):
    """Worker failure the driver can report: one JSON line with "error", exit 3."""
    print(json.dumps(dict(error=reason, **extra)), flush=True)
    sys.exit(3)


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def torch_cuda_worker(name, batch, steps, warmup, dtype, mode):
    """GPU: bf16-autocast (or fp32) training steps, eager or torch.compile."""
    try:
        import torch
    except ImportError as e:
        _emit_error(f"torch is not importable by {sys.executable}: {_first_line(e)}")
    if not torch.cuda.is_available():
        _emit_error(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda = "
                    f"{torch.version.cuda}; a CPU-only build, or CUDA_VISIBLE_DEVICES hides the GPU)")
    if mode == "compile" and not hasattr(torch, "compile"):
        _emit_error(f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)")
    sys.path.insert(0, SCRIPT_DIR)
    import torch_gpt2 as tg

    spec = CONFIGS[name]
    dev = torch.device("cuda")
    # aq's fp32 GEMMs are true fp32 (no TF32); keep torch's the same so an fp32 comparison is fair. Under bf16
    # autocast the matmuls are bf16 either way.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(1337)
    cfg = tg.GPT2Config(spec["n_layer"], spec["n_head"], spec["n_embd"],
                        spec["vocab_size"], spec["n_positions"])
    attention = "sdpa" if tg.HAVE_SDPA else "math"
    model = tg.GPT2(cfg, attention=attention).to(dev)  # fp32 master weights, GPT-2 random init
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # wte counted once (tied LM head), as in aq

    groups = tg.adamw_param_groups(model, 0.1)
    hyper = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    optimizer, adamw = None, "foreach"
    if "fused" in inspect.signature(torch.optim.AdamW).parameters:
        try:
            optimizer, adamw = torch.optim.AdamW(groups, fused=True, **hyper), "fused"
        except (RuntimeError, ValueError, TypeError) as e:
            adamw = f"foreach (fused refused: {_first_line(e)})"
    if optimizer is None:
        optimizer = torch.optim.AdamW(groups, **hyper)

    step_fn = model
    if mode == "compile":
        try:
            step_fn = torch.compile(model)
        except Exception as e:  # noqa: BLE001 — any failure is reported, and the driver goes on
            _emit_error(f"torch.compile failed: {_first_line(e)}", torch_version=torch.__version__)

    B, T = batch, spec["seq"]
    gen = torch.Generator(device=dev).manual_seed(42)
    batches = []
    for _ in range(warmup + steps):
        tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen, device=dev)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))

    def autocast():
        if dtype == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            _, loss = step_fn(x, y, return_logits=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    # Warm-up: torch.compile compiles forward and backward here; cuBLAS and the allocator warm up.
    t0 = time.perf_counter()
    try:
        for x, y in batches[:warmup]:
            train_step(x, y)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        what = "torch.compile failed" if mode == "compile" else "eager warm-up failed"
        _emit_error(f"{what}: {_first_line(e)}", torch_version=torch.__version__)
    warmup_s = time.perf_counter() - t0

    # Timed: no host sync inside the loop (the loss stays on the GPU), one synchronize on each side.
    losses = []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches[warmup:]:
        losses.append(train_step(x, y))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    last_loss = losses[-1].item()
    if not math.isfinite(last_loss):
        _emit_error(f"non-finite loss {last_loss} after {warmup + steps} steps")

    print(json.dumps({
        "config": name,
        "impl": "torch.compile" if mode == "compile" else "torch eager",
        "mode": mode,
        "device_name": torch.cuda.get_device_name(dev),
        "dtype": dtype,
        "batch": B,
        "seq": T,
        "steps": steps,
        "warmup": warmup,
        "warmup_s": warmup_s,
        "tokens_per_s": B * T * steps / elapsed,
        "ms_per_step": 1000.0 * elapsed / steps,
        "device_peak_mib": torch.cuda.max_memory_allocated(dev) / MIB,
        "device_reserved_mib": torch.cuda.max_memory_reserved(dev) / MIB,
        "peak_rss_mb": _peak_rss_mib(),
        "num_params": n_params,
        "flops_per_token": flops_per_token(n_params, cfg.n_layer, cfg.n_embd, T),
        "attention": attention,
        "adamw": adamw,
        "last_loss": last_loss,
        "torch_version": torch.__version__,
    }), flush=True)


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

class RunFailed(Exception):
    """A benchmark process failed; the message says why."""


def run_json(cmd, label, keys=("tokens_per_s", "peak_rss_mb"), timeout=None, env=None):
    """Run `cmd`, echo its output, and parse its last stdout line as JSON.

    Raises RunFailed with the reason (exit status and stderr tail, a worker's
    "error" field, a timeout, or a last line that is not a result)."""
    print(f"[{label}] $ {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{label} did not finish within {timeout} s (raise --timeout)") from None
    except OSError as e:
        raise RunFailed(f"{label} could not start: {e}") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    for ln in lines[:-1]:
        print(f"[{label}] {ln}")
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if isinstance(result, dict) and "error" in result:
        raise RunFailed(result["error"])
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        tail = "\n".join(err[-20:])
        raise RunFailed(f"{label} exited with status {proc.returncode}: {err[-1] if err else '<no stderr>'}"
                        f"\n{tail}")
    try:
        for key in keys:
            float(result[key])
    except (ValueError, KeyError, TypeError):
        raise RunFailed(f"{label}: last stdout line is not a JSON result with {', '.join(keys)}: "
                        f"{lines[-1] if lines else '<no output>'}") from None
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


def main_cpu(args, names):
    if not args.torch_only and not os.access(args.bench, os.X_OK):
        sys.exit(f"error: aq-bench not found at {args.bench}; build first (./scripts/build.sh)")
    common = ["--threads", str(args.threads), "--steps", str(args.steps),
              "--warmup", str(args.warmup)]
    batch_flag = ["--batch", str(args.batch)] if args.batch else []
    results = []
    torch_env = torch_blas_env()
    try:
        for name in names:
            aq = None
            if not args.torch_only:
                aq = run_json([args.bench, "--config", name] + common + batch_flag, f"aq {name}",
                              timeout=args.timeout)
            pt = run_json([sys.executable, os.path.abspath(__file__), "--torch-worker", name]
                          + common + batch_flag, f"torch {name}", timeout=args.timeout, env=torch_env)
            speed = aq["tokens_per_s"] / pt["tokens_per_s"] if aq else None
            memory = aq["peak_rss_mb"] / pt["peak_rss_mb"] if aq else None
            results.append({"config": name, "aq": aq, "torch": pt, "speed_ratio": speed,
                            "memory_ratio": memory, "targets": check_targets(name, speed, memory)})
    except RunFailed as e:
        sys.exit(f"error: {e}")

    print()
    print(f"threads={args.threads} steps={args.steps} warmup={args.warmup}")
    header = (f"{'config':<12} | {'aq tok/s':>10} | {'torch tok/s':>11} | {'speed (aq/torch)':>16} | "
              f"{'aq peak MiB':>11} | {'torch peak MiB':>14} | {'memory (aq/torch)':>17}")
    print(header)
    print("-" * len(header))
    for r in results:
        aq, pt = r["aq"] or {}, r["torch"]
        print(f"{r['config']:<12} | {fmt(aq.get('tokens_per_s'), 10, 0)} | "
              f"{pt['tokens_per_s']:11.0f} | {fmt(r['speed_ratio'], 16, 2, 'x')} | "
              f"{fmt(aq.get('peak_rss_mb'), 11, 1)} | {pt['peak_rss_mb']:14.1f} | "
              f"{fmt(r['memory_ratio'], 17, 2, 'x')}")
    print()
    print("BLAS kernels:")
    for r in results:
        aq, pt = r["aq"] or {}, r["torch"]
        print(f"  {r['config']:<12} aq:    {aq.get('blas', '-')}")
        print(f"  {r['config']:<12} torch: {pt.get('blas', '-')}")
        if aq.get("cpu_mfu") is not None:
            print(f"  {r['config']:<12} aq CPU MFU vs sgemm ceiling {100 * aq['cpu_mfu']:.1f}% "
                  f"(ceiling {aq['sgemm_ceiling_gflops']:.1f} GFLOP/s on the step's GEMM shapes)")
    print()
    print("targets:")
    for r in results:
        for metric, t in r["targets"].items():
            status = {True: "met", False: "NOT met", None: "n/a (aq-bench skipped)"}[t["met"]]
            print(f"  {r['config']:<12} {metric:<6} {fmt(t['value'], 0, 2, 'x')} "
                  f"(target {t['target']}): {status}")
    return {"device": "cpu", "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
            "results": results}, 0


# Run by the driver under the workers' interpreter: is torch there, with CUDA and torch.compile?
_PROBE = r"""
import json, sys
try:
    import torch
except Exception as e:
    print(json.dumps({"ok": False, "reason": "torch is not importable by %s: %s: %s"
                      % (sys.executable, type(e).__name__, e)}))
    sys.exit(0)
info = {"ok": True, "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "compile": hasattr(torch, "compile")}
if not torch.cuda.is_available():
    info.update(ok=False, reason="torch %s sees no CUDA device (torch.version.cuda = %s; a CPU-only build, "
                "or CUDA_VISIBLE_DEVICES hides the GPU)" % (torch.__version__, torch.version.cuda))
else:
    info["device"] = torch.cuda.get_device_name(0)
print(json.dumps(info))
"""


def probe_torch(timeout):
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"importing torch took more than {timeout} s"}
    except (ValueError, IndexError, OSError) as e:
        return {"ok": False, "reason": f"torch probe failed: {e}"}


def cuda_targets(aq_mfu, ratio_compile, compile_reason, aq_reason):
    """[(metric, value text, target text, status)] for the GPU targets."""
    out = []
    for metric, (op, threshold) in CUDA_TARGETS.items():
        if metric == "aq/compile":
            value, text = ratio_compile, fmt(ratio_compile, 0, 2, "x")
            target = f"{op} {threshold:.1f}x"
            why = aq_reason or compile_reason
        else:
            value, text = aq_mfu, fmt(None if aq_mfu is None else 100 * aq_mfu, 0, 1, "%")
            target = f"{op} {100 * threshold:.0f}%"
            why = aq_reason or "no peak known (pass --peak-tflops)"
        if value is None:
            status = f"n/a ({why})"
        else:
            status = "met" if (value >= threshold if op == ">=" else value <= threshold) else "NOT met"
        out.append((metric, text, target, status))
    return out


def main_cuda(args, names):
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("eager", "compile") for m in modes):
        sys.exit(f"error: --modes must be a list of eager and compile (got {args.modes!r})")
    if args.warmup < 1:
        sys.exit("error: --device cuda needs --warmup >= 1 (torch.compile compiles during the first step, "
                 "and no first step should be timed)")
    if not args.torch_only and not os.access(args.bench, os.X_OK):
        sys.exit(f"error: aq-bench not found at {args.bench}; build with CUDA first "
                 "(cmake -S . -B build-gpu -DAQ_CUDA=ON && cmake --build build-gpu), then pass --bench")

    torch_info = probe_torch(min(args.timeout, 300))
    if torch_info.get("ok"):
        print(f"[torch] torch {torch_info['torch']} (CUDA {torch_info['cuda_build']}) on "
              f"{torch_info['device']}; torch.compile {'available' if torch_info['compile'] else 'missing'}")
    else:
        print(f"[torch] PyTorch comparison skipped: {torch_info['reason']}")

    results, status = [], 0
    for name in names:
        spec = CONFIGS[name]
        batch = args.batch or spec["batch"]
        common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(batch)]
        aq, aq_error = None, None
        if not args.torch_only:
            cmd = [args.bench, "--config", name, "--device", "cuda", "--dtype", args.dtype] + common
            if args.peak_tflops:
                cmd += ["--peak-tflops", str(args.peak_tflops)]
            try:
                aq = run_json(cmd, f"aq {name}", keys=("tokens_per_s",), timeout=args.timeout)
            except RunFailed as e:
                aq_error, status = str(e), 1
                print(f"[aq {name}] FAILED: {aq_error}")
        torch_runs = {}  # mode -> result dict or {"error": reason}
        for mode in modes:
            if not torch_info.get("ok"):
                torch_runs[mode] = {"error": torch_info["reason"]}
                continue
            if mode == "compile" and not torch_info.get("compile"):
                torch_runs[mode] = {"error": f"torch {torch_info['torch']} has no torch.compile"}
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--device", "cuda", "--torch-worker", name,
                   "--torch-mode", mode, "--dtype", args.dtype] + common
            try:
                torch_runs[mode] = run_json(cmd, f"torch {mode} {name}", keys=("tokens_per_s",),
                                            timeout=args.timeout)
            except RunFailed as e:
                torch_runs[mode] = {"error": str(e)}
                more = " (the other runs stand)" if mode == "compile" else ""
                print(f"[torch {mode} {name}] FAILED: {e}{more}")

        # One peak for all rows: the one aq-bench used (table by GPU name, or --peak-tflops).
        peak, peak_source = None, None
        if aq and aq.get("peak_tflops"):
            peak, peak_source = float(aq["peak_tflops"]), aq.get("peak_source", "aq-bench")
        elif args.peak_tflops:
            peak, peak_source = args.peak_tflops, "--peak-tflops"
        elif aq:
            peak_source = aq.get("peak_source")
        n_params = (aq or {}).get("num_params") or next(
            (r["num_params"] for r in torch_runs.values() if "num_params" in r), None)
        fpt = flops_per_token(n_params, spec["n_layer"], spec["n_embd"], spec["seq"]) if n_params else None

        def mfu(r):
            return r["tokens_per_s"] * fpt / (peak * 1e12) if (r and fpt and peak) else None

        rows = []
        if not args.torch_only:
            rows.append(("aq " + ((aq or {}).get("dtype") or args.dtype), aq, aq_error))
        for mode in modes:
            r = torch_runs[mode]
            label = "torch.compile" if mode == "compile" else "torch eager"
            rows.append((label, None if "error" in r else r, r.get("error")))
        ratios = {}
        for mode in modes:
            r = torch_runs[mode]
            ratios[mode] = aq["tokens_per_s"] / r["tokens_per_s"] if (aq and "error" not in r) else None

        device_name = (aq or {}).get("device_name") or torch_info.get("device", "?")
        print()
        print(f"{name}: GPT-2 L{spec['n_layer']} H{spec['n_head']} C{spec['n_embd']} V{spec['vocab_size']}, "
              f"B={batch} x T={spec['seq']}, {args.dtype}"
              f"{' (torch: autocast over fp32 weights)' if args.dtype == 'bf16' else ''}, on {device_name}")
        print(f"{args.steps} timed steps after {args.warmup} warm-up step(s)")
        if fpt:
            print(f"FLOPs/token = 6*N + 6*L*C*T = 6*{n_params} + 6*{spec['n_layer']}*{spec['n_embd']}*"
                  f"{spec['seq']} = {fpt:.0f}")
        print(f"peak: {f'{peak:g} TFLOPS' if peak else 'unknown, MFU n/a'} ({peak_source or 'no aq-bench result'})")
        header = (f"{'':<14} | {'tokens/s':>10} | {'ms/step':>8} | {'MFU':>6} | {'peak MiB':>9} | "
                  f"{'aq/this':>7} | notes")
        print(header)
        print("-" * (len(header) + 30))
        for label, r, err in rows:
            if r is None:
                print(f"{label:<14} | {'-':>10} | {'-':>8} | {'-':>6} | {'-':>9} | {'-':>7} | "
                      f"{(err or 'not run').splitlines()[0][:160]}")
                continue
            m = mfu(r)
            if label.startswith("aq"):
                ratio, notes = 1.0, f"step-loop cudaMallocs {r.get('step_loop_device_mallocs')}"
            else:
                ratio = ratios["compile" if label == "torch.compile" else "eager"]
                notes = (f"attention {r['attention']}, AdamW {r['adamw']}, warm-up {r['warmup_s']:.0f} s, "
                         f"reserved {r['device_reserved_mib']:.0f} MiB, torch {r['torch_version']}")
            print(f"{label:<14} | {r['tokens_per_s']:10.0f} | {r['ms_per_step']:8.1f} | "
                  f"{fmt(None if m is None else 100 * m, 6, 1, '%')} | {fmt(r.get('device_peak_mib'), 9, 0)} | "
                  f"{fmt(ratio, 7, 2, 'x')} | {notes}")
        print("peak MiB: aq, its caching allocator's peak; torch, torch.cuda.max_memory_allocated()")
        for mode in modes:
            print(f"aq/{mode}: {fmt(ratios[mode], 0, 2, 'x')}")
        compile_err = (torch_runs.get("compile") or {}).get("error")
        if "compile" not in modes:
            compile_err = "compile mode not requested"
        print("targets:")
        aq_reason = "aq-bench skipped" if args.torch_only else ("aq-bench failed" if aq_error else None)
        for metric, text, target, st in cuda_targets(mfu(aq), ratios.get("compile"), compile_err, aq_reason):
            print(f"  {name:<12} {metric:<10} {text} (target {target}): {st}")
        results.append({"config": name, "batch": batch, "seq": spec["seq"], "dtype": args.dtype,
                        "device_name": device_name, "peak_tflops": peak, "peak_source": peak_source,
                        "flops_per_token": fpt, "aq": aq, "aq_error": aq_error, "aq_mfu": mfu(aq),
                        "torch": torch_runs,
                        "torch_mfu": {m: mfu(None if "error" in r else r) for m, r in torch_runs.items()},
                        "ratios": {f"aq/{m}": v for m, v in ratios.items()}})
    return {"device": "cuda", "steps": args.steps, "warmup": args.warmup, "torch": torch_info,
            "results": results}, status


def main():
    ap = argparse.ArgumentParser(description="aq-bench vs PyTorch benchmark (CPU: eager fp32; "
                                             "GPU: eager and torch.compile, bf16 autocast)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--bench", default=os.path.join(REPO_ROOT, "build", "bin", "aq-bench"),
                    help="path of the aq-bench binary (default: build/bin/aq-bench)")
    ap.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)} "
                                      f"(default: {DEFAULT_CONFIGS['cpu']} on cpu, "
                                      f"{DEFAULT_CONFIGS['cuda']} on cuda)")
    ap.add_argument("--batch", type=int, help="per-step batch for aq and torch (default: the config's B)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (cpu mode)")
    ap.add_argument("--steps", type=int, help="measured steps (default 5 on cpu, 20 on cuda)")
    ap.add_argument("--warmup", type=int, help="untimed warm-up steps (default 1 on cpu, 3 on cuda)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                    help="cuda mode: aq --dtype, and torch bf16 autocast or plain fp32 (default bf16)")
    ap.add_argument("--modes", default="eager,compile", help="cuda mode: torch runs (eager,compile)")
    ap.add_argument("--peak-tflops", type=float,
                    help="dense peak TFLOPS of the GPU for MFU (default: aq-bench's table by device name)")
    ap.add_argument("--timeout", type=int,
                    help="seconds each benchmark process may take (default: no limit on cpu, 600 on cuda)")
    ap.add_argument("--json-out", help="write the results as JSON here")
    ap.add_argument("--torch-only", action="store_true", help="skip aq-bench")
    ap.add_argument("--torch-worker", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--torch-mode", choices=("eager", "compile"), default="eager", help=argparse.SUPPRESS)
    args = ap.parse_args()

    steps, warmup = DEFAULT_STEPS[args.device]
    if args.timeout is None and args.device == "cuda":
        args.timeout = 600
    args.steps = steps if args.steps is None else args.steps
    args.warmup = warmup if args.warmup is None else args.warmup
    if args.timeout is not None and args.timeout < 1:
        sys.exit(f"error: --timeout must be >= 1 (got {args.timeout})")
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        sys.exit("error: need --steps >= 1, --warmup >= 0, --threads >= 1")
    if args.batch is not None and args.batch < 1:
        sys.exit(f"error: --batch must be >= 1 (got {args.batch})")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        sys.exit(f"error: --peak-tflops must be > 0 (got {args.peak_tflops})")
    if args.torch_worker:
        if args.torch_worker not in CONFIGS:
            sys.exit(f"error: unknown config {args.torch_worker!r}")
        batch = args.batch or CONFIGS[args.torch_worker]["batch"]
        if args.device == "cuda":
            torch_cuda_worker(args.torch_worker, batch, args.steps, args.warmup, args.dtype, args.torch_mode)
        else:
            torch_worker(args.torch_worker, batch, args.threads, args.steps, args.warmup)
        return

    names = [n.strip() for n in (args.configs or DEFAULT_CONFIGS[args.device]).split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        sys.exit(f"error: unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")

    report, status = (main_cuda if args.device == "cuda" else main_cpu)(args, names)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json_out}")
    sys.exit(status)


if __name__ == "__main__":
    main()
