#!/usr/bin/env python3
"""Float64 PyTorch reference trainer for Aqueduct's GPT-2 training loop.

Loads a safetensors GPT-2 checkpoint into a float64 model and trains it with
exactly the semantics of the C++ trainer (same data order, LR schedule,
pre-clip grad norm + clipping, torch.optim.AdamW with decay only on >= 2-D
params). Writes one JSON line per step {"step","loss","lr","grad_norm"} and
the final weights as F64 safetensors, for compare_reference.py.

Usage:
  torch_reference.py --init INIT.safetensors --data 'DIR/*.bin' --batch B \
      --seq T --steps N --log-out REF.jsonl --save REF.safetensors \
      [--lr 3e-4] [--lr-schedule constant|cosine] [--warmup 0] [--min-lr 0]
      [--weight-decay 0.1] [--beta1 0.9] [--beta2 0.95] [--eps 1e-8]
      [--grad-clip 1.0] [--heads H] [--threads N]

Interpreter: Debian's /usr/bin/python3 (needs numpy and torch).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt2 as tg  # noqa: E402


def add_train_args(ap, init_help):
    """The training options both references take (this script and torch_llama.py train), as aq-train spells them."""
    ap.add_argument("--init", required=True, help=init_help)
    ap.add_argument("--data", required=True, help="glob of llm.c token shards")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="<= 0 disables clipping")
    ap.add_argument("--log-out", required=True, help="JSONL log to write")
    ap.add_argument("--save", required=True, help="final weights (.safetensors, F64)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def parse_args():
    ap = argparse.ArgumentParser(description="float64 PyTorch reference trainer")
    add_train_args(ap, "initial checkpoint (.safetensors)")
    ap.add_argument("--heads", type=int, default=None,
                    help="n_head, if the checkpoint metadata lacks it")
    return ap.parse_args()


def grad_norm_and_clip(params, max_norm):
    """Return the global L2 norm of the grads (pre-clip); if max_norm > 0,
    scale the grads by max_norm / (norm + 1e-6) when that is < 1."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    if max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return norm


def train_loop(model, vocab_size, args, name):
    """Trains `model` (float64) for args.steps steps with the C++ trainer's semantics, writing args.log_out."""
    loader = tg.ShardLoader(args.data, args.batch, args.seq)
    optimizer = torch.optim.AdamW(
        tg.adamw_param_groups(model, args.weight_decay), lr=args.lr,
        betas=(args.beta1, args.beta2), eps=args.eps, foreach=False)
    params = list(model.parameters())

    print(f"reference: {name}, B={args.batch} T={args.seq} steps={args.steps} "
          f"threads={torch.get_num_threads()}", flush=True)
    with open(args.log_out, "w") as log:
        for step in range(args.steps):
            lr = tg.lr_at(step, lr=args.lr, schedule=args.lr_schedule,
                          warmup=args.warmup, steps=args.steps, min_lr=args.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr

            x, y = loader.next_batch()
            if max(x.max(), y.max()) >= vocab_size:
                sys.exit(f"error: token id >= vocab_size {vocab_size} in data")
            optimizer.zero_grad(set_to_none=True)
            _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
            loss.backward()
            norm = grad_norm_and_clip(params, args.grad_clip)
            optimizer.step()

            rec = {"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": norm}
            log.write(json.dumps(rec) + "\n")
            print(f"step {step + 1:5d}/{args.steps} | loss {rec['loss']:.6f} | "
                  f"lr {lr:.4e} | grad_norm {norm:.6f}", flush=True)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        tensors, metadata = tg.read_safetensors(args.init)
        cfg = tg.GPT2Config.from_checkpoint(tensors, metadata, n_head=args.heads)
        model = tg.GPT2(cfg).to(torch.float64)
        model.load_state(tensors)
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"error: cannot load {args.init}: {e}")
    del tensors
    model.train()

    train_loop(model, cfg.vocab_size, args, str(cfg))
    tg.write_safetensors(args.save, model.export_state(np.float64),
                         cfg.to_metadata(), dtype="F64")
    print(f"reference: wrote {args.log_out} and {args.save}", flush=True)


if __name__ == "__main__":
    main()
