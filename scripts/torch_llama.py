#!/usr/bin/env python3
"""Float64 PyTorch Llama: the reference for Aqueduct's Llama-family training (issue 10).

A Llama written out from the Hugging Face definition (LlamaForCausalLM), in float64, reading and writing the
Hugging Face layout (model.safetensors + config.json):
  * RMSNorm: x / sqrt(mean(x^2) + eps) * w                              (input_layernorm, post_attention_layernorm,
                                                                          model.norm)
  * rotary embeddings, HF "rotate_half": q' = q cos + rotate_half(q) sin with the first half of a head's dims
    paired with the second half, inv_freq_i = theta^(-2i/hs), angles pos * inv_freq (in float64 here)
  * grouped-query attention: num_key_value_heads kv heads, query head h reads kv head h // (NH / NKV)
  * SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x))
  * no biases; lm_head untied unless tie_word_embeddings
nn.Linear weights are [out, in], as in Hugging Face files.

Commands:
  make-init --out DIR [--layers 2 --hidden 48 --heads 6 --kv-heads 2 --intermediate 80 --vocab 256
            --positions 64 --theta 10000 --eps 1e-5 --tied --seed 1337 --norm-noise 0.1]
      writes DIR/model.safetensors (F32) and DIR/config.json: a random Llama in the HF layout.
  train --init DIR --data 'GLOB' --batch B --seq T --steps N --log-out REF.jsonl --save OUT.safetensors [...]
      the same training semantics as scripts/torch_reference.py (data order, schedule, clipping, AdamW with decay
      on >= 2-D tensors), for comparison with aq-train by scripts/compare_reference.py.
  self-test
      checks the model against independent facts (autograd gradcheck of the whole model in float64; RoPE at
      position 0 is the identity and keeps every pair's norm; GQA with NKV = NH equals attention written with
      explicit per-head loops; kv heads shared by their query groups; RMSNorm's closed form; the HF layout
      round trip). Prints one line per check; exits 1 if any fails.

Interpreter: Debian's /usr/bin/python3 (numpy and torch from python3-numpy, python3-torch).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt2 as tg  # noqa: E402  (safetensors I/O, shard loader, lr schedule, AdamW groups)
import torch_reference as tr  # noqa: E402  (the training loop)


class LlamaConfig:
    """The fields of a Hugging Face Llama config.json that define the model."""

    FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "tie_word_embeddings")

    def __init__(self, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=64, rms_norm_eps=1e-5,
                 rope_theta=10000.0, tie_word_embeddings=False):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.tie_word_embeddings = tie_word_embeddings
        self.validate()

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    def validate(self):
        nh, nkv, c = self.num_attention_heads, self.num_key_value_heads, self.hidden_size
        if nh < 1 or nkv < 1 or nh % nkv:
            raise ValueError(f"num_attention_heads {nh} must be a multiple of num_key_value_heads {nkv}")
        if c % nh or (c // nh) % 2:
            raise ValueError(f"hidden_size {c} must split into {nh} heads of an even size (rotary pairs)")

    @classmethod
    def from_json(cls, path):
        with open(path) as f:
            j = json.load(f)
        missing = [k for k in cls.FIELDS[:6] if k not in j]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)} (not a Llama config.json)")
        kw = {k: j[k] for k in cls.FIELDS if k in j}
        kw.setdefault("num_key_value_heads", j["num_attention_heads"])
        return cls(**kw)

    def to_json(self):
        j = {k: getattr(self, k) for k in self.FIELDS}
        j.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                  "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"})
        return j

    def __repr__(self):
        return (f"Llama(L={self.num_hidden_layers} C={self.hidden_size} NH={self.num_attention_heads} "
                f"NKV={self.num_key_value_heads} F={self.intermediate_size} V={self.vocab_size} "
                f"theta={self.rope_theta} tied={self.tie_word_embeddings})")


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(T, hs, theta, dtype=torch.float64, offset=0):
    """cos, sin (T, hs): HF's layout, the frequencies repeated for the two halves."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    pos = torch.arange(offset, offset + T, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, H, T, hs)."""
    return x * cos + rotate_half(x) * sin


def gqa_attention(q, k, v):
    """q (B, NH, T, hs), k/v (B, NKV, T, hs): causal softmax attention, kv heads repeated for their groups."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    T = q.shape[2]
    att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    att = att.masked_fill(mask, float("-inf")).softmax(-1)
    return att @ v


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, hs = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.input_layernorm = nn.Parameter(torch.ones(c))
        self.q_proj = nn.Linear(c, cfg.num_attention_heads * hs, bias=False)
        self.k_proj = nn.Linear(c, cfg.num_key_value_heads * hs, bias=False)
        self.v_proj = nn.Linear(c, cfg.num_key_value_heads * hs, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hs, c, bias=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(c))
        self.gate_proj = nn.Linear(c, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, c, bias=False)

    def forward(self, x, cos, sin):
        cfg = self.cfg
        B, T, _ = x.shape
        hs = cfg.head_dim
        h = rms_norm(x, self.input_layernorm, cfg.rms_norm_eps)
        q = self.q_proj(h).view(B, T, cfg.num_attention_heads, hs).transpose(1, 2)
        k = self.k_proj(h).view(B, T, cfg.num_key_value_heads, hs).transpose(1, 2)
        v = self.v_proj(h).view(B, T, cfg.num_key_value_heads, hs).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = gqa_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o_proj(y)
        h = rms_norm(x, self.post_attention_layernorm, cfg.rms_norm_eps)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        dtype = self.embed_tokens.weight.dtype
        cos, sin = rope_cos_sin(T, self.cfg.head_dim, self.cfg.rope_theta, dtype)
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = x @ head.t()
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss

    # ---- the Hugging Face layout --------------------------------------------------------------------------
    def named_hf_tensors(self):
        """(HF name, parameter) in the order of a Hugging Face checkpoint."""
        out = [("model.embed_tokens.weight", self.embed_tokens.weight)]
        for i, b in enumerate(self.layers):
            p = f"model.layers.{i}."
            out += [(p + "input_layernorm.weight", b.input_layernorm),
                    (p + "self_attn.q_proj.weight", b.q_proj.weight),
                    (p + "self_attn.k_proj.weight", b.k_proj.weight),
                    (p + "self_attn.v_proj.weight", b.v_proj.weight),
                    (p + "self_attn.o_proj.weight", b.o_proj.weight),
                    (p + "post_attention_layernorm.weight", b.post_attention_layernorm),
                    (p + "mlp.gate_proj.weight", b.gate_proj.weight),
                    (p + "mlp.up_proj.weight", b.up_proj.weight),
                    (p + "mlp.down_proj.weight", b.down_proj.weight)]
        out.append(("model.norm.weight", self.norm))
        if self.lm_head is not None:
            out.append(("lm_head.weight", self.lm_head.weight))
        return out

    def load_hf(self, tensors):
        for name, p in self.named_hf_tensors():
            if name not in tensors:
                raise KeyError(f"missing tensor {name!r}")
            a = np.asarray(tensors[name])
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"tensor {name!r} has shape {list(a.shape)}, expected {list(p.shape)}")
            with torch.no_grad():
                p.copy_(torch.from_numpy(a.astype(np.float64)))

    def export_hf(self, dtype=np.float64):
        return {name: p.detach().cpu().numpy().astype(dtype) for name, p in self.named_hf_tensors()}

    def init_weights(self, seed, norm_noise=0.0):
        """N(0, 0.02) for embeddings and projections (HF's initializer_range), norms 1 (+ N(0, norm_noise))."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in self.named_hf_tensors():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.02)
                else:
                    p.copy_(1.0 + torch.randn(p.shape, generator=gen, dtype=torch.float64) * norm_noise)


def save_hf_dir(out, model, dtype="F32"):
    os.makedirs(out, exist_ok=True)
    np_dtype = np.float64 if dtype == "F64" else np.float32
    tg.write_safetensors(os.path.join(out, "model.safetensors"), model.export_hf(np_dtype), {"format": "pt"},
                         dtype=dtype)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(model.cfg.to_json(), f, indent=2)


def load_hf_dir(path):
    """A model directory (model.safetensors + config.json) or a model.safetensors with config.json beside it."""
    d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    st = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    cfg = LlamaConfig.from_json(os.path.join(d, "config.json"))
    model = Llama(cfg).to(torch.float64)
    tensors, _ = tg.read_safetensors(st)
    model.load_hf(tensors)
    return model


# ---- training (scripts/torch_reference.py's loop: the C++ trainer's semantics) ---------------------------------

def train(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_hf_dir(args.init)
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"error: cannot load {args.init}: {e}")
    tr.train_loop(model, model.cfg.vocab_size, args, repr(model.cfg))
    tg.write_safetensors(args.save, model.export_hf(np.float64), {"format": "pt"}, dtype="F64")
    print(f"reference: wrote {args.log_out} and {args.save}", flush=True)


# ---- self-test ---------------------------------------------------------------------------------------------

def self_test():
    torch.manual_seed(0)
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)

    # RoPE: position 0 is the identity; every (i, i + hs/2) pair keeps its norm; a pair turns by pos * inv_freq_i.
    hs, theta, T = 10, 500.0, 7
    cos, sin = rope_cos_sin(T, hs, theta)
    x = torch.randn(1, 1, T, hs, dtype=torch.float64)
    y = apply_rope(x, cos, sin)
    check("rope: position 0 is the identity", torch.equal(y[..., 0, :], x[..., 0, :]))
    pair = lambda t: t[..., : hs // 2].pow(2) + t[..., hs // 2:].pow(2)  # noqa: E731
    check("rope: pair norms kept", torch.allclose(pair(x), pair(y), rtol=1e-13, atol=0))
    i, t = 3, 5
    ang = t * theta ** (-2.0 * i / hs)
    a, b = x[0, 0, t, i].item(), x[0, 0, t, i + hs // 2].item()
    want = (a * math.cos(ang) - b * math.sin(ang), b * math.cos(ang) + a * math.sin(ang))
    got = (y[0, 0, t, i].item(), y[0, 0, t, i + hs // 2].item())
    check("rope: closed-form rotation of one pair", max(abs(g - w) for g, w in zip(got, want)) < 1e-13,
          f"{got} vs {want}")

    # GQA against per-head loops (kv head h // group), and NKV = NH against plain multi-head attention.
    B, NH, NKV, T, hs = 2, 6, 2, 5, 4
    q = torch.randn(B, NH, T, hs, dtype=torch.float64)
    k = torch.randn(B, NKV, T, hs, dtype=torch.float64)
    v = torch.randn(B, NKV, T, hs, dtype=torch.float64)
    out = gqa_attention(q, k, v)
    worst = 0.0
    for bb in range(B):
        for h in range(NH):
            kv = h // (NH // NKV)
            for tq in range(T):
                s = [float(q[bb, h, tq] @ k[bb, kv, tk]) / math.sqrt(hs) for tk in range(tq + 1)]
                m = max(s)
                p = [math.exp(e - m) for e in s]
                z = sum(p)
                o = sum(p[tk] / z * v[bb, kv, tk] for tk in range(tq + 1))
                worst = max(worst, float((o - out[bb, h, tq]).abs().max()))
    check("gqa: equals per-head loops", worst < 1e-13, f"max diff {worst:.3e}")
    kf = torch.randn(B, NH, T, hs, dtype=torch.float64)
    vf = torch.randn(B, NH, T, hs, dtype=torch.float64)
    mha = F.softmax((q @ kf.transpose(-1, -2) / math.sqrt(hs)).masked_fill(
        torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), -1) @ vf
    check("gqa: NKV = NH is multi-head attention", torch.allclose(gqa_attention(q, kf, vf), mha, rtol=1e-13,
                                                                 atol=1e-15))

    # RMSNorm closed form on one row.
    xr = torch.tensor([[3.0, -4.0, 0.0, 12.0]], dtype=torch.float64)
    wr = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    r = math.sqrt((9 + 16 + 0 + 144) / 4 + 1e-5)
    check("rmsnorm: closed form", torch.allclose(rms_norm(xr, wr, 1e-5),
                                                 torch.tensor([[3 / r, -8 / r, 0.0, 6 / r]], dtype=torch.float64),
                                                 rtol=1e-14, atol=0))

    # The whole model: autograd's gradients against finite differences (float64), tied and untied heads.
    for tied in (False, True):
        cfg = LlamaConfig(hidden_size=12, intermediate_size=10, num_hidden_layers=2, num_attention_heads=3,
                          num_key_value_heads=1, vocab_size=11, max_position_embeddings=8,
                          tie_word_embeddings=tied)
        model = Llama(cfg).to(torch.float64)
        model.init_weights(seed=3, norm_noise=0.1)
        with torch.no_grad():
            for _, p in model.named_hf_tensors():
                if p.dim() >= 2:
                    p.mul_(10.0)  # larger weights, so every path carries gradient the check can see
        idx = torch.randint(0, cfg.vocab_size, (2, 5))
        tgt = torch.randint(0, cfg.vocab_size, (2, 5))
        params = [p for _, p in model.named_hf_tensors()]

        with torch.no_grad():
            same = torch.equal(model(idx, tgt)[1], _forward_with(model, {id(p): p for p in params}, idx, tgt))
        check(f"functional forward equals the module's ({'tied' if tied else 'untied'} head)", same)
        inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
        try:
            ids = [id(p) for p in params]
            ok = torch.autograd.gradcheck(lambda *ps: _forward_with(model, dict(zip(ids, ps)), idx, tgt), inputs,
                                          eps=1e-6, atol=1e-7, rtol=1e-5)
        except RuntimeError as e:
            ok, msg = False, str(e).splitlines()[0]
        else:
            msg = ""
        check(f"model gradients vs finite differences ({'tied' if tied else 'untied'} head)", ok, msg)

    # The HF layout: save, load, same logits; config.json round trip.
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        cfg = LlamaConfig(tie_word_embeddings=False)
        m = Llama(cfg).to(torch.float64)
        m.init_weights(seed=5, norm_noise=0.1)
        save_hf_dir(d, m, dtype="F64")
        m2 = load_hf_dir(d)
        idx = torch.randint(0, cfg.vocab_size, (1, 9))
        check("hf layout: save and load give the same logits", torch.equal(m(idx)[0], m2(idx)[0]))
        check("hf layout: config.json round trip", vars(m2.cfg) == vars(cfg))
        names = [n for n, _ in m.named_hf_tensors()]
        check("hf layout: tensor names", names[1] == "model.layers.0.input_layernorm.weight" and
              names[-1] == "lm_head.weight" and len(names) == 2 + 9 * cfg.num_hidden_layers + 1)
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def _forward_with(model, sub, idx, tgt):
    """Forward pass where each parameter is replaced by sub[id(param)] (a tensor that requires grad)."""
    cfg = model.cfg
    g = lambda p: sub[id(p)]  # noqa: E731
    T = idx.shape[1]
    cos, sin = rope_cos_sin(T, cfg.head_dim, cfg.rope_theta)
    x = F.embedding(idx, g(model.embed_tokens.weight))
    for b in model.layers:
        B = x.shape[0]
        h = rms_norm(x, g(b.input_layernorm), cfg.rms_norm_eps)
        q = (h @ g(b.q_proj.weight).t()).view(B, T, cfg.num_attention_heads, -1).transpose(1, 2)
        k = (h @ g(b.k_proj.weight).t()).view(B, T, cfg.num_key_value_heads, -1).transpose(1, 2)
        v = (h @ g(b.v_proj.weight).t()).view(B, T, cfg.num_key_value_heads, -1).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = gqa_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)
        x = x + y @ g(b.o_proj.weight).t()
        h = rms_norm(x, g(b.post_attention_layernorm), cfg.rms_norm_eps)
        x = x + (F.silu(h @ g(b.gate_proj.weight).t()) * (h @ g(b.up_proj.weight).t())) @ g(b.down_proj.weight).t()
    x = rms_norm(x, g(model.norm), cfg.rms_norm_eps)
    head = g(model.embed_tokens.weight) if model.lm_head is None else g(model.lm_head.weight)
    logits = x @ head.t()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mi = sub.add_parser("make-init", help="write a random Llama in the Hugging Face layout")
    mi.add_argument("--out", required=True, help="directory for model.safetensors and config.json")
    mi.add_argument("--layers", type=int, default=2)
    mi.add_argument("--hidden", type=int, default=48)
    mi.add_argument("--heads", type=int, default=6)
    mi.add_argument("--kv-heads", type=int, default=2)
    mi.add_argument("--intermediate", type=int, default=80)
    mi.add_argument("--vocab", type=int, default=256)
    mi.add_argument("--positions", type=int, default=64)
    mi.add_argument("--theta", type=float, default=10000.0)
    mi.add_argument("--eps", type=float, default=1e-5)
    mi.add_argument("--tied", action="store_true", help="tie lm_head to embed_tokens")
    mi.add_argument("--seed", type=int, default=1337)
    mi.add_argument("--norm-noise", type=float, default=0.0,
                    help="add N(0, s) to the norm weights, so reference checks exercise their gradients")
    mi.add_argument("--dtype", choices=("F32", "F64"), default="F32")
    tp = sub.add_parser("train", help="float64 reference training")
    tr.add_train_args(tp, "model directory (model.safetensors + config.json)")
    sub.add_parser("self-test", help="check the model against independent facts")
    args = ap.parse_args()
    if args.cmd == "make-init":
        try:
            cfg = LlamaConfig(args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.vocab,
                              args.positions, args.eps, args.theta, args.tied)
        except ValueError as e:
            sys.exit(f"error: {e}")
        model = Llama(cfg).to(torch.float64)
        model.init_weights(args.seed, args.norm_noise)
        save_hf_dir(args.out, model, dtype=args.dtype)
        print(f"wrote {args.out}/model.safetensors and config.json: {cfg}")
    elif args.cmd == "train":
        train(args)
    else:
        sys.exit(self_test())


if __name__ == "__main__":
    main()
