#!/usr/bin/env python3
"""Shared PyTorch/numpy helpers for Aqueduct's Python tooling.

Contents:
  * safetensors reader/writer (numpy only; F32/F64 written, F16/BF16 also read)
  * llm.c token-shard reader and the data loader that mirrors the C++ one
  * GPT2: an eager GPT-2 nn.Module whose state_dict names and layouts match
    the Hugging Face GPT-2 checkpoint names (linear weights are input-major
    [in, out], y = x @ W + b), so checkpoints load/save without transposes.
    GPT2(cfg, attention="sdpa") computes attention with
    F.scaled_dot_product_attention(is_causal=True) (flash / memory-efficient
    kernels on a GPU; torch >= 2.0, see HAVE_SDPA) instead of the explicit
    masked softmax ("math", the default, used by the float64 reference)
  * the learning-rate schedule and the AdamW decay/no-decay parameter groups

Used by torch_reference.py and bench_vs_pytorch.py. Run directly it also
offers two small generators for tests:
  torch_gpt2.py make-init --out F.safetensors [--layers L --heads H --embd C
                          --vocab V --positions P --seed S --dtype F32|F64]
  torch_gpt2.py make-shard --out F.bin --tokens N --vocab V [--seed S]

Interpreter: Debian's /usr/bin/python3 (needs torch; numpy for the file
helpers). The model alone needs only torch, so the GPU benchmark also runs
under a pip-installed torch without numpy.
"""

import argparse
import glob
import json
import math
import struct
from dataclasses import dataclass

try:
    import numpy as np
except ImportError:  # the model needs only torch; the safetensors/shard helpers need numpy
    np = None
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------

# safetensors dtype tag -> numpy dtype of the stored little-endian data.
# BF16 has no numpy dtype; it is stored as uint16 and widened to float32.
_ST_DTYPES = {} if np is None else {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
_WRITABLE_DTYPES = ("F32", "F64")


def read_safetensors(path):
    """Read a safetensors file.

    Returns (tensors, metadata): tensors maps name -> numpy array (F32/F64/F16
    in their own dtype, BF16 widened to float32), metadata is the
    "__metadata__" string map (empty dict when absent).
    """
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        header_bytes = f.read(header_len)
        if len(header_bytes) != header_len:
            raise ValueError(f"{path}: truncated header (wants {header_len} bytes)")
        header = json.loads(header_bytes.decode("utf-8"))
        data = bytearray(f.read())  # writable buffer -> writable arrays

    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        tag = info["dtype"]
        if tag not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {tag}")
        dt = _ST_DTYPES[tag]
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dt.itemsize or begin < 0 or end > len(data):
            raise ValueError(f"{path}: tensor {name}: bad data_offsets "
                             f"[{begin}, {end}] for {tag} {list(shape)}")
        arr = np.frombuffer(data, dtype=dt, count=count, offset=begin).reshape(shape)
        if tag == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = arr
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None, dtype="F32"):
    """Write name -> array `tensors` (in the given order) as `dtype` (F32/F64).

    `metadata` values are converted to strings. The JSON header is padded
    with spaces to a multiple of 8 bytes so the data section stays aligned.
    """
    if dtype not in _WRITABLE_DTYPES:
        raise ValueError(f"write_safetensors: dtype must be one of {_WRITABLE_DTYPES}")
    dt = _ST_DTYPES[dtype]
    arrays = {}
    header = {}
    offset = 0
    for name, value in tensors.items():
        arr = np.ascontiguousarray(np.asarray(value), dtype=dt)
        arrays[name] = arr
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for arr in arrays.values():
            f.write(memoryview(arr).cast("B"))


# --------------------------------------------------------------------------
# token shards and data loader
# --------------------------------------------------------------------------

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256


def read_shard(path):
    """Return the uint16 tokens of one llm.c shard (validating its header)."""
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_INTS)
    if header.size != SHARD_HEADER_INTS:
        raise ValueError(f"{path}: too short for a shard header")
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: bad shard magic/version {header[0]}/{header[1]}")
    count = int(header[2])
    tokens = np.fromfile(path, dtype="<u2", count=count,
                         offset=SHARD_HEADER_INTS * 4)
    if tokens.size != count:
        raise ValueError(f"{path}: header says {count} tokens, file holds {tokens.size}")
    return tokens


def write_shard(path, tokens):
    """Write `tokens` (values < 65536) as an llm.c shard."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise ValueError("write_shard: tokens must fit in uint16")
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


class ShardLoader:
    """Sequential (B, T) batches over sorted(glob(pattern)), as the C++ loader.

    State is (shard index, position), starting at (0, 0). A batch is
    tokens[pos : pos + B*T + 1] of the current shard (inputs = first B*T,
    targets = shifted by one). After each batch pos += B*T, and whenever
    pos + B*T + 1 exceeds the shard the loader moves to the next shard
    (wrapping around) at pos 0; the same check runs before the first batch.
    """

    def __init__(self, pattern, batch, seq):
        self.paths = sorted(glob.glob(pattern))
        if not self.paths:
            raise FileNotFoundError(f"no shards match {pattern!r}")
        self.B, self.T = batch, seq
        self.shard_index = 0
        self.pos = 0
        self.tokens = read_shard(self.paths[0])
        self._settle()

    def _fits(self):
        return self.pos + self.B * self.T + 1 <= len(self.tokens)

    def _settle(self):
        """Advance to the next shard (pos 0) until a batch fits."""
        for _ in range(len(self.paths) + 1):
            if self._fits():
                return
            self.shard_index = (self.shard_index + 1) % len(self.paths)
            self.pos = 0
            self.tokens = read_shard(self.paths[self.shard_index])
        raise ValueError(f"no shard holds B*T+1 = {self.B * self.T + 1} tokens")

    def next_batch(self):
        """Return (inputs, targets) as int64 numpy arrays of shape (B, T)."""
        n = self.B * self.T
        chunk = self.tokens[self.pos:self.pos + n + 1].astype(np.int64)
        x = chunk[:-1].reshape(self.B, self.T)
        y = chunk[1:].reshape(self.B, self.T)
        self.pos += n
        self._settle()
        return x, y


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------

CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int

    def to_metadata(self):
        return {k: str(getattr(self, k)) for k in CONFIG_KEYS}

    @classmethod
    def from_checkpoint(cls, tensors, metadata, n_head=None):
        """Config from checkpoint metadata, falling back to tensor shapes.

        n_head cannot be inferred from shapes: it comes from the metadata or
        the `n_head` argument (which must agree with the metadata if both).
        """
        inferred = {
            "n_layer": len({n.split(".")[1] for n in tensors if n.startswith("h.")}),
            "vocab_size": tensors["wte.weight"].shape[0],
            "n_embd": tensors["wte.weight"].shape[1],
            "n_positions": tensors["wpe.weight"].shape[0],
        }
        values = {}
        for key in CONFIG_KEYS:
            meta = metadata.get(key)
            meta = int(meta) if meta is not None else None
            if key == "n_head":
                if meta is not None and n_head is not None and meta != n_head:
                    raise ValueError(f"n_head {n_head} contradicts checkpoint metadata {meta}")
                value = meta if meta is not None else n_head
                if value is None:
                    raise ValueError("checkpoint metadata lacks n_head; pass it (--heads)")
            else:
                value = meta if meta is not None else inferred[key]
                if value != inferred[key]:
                    raise ValueError(f"metadata {key}={value} but tensors imply {inferred[key]}")
            values[key] = int(value)
        return cls(**values)


class InputMajorLinear(nn.Module):
    """y = x @ weight + bias with weight stored [in, out] (HF "Conv1D")."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        flat = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return flat.view(*x.shape[:-1], self.weight.shape[1])


# torch >= 2.0: fused causal attention (flash / memory-efficient kernels on a GPU).
HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")
ATTENTION_KINDS = ("math", "sdpa")


class Attention(nn.Module):
    def __init__(self, cfg, attention="math"):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd {cfg.n_embd} not divisible by n_head {cfg.n_head}")
        self.n_head = cfg.n_head
        self.sdpa = attention == "sdpa"
        self.c_attn = InputMajorLinear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = InputMajorLinear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, future_mask):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:  # the same maths (scale 1/sqrt(hs), causal), without materialising (B, H, T, T)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            att = att.masked_fill(future_mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = InputMajorLinear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = InputMajorLinear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg, attention="math"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.attn = Attention(cfg, attention)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.mlp = MLP(cfg)

    def forward(self, x, future_mask):
        x = x + self.attn(self.ln_1(x), future_mask)
        return x + self.mlp(self.ln_2(x))


# Hugging Face checkpoints may carry these non-parameter buffers; ignored on load.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class GPT2(nn.Module):
    """GPT-2 with a tied LM head; state_dict names equal the HF tensor names.

    attention: "math" (explicit masked softmax; any dtype and torch version)
    or "sdpa" (F.scaled_dot_product_attention; needs HAVE_SDPA)."""

    def __init__(self, cfg, attention="math"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS} (got {attention!r})")
        if attention == "sdpa" and not HAVE_SDPA:
            raise ValueError(f"attention='sdpa' needs torch >= 2.0 (this is torch {torch.__version__})")
        self.cfg = cfg
        self.attention = attention
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, attention) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed=None):
        """GPT-2 init: N(0, 0.02) weights (residual projections scaled by
        1/sqrt(2L)), zero biases, unit LayerNorm gains."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        proj_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = proj_std if name.endswith("c_proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif ".ln_" in name or name.startswith("ln_"):
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.zero_()

    def forward(self, idx, targets=None, return_logits=True):
        """idx, targets: (B, T) int64. Returns (logits, mean CE loss or None);
        return_logits=False gives (None, loss), so a compiled training step
        need not write the (B, T, V) logits out as a result."""
        B, T = idx.shape
        if T > self.cfg.n_positions:
            raise ValueError(f"sequence length {T} > n_positions {self.cfg.n_positions}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        future_mask = None if self.attention == "sdpa" else \
            torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
        for block in self.h:
            x = block(x, future_mask)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return (logits if return_logits else None), loss

    @torch.no_grad()
    def load_state(self, tensors):
        """Copy name -> numpy array `tensors` into the parameters (any float
        dtype; converted to the model's). Missing/unknown/mis-shaped -> error."""
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in tensors]
        unknown = [n for n in tensors
                   if n not in params and not n.endswith(_IGNORED_SUFFIXES)]
        if missing or unknown:
            raise ValueError(f"checkpoint mismatch: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unknown {unknown[:5]}"
                             f"{'...' if len(unknown) > 5 else ''}")
        for name, p in params.items():
            src = tensors[name]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"{name}: checkpoint shape {list(src.shape)} "
                                 f"!= model shape {list(p.shape)}")
            p.copy_(torch.from_numpy(np.asarray(src)).to(p.dtype))

    def export_state(self, dtype=None):
        """Return name -> numpy array (HF names/layout) in `dtype` (float32)."""
        dtype = np.float32 if dtype is None else dtype
        return {name: p.detach().cpu().numpy().astype(dtype)
                for name, p in self.named_parameters()}


# --------------------------------------------------------------------------
# optimisation helpers
# --------------------------------------------------------------------------

def lr_at(step, *, lr, schedule, warmup, steps, min_lr):
    """Learning rate for 0-based `step` ("constant" or warmup + "cosine")."""
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}")
    if step < warmup:
        return lr * (step + 1) / warmup
    ratio = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def adamw_param_groups(model, weight_decay):
    """AdamW groups: weight decay on params with >= 2 dims (embeddings and
    weight matrices), none on LayerNorm parameters and biases."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------
# test-data generators (CLI)
# --------------------------------------------------------------------------

def _main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mi = sub.add_parser("make-init", help="write a randomly initialised GPT-2 checkpoint")
    mi.add_argument("--out", required=True)
    mi.add_argument("--layers", type=int, default=2)
    mi.add_argument("--heads", type=int, default=2)
    mi.add_argument("--embd", type=int, default=32)
    mi.add_argument("--vocab", type=int, default=64)
    mi.add_argument("--positions", type=int, default=32)
    mi.add_argument("--seed", type=int, default=1337)
    mi.add_argument("--dtype", choices=_WRITABLE_DTYPES, default="F32")
    mi.add_argument("--bias-noise", type=float, default=0.0,
                    help="add N(0, s) to every 1-D tensor (biases, LayerNorm), so reference checks "
                         "exercise their gradients instead of starting them at 0 and 1")
    ms = sub.add_parser("make-shard", help="write a shard of uniformly random tokens")
    ms.add_argument("--out", required=True)
    ms.add_argument("--tokens", type=int, required=True)
    ms.add_argument("--vocab", type=int, required=True)
    ms.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()

    if args.cmd == "make-init":
        cfg = GPT2Config(args.layers, args.heads, args.embd, args.vocab, args.positions)
        model = GPT2(cfg)
        model.init_weights(seed=args.seed)
        if args.bias_noise > 0:
            gen = torch.Generator().manual_seed(args.seed + 1)
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() == 1:
                        p.add_(torch.randn(p.shape, generator=gen) * args.bias_noise)
        write_safetensors(args.out, model.export_state(np.float64), cfg.to_metadata(),
                          dtype=args.dtype)
    else:
        rng = np.random.default_rng(args.seed)
        write_shard(args.out, rng.integers(0, args.vocab, size=args.tokens))


if __name__ == "__main__":
    _main()
