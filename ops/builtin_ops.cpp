// builtin_ops.cpp — the one list of Aqueduct's built-in operators, declared through the plugin API.
//
// Each family of ops/ is declared here with the same builder a plugin author uses (include/aqueduct/
// op_plugin.hpp) and enters the registry through the same validation (OpRegistry::add_abi). Its kernels stay
// where ops/register_builtin.cpp put them, in the typed table; the declaration names them (forward, backward,
// fused variants), and tests/plugin/test_plugin.cpp (OpDefs.EveryTypedKernelBelongsToADeclaredOp) fails when a typed
// kernel belongs to no declared op, so a kernel registered without its declaration is caught. Shapes: (N,C) means rows
// × channels as in the family's header; T is the kernel's dtype, M its master type (float for bf16).
#include "aqueduct/op_plugin.hpp"
#include "ops/builtin_adapters.h"
#include "ops/op_def.h"
#include "ops/softmax_xent/softmax_xent.h"

namespace aq::ops {

namespace {

using plugin::fail;
using plugin::OpBuilder;
using plugin::ShapeCall;

constexpr int32_t T_ = AQ_DTYPE_KERNEL;
constexpr int32_t M_ = AQ_DTYPE_KERNEL_MASTER;
constexpr int32_t S0 = 0, S1 = 1, S2 = 2;
constexpr int32_t B = AQ_SBP_BROADCAST, P = AQ_SBP_PARTIAL_SUM, ANY = AQ_SBP_SPLIT_ANY, NONE = AQ_SBP_NONE;
constexpr uint32_t kParam = AQ_TENSOR_PARAM, kOpt = AQ_TENSOR_OPTIONAL, kNoGrad = AQ_TENSOR_NO_GRAD,
                   kAcc = AQ_TENSOR_GRAD_ACCUMULATES;

int32_t master(AqDType t) { return t == AQ_DTYPE_BF16 ? AQ_DTYPE_F32 : t; }

void set(AqTensorDesc& d, int32_t dtype, std::initializer_list<int64_t> dims) {
  d.dtype = dtype;
  d.ndim = static_cast<int32_t>(dims.size());
  int i = 0;
  for (int64_t v : dims) d.shape[i++] = v;
}

std::string dims(const AqTensorDesc& d) {
  std::string s = "[";
  for (int i = 0; i < d.ndim; ++i) s += (i ? ", " : "") + std::to_string(d.shape[i]);
  return s + "]";
}

void expect(bool ok, const std::string& op, const std::string& what) {
  if (!ok) fail(op + ": " + what);
}

// ---- shape functions (never read data) --------------------------------------------------------------------

void embedding_shape(ShapeCall& s) {
  const AqTensorDesc &tok = s.in(0), &wte = s.in(1), &wpe = s.in(2);
  if (wpe.ndim >= 0) {
    expect(wpe.shape[1] == wte.shape[1], "aq::embedding",
           "wpe " + dims(wpe) + " and wte " + dims(wte) + " differ in width C");
    expect(tok.shape[1] <= wpe.shape[0], "aq::embedding",
           "sequence length " + std::to_string(tok.shape[1]) + " exceeds the " + std::to_string(wpe.shape[0]) +
               " positions of wpe");
  }
  set(s.out(0), s.kernel_dtype(), {tok.shape[0], tok.shape[1], wte.shape[1]});
}

void layernorm_shape(ShapeCall& s) {
  const AqTensorDesc &x = s.in(0), &w = s.in(1), &b = s.in(2);
  expect(w.shape[0] == x.shape[1] && b.shape[0] == x.shape[1], "aq::layernorm",
         "inp " + dims(x) + " needs w and b of C = " + std::to_string(x.shape[1]) + ", given " + dims(w) + " and " +
             dims(b));
  set(s.out(0), s.kernel_dtype(), {x.shape[0], x.shape[1]});
  set(s.out(1), master(s.kernel_dtype()), {x.shape[0]});
  set(s.out(2), master(s.kernel_dtype()), {x.shape[0]});
}

void matmul_shape(ShapeCall& s) {
  const AqTensorDesc &x = s.in(0), &w = s.in(1), &bias = s.in(2);
  expect(x.shape[1] == w.shape[0], "aq::matmul",
         "inp " + dims(x) + " @ weight " + dims(w) + ": inner sizes " + std::to_string(x.shape[1]) + " and " +
             std::to_string(w.shape[0]) + " differ");
  expect(bias.ndim < 0 || bias.shape[0] == w.shape[1], "aq::matmul",
         "bias " + dims(bias) + " must have OC = " + std::to_string(w.shape[1]) + " entries");
  set(s.out(0), s.kernel_dtype(), {x.shape[0], w.shape[1]});
}

void attention_shape(ShapeCall& s) {
  const AqTensorDesc& qkv = s.in(0);
  const int64_t nh = s.attr_int(0);
  expect(qkv.shape[2] % 3 == 0, "aq::attention", "qkv " + dims(qkv) + ": the last dimension must be 3C");
  const int64_t C = qkv.shape[2] / 3;
  expect(nh > 0 && C % nh == 0, "aq::attention",
         "C = " + std::to_string(C) + " is not divisible by n_head = " + std::to_string(nh));
  set(s.out(0), s.kernel_dtype(), {qkv.shape[0], qkv.shape[1], C});
  set(s.out(1), master(s.kernel_dtype()), {qkv.shape[0], nh, qkv.shape[1]});
}

void rmsnorm_shape(ShapeCall& s) {
  const AqTensorDesc &x = s.in(0), &w = s.in(1);
  expect(w.shape[0] == x.shape[1], "aq::rmsnorm",
         "inp " + dims(x) + " needs w of C = " + std::to_string(x.shape[1]) + ", given " + dims(w));
  expect(s.attr_float(0) > 0, "aq::rmsnorm", "eps must be positive, got " + std::to_string(s.attr_float(0)));
  set(s.out(0), s.kernel_dtype(), {x.shape[0], x.shape[1]});
  set(s.out(1), master(s.kernel_dtype()), {x.shape[0]});
}

void swiglu_shape(ShapeCall& s) {
  const AqTensorDesc& x = s.in(0);
  expect(x.shape[1] % 2 == 0, "aq::swiglu", "inp " + dims(x) + ": the last dimension must be 2F ([gate | up])");
  set(s.out(0), s.kernel_dtype(), {x.shape[0], x.shape[1] / 2});
}

void glu_shape(ShapeCall& s) {
  const AqTensorDesc &act = s.in(0), &x = s.in(1);
  expect(x.shape[0] == act.shape[0] && x.shape[1] == 2 * act.shape[1], "aq::glu",
         "act " + dims(act) + " and inp " + dims(x) + ": inp must be [N, 2F] ([gate | up]) for act [N, F]");
  set(s.out(0), s.kernel_dtype(), {act.shape[0], act.shape[1]});
}

void rope_shape(ShapeCall& s) {
  const AqTensorDesc& x = s.in(0);
  const int64_t heads = s.attr_int(0), hs = s.attr_int(1);
  expect(hs > 0 && hs % 2 == 0, "aq::rope", "head size " + std::to_string(hs) + " must be even and positive");
  expect(heads >= 1 && heads * hs <= x.shape[2], "aq::rope",
         std::to_string(heads) + " heads of " + std::to_string(hs) + " columns do not fit in x " + dims(x));
  s.out(0) = x;
  s.out(0).dtype = s.kernel_dtype();
}

void attention_gqa_shape(ShapeCall& s) {
  const AqTensorDesc& qkv = s.in(0);
  const int64_t nh = s.attr_int(0), nkv = s.attr_int(1), hs = s.attr_int(2);
  expect(nh > 0 && nkv > 0 && nh % nkv == 0, "aq::attention_gqa",
         "n_head = " + std::to_string(nh) + " must be a multiple of n_kv_head = " + std::to_string(nkv));
  expect(qkv.shape[2] == (nh + 2 * nkv) * hs, "aq::attention_gqa",
         "qkv " + dims(qkv) + ": the last dimension must be (NH + 2·NKV)·hs = " + std::to_string((nh + 2 * nkv) * hs));
  set(s.out(0), s.kernel_dtype(), {qkv.shape[0], qkv.shape[1], nh * hs});
  set(s.out(1), master(s.kernel_dtype()), {qkv.shape[0], nh, qkv.shape[1]});
}

void same_as_input(ShapeCall& s) {
  s.out(0) = s.in(0);
  s.out(0).dtype = s.kernel_dtype();
}

void add_shape(ShapeCall& s) {
  const AqTensorDesc &a = s.in(0), &b = s.in(1);
  bool same = a.ndim == b.ndim;
  for (int i = 0; same && i < a.ndim; ++i) same = a.shape[i] == b.shape[i];
  expect(same, "aq::add", "a " + dims(a) + " and b " + dims(b) + " must have the same shape");
  same_as_input(s);
}

void softmax_xent_shape(ShapeCall& s) {
  const AqTensorDesc &logits = s.in(0), &targets = s.in(1);
  expect(targets.shape[0] == logits.shape[0], "aq::softmax_xent",
         "targets " + dims(targets) + " must have one entry per row of logits " + dims(logits));
  set(s.out(0), s.kernel_dtype(), {logits.shape[0]});
  // The typed kernel uses the logits buffer as scratch (backward=0 leaves exp(logits − max) there); a call that
  // must keep its inputs (the generic path, ops/builtin_adapters.cpp) runs it on a copy in the workspace.
  if (s.attr_int(1) == 0) {
    const int64_t elem = s.kernel_dtype() == AQ_DTYPE_F64 ? 8 : s.kernel_dtype() == AQ_DTYPE_BF16 ? 2 : 4;
    s.workspace(static_cast<uint64_t>(logits.shape[0] * logits.shape[1] * elem));
  }
}

void classifier_shape(ShapeCall& s) {
  const AqTensorDesc &x = s.in(0), &wte = s.in(1), &targets = s.in(2);
  expect(x.shape[1] == wte.shape[1], "aq::classifier", "x " + dims(x) + " and wte " + dims(wte) + " differ in C");
  expect(targets.shape[0] == x.shape[0], "aq::classifier", "targets " + dims(targets) + " must have N entries");
  const int64_t chunk = s.attr_int(2);
  expect(chunk > 0, "aq::classifier", "chunk must be positive, got " + std::to_string(chunk));
  const int Vl = static_cast<int>(wte.shape[0]);
  s.workspace(s.kernel_dtype() == AQ_DTYPE_BF16  ? classifier_scratch_bytes<bf16>(chunk, Vl)
              : s.kernel_dtype() == AQ_DTYPE_F64 ? classifier_scratch_bytes<double>(chunk, Vl)
                                                 : classifier_scratch_bytes<float>(chunk, Vl));
  set(s.out(0), master(s.kernel_dtype()), {x.shape[0]});
}

void adamw_shape(ShapeCall& s) {
  for (int i = 1; i < 4; ++i)
    expect(s.in(i).shape[0] == s.in(0).shape[0], "aq::adamw",
           "param " + dims(s.in(0)) + ", grad, m and v must have the same length; got " + dims(s.in(i)));
}

void sum_squares_shape(ShapeCall& s) { set(s.out(0), AQ_DTYPE_F64, {}); }

// ---- declarations ------------------------------------------------------------------------------------------

// Declares the op; where ops/builtin_adapters.cpp has an adapter for it, its kernels also get generic entry points
// (so OpRegistry::forward/backward and aq-op check run it like a plugin op).
void declare(OpRegistry& r, OpBuilder& b, TypedKernels typed) {
  AqOpDef def;
  b.build(def);
  OpDef d = r.convert(def, "built-in", "", "", &typed);
  if (const BuiltinAdapter* a = builtin_adapter(d.name))
    for (KernelEntry& k : d.kernels) {
      k.forward = a->forward;
      k.backward = a->backward;
    }
  r.add(std::move(d));
}

}  // namespace

void declare_builtin_ops(OpRegistry& r) {
  {
    OpBuilder b("aq::embedding", 1);
    b.doc("token + position embedding; vocabulary-parallel: wte holds rows v0 … v0+Vl-1, other tokens add 0")
        .input("tokens", AQ_DTYPE_I32, 2, "B,T", kNoGrad)
        .input("wte", T_, 2, "Vl,C", kParam | kAcc)
        .input("wpe", T_, 2, "maxT,C", kParam | kOpt | kAcc)
        .output("out", T_, 3, "B,T,C")
        .attr("v0", AQ_ATTR_INT, "first vocabulary row wte holds")
        .shape(embedding_shape)
        .saves({"tokens"})
        // Vocabulary-parallel: each rank adds its rows' embeddings, wpe on one rank only (a partial sum).
        .sharding("vocab", {B, S0, P}, {P}, {NONE, S0, B})
        .sharding("replicated", {B, B, B}, {B}, {NONE, B, B});
    declare(r, b, {"embedding_forward", "embedding_backward", {}});
  }
  {
    OpBuilder b("aq::layernorm", 1);
    b.doc("LayerNorm over C, eps 1e-5, biased variance; gradients of inp, w, b accumulate (residual stream)")
        .input("inp", T_, 2, "N,C", kAcc)
        .input("w", T_, 1, "C", kParam | kAcc)
        .input("b", T_, 1, "C", kParam | kAcc)
        .output("out", T_, 2, "N,C")
        .output("mean", M_, 1, "N", kNoGrad)
        .output("rstd", M_, 1, "N", kNoGrad)
        .shape(layernorm_shape)
        .saves({"inp", "w", "mean", "rstd"}, "xhat from inp, mean and rstd")
        .sharding("replicated", {B, B, B}, {B, B, B}, {B, B, B})
        .sharding("rows", {S0, B, B}, {S0, S0, S0}, {S0, P, P});
    declare(r, b, {"layernorm_forward", "layernorm_backward", {"residual_layernorm_forward"}});
  }
  {
    OpBuilder b("aq::matmul", 1);
    b.doc("out = inp @ weight + bias, weight (IC,OC) input-major (HF Conv1D); dweight, dbias accumulate in M")
        .input("inp", T_, 2, "N,IC")
        .input("weight", T_, 2, "IC,OC", kParam | kAcc)
        .input("bias", T_, 1, "OC", kParam | kOpt | kAcc)
        .output("out", T_, 2, "N,OC")
        .shape(matmul_shape)
        .saves({"inp", "weight"})
        // Megatron: column-parallel splits OC (dinp is a partial sum), row-parallel splits IC (out is a partial
        // sum; the bias is added on one rank, so it is a partial sum too).
        .sharding("column", {B, S1, S0}, {S1}, {P, S1, S0})
        .sharding("row", {S1, S0, P}, {P}, {S1, S0, B})
        .sharding("rows", {S0, B, B}, {S0}, {S0, P, P})
        .sharding("replicated", {B, B, B}, {B}, {B, B, B});
    // Fused forms: GELU in the GEMM's epilogue (c_fc), and the backward through the GELU before c_proj.
    declare(r, b, {"matmul_forward", "matmul_backward", {"matmul_gelu_forward", "matmul_backward_dgelu"}});
  }
  {
    OpBuilder b("aq::attention", 1);
    b.doc("causal multi-head self-attention on packed qkv, flash-style (no T×T matrix kept)")
        .input("qkv", T_, 3, "B,T,3C")
        .output("out", T_, 3, "B,T,C")
        .output("lse", M_, 3, "B,NH,T", kNoGrad)
        .attr("n_head", AQ_ATTR_INT, "heads NH (on this rank)")
        .shape(attention_shape)
        .saves({"qkv", "out", "lse"}, "softmax probabilities, from q, k and lse")
        // Heads are independent: a rank holds its heads' blocks of q, k and v (the layout the column-parallel
        // c_attn produces) and n_head is the local count.
        .sharding("heads", {S2}, {S2, S1}, {S2})
        .sharding("replicated", {B}, {B, B}, {B});
    declare(r, b, {"attention_forward", "attention_backward", {}});
  }
  {
    OpBuilder b("aq::rmsnorm", 1);
    b.doc("RMSNorm over C (Llama): out = x·rstd·w; gradients of inp and w accumulate (residual stream)")
        .input("inp", T_, 2, "N,C", kAcc)
        .input("w", T_, 1, "C", kParam | kAcc)
        .output("out", T_, 2, "N,C")
        .output("rstd", M_, 1, "N", kNoGrad)
        .attr("eps", AQ_ATTR_FLOAT, "rms_norm_eps")
        .shape(rmsnorm_shape)
        .saves({"inp", "w", "rstd"}, "xhat from inp and rstd")
        .sharding("replicated", {B, B}, {B, B}, {B, B})
        .sharding("rows", {S0, B}, {S0, S0}, {S0, P});
    declare(r, b, {"rmsnorm_forward", "rmsnorm_backward", {"residual_rmsnorm_forward"}});
  }
  {
    OpBuilder b("aq::swiglu", 1);
    b.doc("SwiGLU on packed [gate | up] rows: out = silu(gate)·up (Llama's MLP activation)")
        .input("inp", T_, 2, "N,2F")
        .output("out", T_, 2, "N,F")
        .shape(swiglu_shape)
        .saves({"inp"})
        // Columns split only as whole [gate shard | up shard] pairs (the column-parallel GEMM's layout), or rows.
        .sharding("rows", {S0}, {S0}, {S0})
        .sharding("gate-up pairs", {S1}, {S1}, {S1})
        .sharding("replicated", {B}, {B}, {B});
    declare(r, b, {"swiglu_forward", "swiglu_backward", {}});
  }
  {
    OpBuilder b("aq::glu", 1);
    b.doc(
         "gated linear unit on packed [gate | up] rows around any activation: out = act ⊙ up, act = activation(gate) "
         "computed apart (a Llama's hidden_act other than silu); inp's gate half gets gradient 0 here, the "
         "activation's input gradient is merged into it by the model")
        .input("act", T_, 2, "N,F")
        .input("inp", T_, 2, "N,2F")
        .output("out", T_, 2, "N,F")
        .shape(glu_shape)
        .saves({"act", "inp"})
        // Columns split as whole [gate shard | up shard] pairs of inp beside act's columns (the column-parallel
        // GEMM's layout), or rows.
        .sharding("rows", {S0, S0}, {S0}, {S0, S0})
        .sharding("gate-up pairs", {S1, S1}, {S1}, {S1, S1})
        .sharding("replicated", {B, B}, {B}, {B, B});
    declare(r, b, {"glu_forward", "glu_backward", {"glu_split", "glu_merge"}});
  }
  {
    OpBuilder b("aq::rope", 1);
    b.doc("rotary position embedding, HF rotate_half, in place on the first n_heads heads of each row")
        .input("x", T_, 3, "B,T,stride")
        .output("out", T_, 3, "B,T,stride (x itself)")
        .attr("n_heads", AQ_ATTR_INT, "heads rotated (NH + NKV on packed qkv)")
        .attr("head_size", AQ_ATTR_INT)
        .attr("pos0", AQ_ATTR_INT, "position of the first row")
        .attr("theta", AQ_ATTR_FLOAT, "rope_theta")
        .shape(rope_shape)
        .saves({}, "nothing: the backward is the inverse rotation")
        .sharding("heads", {S2}, {S2}, {S2})
        .sharding("batch", {S0}, {S0}, {S0})
        .sharding("replicated", {B}, {B}, {B});
    declare(r, b, {"rope_forward", "rope_backward", {}});
  }
  {
    OpBuilder b("aq::attention_gqa", 1);
    b.doc("causal grouped-query attention on packed [q | k | v] (NH query heads, NKV key/value heads)")
        .input("qkv", T_, 3, "B,T,(NH+2NKV)hs")
        .output("out", T_, 3, "B,T,NH·hs")
        .output("lse", M_, 3, "B,NH,T", kNoGrad)
        .attr("n_head", AQ_ATTR_INT, "query heads NH (on this rank)")
        .attr("n_kv_head", AQ_ATTR_INT, "key/value heads NKV (on this rank)")
        .attr("head_size", AQ_ATTR_INT)
        .shape(attention_gqa_shape)
        .saves({"qkv", "out", "lse"}, "softmax probabilities, from q, k and lse")
        // A rank holds NH/tp query heads and the NKV/tp kv heads they read (tp divides NKV).
        .sharding("heads", {S2}, {S2, S1}, {S2})
        .sharding("replicated", {B}, {B, B}, {B});
    declare(r, b, {"attention_gqa_forward", "attention_gqa_backward", {}});
  }
  {
    OpBuilder b("aq::gelu", 1);
    b.doc("GELU, tanh approximation (GPT-2)")
        .input("inp", T_, -1, "any")
        .output("out", T_, -1, "same as inp")
        .shape(same_as_input)
        .saves({"inp"})
        .sharding("elementwise", {ANY}, {ANY}, {ANY})
        .sharding("replicated", {B}, {B}, {B});
    declare(r, b, {"gelu_forward", "gelu_backward", {}});
  }
  {
    OpBuilder b("aq::add", 1);
    b.doc(
         "out = a + b elementwise: the residual add, which the built-in norms fuse and a norm from the registry "
         "(ModelConfig::norm_op) runs after it; its gradient is dout for both, passed on without a kernel")
        .input("a", T_, -1, "any")
        .input("b", T_, -1, "same as a")
        .output("out", T_, -1, "same as a")
        .shape(add_shape)
        .sharding("elementwise", {ANY, ANY}, {ANY}, {NONE, NONE})
        .sharding("replicated", {B, B}, {B}, {NONE, NONE});
    declare(r, b, {"residual_forward", "", {}});
  }
  {
    OpBuilder b("aq::softmax_xent", 1);
    b.doc(
         "per row: loss = logsumexp(logits) - logits[target]; with backward=1 the logits become dlogits·dscale "
         "(with backward=0 the typed kernel still uses them as scratch; the generic call works on a copy)")
        .input("logits", T_, 2, "N,V")
        .input("targets", AQ_DTYPE_I32, 1, "N", kNoGrad)
        .output("losses", T_, 1, "N", kNoGrad)
        .attr("dscale", AQ_ATTR_FLOAT, "scale of dlogits (1 / tokens in the mean)")
        .attr("backward", AQ_ATTR_INT, "1: overwrite logits with dlogits in the same pass")
        .shape(softmax_xent_shape)
        .saves({}, "softmax, in the forward call itself (backward=1)")
        .sharding("rows", {S0, S0}, {S0}, {S0, NONE})
        .sharding("replicated", {B, B}, {B}, {B, NONE});
    declare(r, b, {"softmax_xent", "softmax_xent", {}});
  }
  {
    OpBuilder b("aq::classifier", 1);
    b.doc("tied LM head + softmax cross-entropy, chunked; dx written and dwte accumulated in the same call")
        .input("x", T_, 2, "N,C")
        .input("wte", T_, 2, "Vl,C", kParam | kAcc)
        .input("targets", AQ_DTYPE_I32, 1, "N", kNoGrad)
        .output("losses", M_, 1, "N", kNoGrad)
        .attr("v0", AQ_ATTR_INT, "first vocabulary row wte holds")
        .attr("V", AQ_ATTR_INT, "real vocabulary size")
        .attr("chunk", AQ_ATTR_INT, "rows of logits materialised at a time")
        .attr("dscale", AQ_ATTR_FLOAT, "1 / tokens in the mean")
        .shape(classifier_shape)
        .saves({}, "logits, chunk by chunk, in the forward call itself")
        // Vocabulary-parallel (Megatron): row statistics combine across ranks inside the kernel (its hook), so
        // losses come out whole; dx is a partial sum.
        .sharding("vocab", {B, S0, B}, {B}, {P, S0, NONE})
        .sharding("replicated", {B, B, B}, {B}, {B, B, NONE});
    declare(r, b, {"classifier", "classifier", {}});
  }
  {
    OpBuilder b("aq::adamw", 1);
    b.doc("AdamW (torch semantics) in place on param, m, v; multi-tensor form over chunk tables")
        .input("param", T_, 1, "n", kNoGrad)
        .input("grad", M_, 1, "n", kNoGrad)
        .input("m", M_, 1, "n", kNoGrad)
        .input("v", M_, 1, "n", kNoGrad)
        .attr("lr", AQ_ATTR_FLOAT)
        .attr("beta1", AQ_ATTR_FLOAT)
        .attr("beta2", AQ_ATTR_FLOAT)
        .attr("eps", AQ_ATTR_FLOAT)
        .attr("weight_decay", AQ_ATTR_FLOAT)
        .attr("step", AQ_ATTR_INT, "1-based, for bias correction")
        .attr("grad_scale", AQ_ATTR_FLOAT, "multiplies every gradient (clipping)")
        .shape(adamw_shape)
        .sharding("elementwise", {ANY, ANY, ANY, ANY}, {}, {NONE, NONE, NONE, NONE});
    declare(r, b, {"adamw_update", "", {"multi_adamw", "cast_to_working"}});
  }
  {
    OpBuilder b("aq::sum_squares", 1);
    b.doc("sum of squares in double, fixed order (bit-reproducible); the global gradient norm")
        .input("x", T_, 1, "n", kNoGrad)
        .output("sum", AQ_DTYPE_F64, 0, "scalar", kNoGrad)
        .shape(sum_squares_shape)
        .sharding("split", {S0}, {P}, {NONE})
        .sharding("replicated", {B}, {B}, {NONE});
    declare(r, b, {"sum_squares", "", {"multi_sum_squares"}});
  }
}

}  // namespace aq::ops
