// builtin_adapters.cpp — generic entry points (AqKernelFn) onto the built-in typed kernels, and their probes.
// See builtin_adapters.h. Tensor order is the declaration order of ops/builtin_ops.cpp; for a backward it is
// the saved tensors, then one gradient per output, and the outputs are one gradient per input (op_abi.h).
// Parameter gradients are in master precision M (float for bf16), as the typed kernels keep them.
#include "ops/builtin_adapters.h"

#include <cstring>
#include <exception>
#include <type_traits>

#include "ops/adamw/adamw.h"
#include "ops/attention/attention.h"
#include "ops/embedding/embedding.h"
#include "ops/gelu/gelu.h"
#include "ops/glu/glu.h"
#include "ops/layernorm/layernorm.h"
#include "ops/matmul/matmul.h"
#include "ops/registry.h"
#include "ops/residual/residual.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rope/rope.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "ops/swiglu/swiglu.h"

#ifdef AQ_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace aq::ops {

namespace {

template <typename T>
struct Tag {
  using type = T;
};

// Runs body(Tag<T>, device) for the call's dtype; any exception becomes a status with its one-line message,
// since nothing may be thrown across the AqKernelFn boundary.
template <typename Body>
AqStatus dispatch(const AqKernelArgs* a, AqError* error, const char* op, Body&& body) {
  try {
    const Device dev = from_abi_device(a->device);
    switch (a->dtype) {
      case AQ_DTYPE_F32:
        body(Tag<float>{}, dev);
        break;
      case AQ_DTYPE_F64:
        body(Tag<double>{}, dev);
        break;
      case AQ_DTYPE_BF16:
        body(Tag<bf16>{}, dev);
        break;
      default:
        return aq_error_set(error, AQ_STATUS_UNSUPPORTED, "%s: no typed kernels for dtype value %d", op,
                            static_cast<int>(a->dtype));
    }
    return AQ_STATUS_OK;
  } catch (const std::exception& e) {
    return aq_error_set(error, AQ_STATUS_INVALID_ARGUMENT, "%s", e.what());
  }
}

template <typename T>
T* ptr(const AqTensor* t) {
  return t && t->data ? static_cast<T*>(t->data) : nullptr;
}

template <typename T>
T* need(const AqTensor* t, const char* op, const char* what) {
  AQ_CHECK(t && t->data, op, ": the typed kernel writes ", what, " in the same call; pass a buffer for it");
  return static_cast<T*>(t->data);
}

int as_int(int64_t v, const char* op, const char* what) {
  AQ_CHECK(v >= 0 && v <= INT32_MAX, op, ": ", what, " = ", v, " does not fit the typed kernel's int");
  return static_cast<int>(v);
}

// dst = src (bytes), on the call's device: rope rotates in place, so its out-of-place form copies first.
void copy_bytes(void* dst, const void* src, size_t bytes, Device dev, void* stream) {
  if (dst == src || bytes == 0) return;
  if (dev == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef AQ_HAVE_CUDA
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream));
  AQ_CHECK(e == cudaSuccess, "cudaMemcpyAsync (device to device, ", bytes, " bytes): ", cudaGetErrorString(e));
#else
  (void)stream;
  fail("a CUDA tensor reached a build without CUDA; rebuild with -DAQ_CUDA=ON");
#endif
}

// A host value stored into a tensor on the call's device (sum_squares returns its result on the host).
void store_bytes(void* dst, const void* src, size_t bytes, Device dev, void* stream) {
  if (dev == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef AQ_HAVE_CUDA
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream));
  AQ_CHECK(e == cudaSuccess, "cudaMemcpyAsync (host to device, ", bytes, " bytes): ", cudaGetErrorString(e));
  AQ_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)) == cudaSuccess, "cudaStreamSynchronize");
#else
  (void)stream;
  fail("a CUDA tensor reached a build without CUDA; rebuild with -DAQ_CUDA=ON");
#endif
}

// A float attribute in the kernel's element type (bf16 has no arithmetic conversions of its own).
template <typename T>
T element(double v) {
  if constexpr (std::is_same_v<T, bf16>)
    return float_to_bf16(static_cast<float>(v));
  else
    return static_cast<T>(v);
}

template <typename Fn>
Fn* typed(const char* name, Device dev, DType t) {
  return Registry::instance().find<Fn>(name, dev, t);
}

// ---- gelu: inp (any) -> out; backward: inp, dout -> dinp (overwritten) --------------------------------------
AqStatus gelu_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::gelu", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    typed<typename Gelu<T>::Forward>("gelu_forward", dev, dtype_of<T>())(ptr<T>(a->outputs[0]), ptr<T>(a->inputs[0]),
                                                                         aq_tensor_numel(a->inputs[0]));
  });
}
AqStatus gelu_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::gelu", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    if (!ptr<T>(a->outputs[0])) return;  // no gradient wanted
    typed<typename Gelu<T>::Backward>("gelu_backward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(a->inputs[0]), ptr<T>(a->inputs[1]), aq_tensor_numel(a->inputs[0]));
  });
}

// ---- add: a (any), b (same) -> out = a + b; no backward (the gradient is dout for both) ---------------------
AqStatus add_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::add", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    typed<typename Residual<T>::Forward>("residual_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(a->inputs[0]), ptr<T>(a->inputs[1]), aq_tensor_numel(a->inputs[0]));
  });
}

// ---- layernorm: inp (N,C), w (C), b (C) -> out (N,C), mean (N), rstd (N) -----------------------------------
// backward: inp, w, mean, rstd, dout, dmean, drstd -> dinp +=, dw +=, db += (all three in one call)
AqStatus layernorm_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::layernorm", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* x = a->inputs[0];
    typed<typename LayerNorm<T>::Forward>("layernorm_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<M>(a->outputs[1]), ptr<M>(a->outputs[2]), ptr<T>(x), ptr<T>(a->inputs[1]),
        ptr<T>(a->inputs[2]), x->shape[0], as_int(x->shape[1], "aq::layernorm", "C"));
  });
}
AqStatus layernorm_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::layernorm", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* x = a->inputs[0];
    const char* op = "aq::layernorm";
    typed<typename LayerNorm<T>::Backward>("layernorm_backward", dev, dtype_of<T>())(
        need<T>(a->outputs[0], op, "dinp"), need<M>(a->outputs[1], op, "dw"), need<M>(a->outputs[2], op, "db"),
        ptr<T>(a->inputs[4]), ptr<T>(x), ptr<T>(a->inputs[1]), ptr<M>(a->inputs[2]), ptr<M>(a->inputs[3]), x->shape[0],
        as_int(x->shape[1], op, "C"));
  });
}

// ---- rmsnorm: inp (N,C), w (C) -> out (N,C), rstd (N); attr eps --------------------------------------------
// backward: inp, w, rstd, dout, drstd -> dinp +=, dw += (both in one call)
AqStatus rmsnorm_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::rmsnorm", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* x = a->inputs[0];
    typed<typename RmsNorm<T>::Forward>("rmsnorm_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<M>(a->outputs[1]), ptr<T>(x), ptr<T>(a->inputs[1]), x->shape[0],
        as_int(x->shape[1], "aq::rmsnorm", "C"), a->attrs[0]->f);
  });
}
AqStatus rmsnorm_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::rmsnorm", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* x = a->inputs[0];
    const char* op = "aq::rmsnorm";
    typed<typename RmsNorm<T>::Backward>("rmsnorm_backward", dev, dtype_of<T>())(
        need<T>(a->outputs[0], op, "dinp"), need<M>(a->outputs[1], op, "dw"), ptr<T>(a->inputs[3]), ptr<T>(x),
        ptr<T>(a->inputs[1]), ptr<M>(a->inputs[2]), x->shape[0], as_int(x->shape[1], op, "C"));
  });
}

// ---- matmul: inp (N,IC), weight (IC,OC), bias (OC) or absent -> out (N,OC) ---------------------------------
// backward: inp, weight, dout -> dinp (overwritten, optional), dweight +=, dbias += (optional)
AqStatus matmul_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::matmul", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor *x = a->inputs[0], *w = a->inputs[1];
    typed<typename Matmul<T>::Forward>("matmul_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(x), ptr<T>(w), ptr<T>(a->inputs[2]), x->shape[0],
        as_int(w->shape[0], "aq::matmul", "IC"), as_int(w->shape[1], "aq::matmul", "OC"));
  });
}
AqStatus matmul_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::matmul", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor *x = a->inputs[0], *w = a->inputs[1];
    typed<typename Matmul<T>::Backward>("matmul_backward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), need<M>(a->outputs[1], "aq::matmul", "dweight"), ptr<M>(a->outputs[2]),
        ptr<T>(a->inputs[2]), ptr<T>(x), ptr<T>(w), x->shape[0], as_int(w->shape[0], "aq::matmul", "IC"),
        as_int(w->shape[1], "aq::matmul", "OC"));
  });
}

// ---- attention: qkv (B,T,3C) -> out (B,T,C), lse (B,NH,T); attr n_head ------------------------------------
// backward: qkv, out, lse, dout, dlse -> dqkv (overwritten)
AqStatus attention_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::attention", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* qkv = a->inputs[0];
    const char* op = "aq::attention";
    typed<typename Attention<T>::Forward>("attention_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<M>(a->outputs[1]), ptr<T>(qkv), as_int(qkv->shape[0], op, "B"),
        as_int(qkv->shape[1], op, "T"), as_int(qkv->shape[2] / 3, op, "C"), as_int(a->attrs[0]->i, op, "n_head"));
  });
}
AqStatus attention_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::attention", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* qkv = a->inputs[0];
    const char* op = "aq::attention";
    if (!ptr<T>(a->outputs[0])) return;
    typed<typename Attention<T>::Backward>("attention_backward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(a->inputs[3]), ptr<T>(qkv), ptr<T>(a->inputs[1]), ptr<M>(a->inputs[2]),
        as_int(qkv->shape[0], op, "B"), as_int(qkv->shape[1], op, "T"), as_int(qkv->shape[2] / 3, op, "C"),
        as_int(a->attrs[0]->i, op, "n_head"));
  });
}

// ---- attention_gqa: qkv (B,T,(NH+2NKV)hs) -> out (B,T,NH·hs), lse (B,NH,T); attrs n_head, n_kv_head, hs ---
AqStatus attention_gqa_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::attention_gqa", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* qkv = a->inputs[0];
    const char* op = "aq::attention_gqa";
    typed<typename Attention<T>::ForwardGqa>("attention_gqa_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<M>(a->outputs[1]), ptr<T>(qkv), as_int(qkv->shape[0], op, "B"),
        as_int(qkv->shape[1], op, "T"), as_int(a->attrs[0]->i, op, "n_head"), as_int(a->attrs[1]->i, op, "n_kv_head"),
        as_int(a->attrs[2]->i, op, "head_size"));
  });
}
AqStatus attention_gqa_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::attention_gqa", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor* qkv = a->inputs[0];
    const char* op = "aq::attention_gqa";
    if (!ptr<T>(a->outputs[0])) return;
    typed<typename Attention<T>::BackwardGqa>("attention_gqa_backward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(a->inputs[3]), ptr<T>(qkv), ptr<T>(a->inputs[1]), ptr<M>(a->inputs[2]),
        as_int(qkv->shape[0], op, "B"), as_int(qkv->shape[1], op, "T"), as_int(a->attrs[0]->i, op, "n_head"),
        as_int(a->attrs[1]->i, op, "n_kv_head"), as_int(a->attrs[2]->i, op, "head_size"));
  });
}

// ---- swiglu: inp (N,2F) = [gate | up] -> out (N,F); backward: inp, dout -> dinp (overwritten) ------------
AqStatus swiglu_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::swiglu", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor* x = a->inputs[0];
    typed<typename SwiGlu<T>::Forward>("swiglu_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(x), x->shape[0], as_int(x->shape[1] / 2, "aq::swiglu", "F"));
  });
}
AqStatus swiglu_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::swiglu", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor* x = a->inputs[0];
    if (!ptr<T>(a->outputs[0])) return;
    typed<typename SwiGlu<T>::Backward>("swiglu_backward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(a->inputs[1]), ptr<T>(x), x->shape[0],
        as_int(x->shape[1] / 2, "aq::swiglu", "F"));
  });
}

// ---- glu: act (N,F), inp (N,2F) = [gate | up] -> out (N,F) = act ⊙ up ----------------------------------------
// backward: act, inp, dout -> dact (overwritten), dinp (overwritten: [0 | dout ⊙ act]), both in one call
AqStatus glu_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::glu", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor* act = a->inputs[0];
    typed<typename Glu<T>::Forward>("glu_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<T>(act), ptr<T>(a->inputs[1]), act->shape[0], as_int(act->shape[1], "aq::glu", "F"));
  });
}
AqStatus glu_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::glu", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor* act = a->inputs[0];
    const char* op = "aq::glu";
    typed<typename Glu<T>::Backward>("glu_backward", dev, dtype_of<T>())(
        need<T>(a->outputs[1], op, "dinp"), need<T>(a->outputs[0], op, "dact"), ptr<T>(a->inputs[2]), ptr<T>(act),
        ptr<T>(a->inputs[1]), act->shape[0], as_int(act->shape[1], op, "F"));
  });
}

// ---- rope: x (B,T,stride) -> out = x rotated (the typed kernel works in place: out is x copied, then rotated)
// attrs n_heads, head_size, pos0, theta; backward: dout -> dx = dout rotated back
template <bool Backward>
AqStatus rope_call(const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::rope", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor *src = a->inputs[Backward ? a->n_inputs - 1 : 0], *dst = a->outputs[0];
    const char* op = "aq::rope";
    if (!ptr<T>(dst)) return;
    copy_bytes(dst->data, src->data, static_cast<size_t>(aq_tensor_numel(src)) * sizeof(T), dev, a->stream);
    using Fn = std::conditional_t<Backward, typename Rope<T>::Backward, typename Rope<T>::Forward>;
    typed<Fn>(Backward ? "rope_backward" : "rope_forward", dev, dtype_of<T>())(
        ptr<T>(dst), as_int(src->shape[0], op, "B"), as_int(src->shape[1], op, "T"),
        as_int(src->shape[2], op, "stride"), as_int(a->attrs[0]->i, op, "n_heads"),
        as_int(a->attrs[1]->i, op, "head_size"), as_int(a->attrs[2]->i, op, "pos0"), a->attrs[3]->f);
  });
}
AqStatus rope_fwd(void*, const AqKernelArgs* a, AqError* e) { return rope_call<false>(a, e); }
AqStatus rope_bwd(void*, const AqKernelArgs* a, AqError* e) { return rope_call<true>(a, e); }

// ---- embedding: tokens (B,T) I32, wte (Vl,C), wpe (maxT,C) or absent -> out (B,T,C); attr v0 --------------
// backward: tokens, dout -> (none for tokens), dwte +=, dwpe += (optional); Vl from dwte's shape
AqStatus embedding_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::embedding", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor *tok = a->inputs[0], *wte = a->inputs[1];
    const char* op = "aq::embedding";
    typed<typename Embedding<T>::Forward>("embedding_forward", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), ptr<int32_t>(tok), ptr<T>(wte), ptr<T>(a->inputs[2]), as_int(tok->shape[0], op, "B"),
        as_int(tok->shape[1], op, "T"), as_int(wte->shape[1], op, "C"), as_int(a->attrs[0]->i, op, "v0"),
        as_int(wte->shape[0], op, "Vl"));
  });
}
AqStatus embedding_bwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::embedding", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor *tok = a->inputs[0], *dwte = a->outputs[1];
    const char* op = "aq::embedding";
    typed<typename Embedding<T>::Backward>("embedding_backward", dev, dtype_of<T>())(
        need<M>(dwte, op, "dwte"), ptr<M>(a->outputs[2]), ptr<T>(a->inputs[1]), ptr<int32_t>(tok),
        as_int(tok->shape[0], op, "B"), as_int(tok->shape[1], op, "T"), as_int(dwte->shape[1], op, "C"),
        as_int(a->attrs[0]->i, op, "v0"), as_int(dwte->shape[0], op, "Vl"));
  });
}

// ---- softmax_xent: logits (N,V), targets (N) -> losses (N); attrs dscale, backward -----------------------
// With backward = 1 the same call overwrites logits with dlogits (the declared contract: nothing is saved). With
// backward = 0 the typed kernel would still leave exp(logits − max) in the logits, so it runs on a copy in the
// workspace (sized by the shape function): a forward keeps its inputs.
AqStatus softmax_xent_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::softmax_xent", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor* logits = a->inputs[0];
    const bool backward = a->attrs[1]->i != 0;
    T* rows = ptr<T>(logits);
    if (!backward) {
      const size_t bytes = static_cast<size_t>(aq_tensor_numel(logits)) * sizeof(T);
      AQ_CHECK(a->workspace && a->workspace_bytes >= bytes, "aq::softmax_xent: backward=0 needs ", bytes,
               " bytes of workspace for a copy of the logits, given ", a->workspace_bytes);
      copy_bytes(a->workspace, rows, bytes, dev, a->stream);
      rows = static_cast<T*>(a->workspace);
    }
    typed<typename SoftmaxXent<T>::Forward>("softmax_xent", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), rows, ptr<int32_t>(a->inputs[1]), logits->shape[0],
        as_int(logits->shape[1], "aq::softmax_xent", "V"), element<T>(a->attrs[0]->f), backward ? 1 : 0);
  });
}

// Fused backward: outputs losses, dlogits (N,V), (none for targets): the logits are copied into dlogits, which
// the same call overwrites with dlogits = (softmax − onehot)·dscale.
AqStatus softmax_xent_fused(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::softmax_xent", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const AqTensor* logits = a->inputs[0];
    T* dlogits = need<T>(a->outputs[1], "aq::softmax_xent", "dlogits");
    copy_bytes(dlogits, logits->data, static_cast<size_t>(aq_tensor_numel(logits)) * sizeof(T), dev, a->stream);
    typed<typename SoftmaxXent<T>::Forward>("softmax_xent", dev, dtype_of<T>())(
        ptr<T>(a->outputs[0]), dlogits, ptr<int32_t>(a->inputs[1]), logits->shape[0],
        as_int(logits->shape[1], "aq::softmax_xent", "V"), element<T>(a->attrs[0]->f), 1);
  });
}

// ---- classifier: x (N,C), wte (Vl,C), targets (N) -> losses (N) M; attrs v0, V, chunk, dscale -------------
// Single rank only (no ReduceHook): the whole vocabulary, v0 = 0. The forward evaluates (dx, dwte null); the
// fused form writes dx (N,C) and adds to dwte (Vl,C) M in the same call. Scratch: the declared workspace.
template <bool Grads>
AqStatus classifier_call(const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::classifier", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    using M = master_t<T>;
    const AqTensor *x = a->inputs[0], *wte = a->inputs[1];
    const char* op = "aq::classifier";
    const int64_t v0 = a->attrs[0]->i, V = a->attrs[1]->i;
    AQ_CHECK(v0 == 0 && wte->shape[0] >= V, op, ": without a ReduceHook (one rank) wte must hold the whole vocabulary",
             " (v0 = 0, Vl >= V); given v0 = ", v0, ", Vl = ", wte->shape[0], ", V = ", V);
    AQ_CHECK(a->workspace, op, ": needs the workspace its shape function declares (", a->workspace_bytes, " bytes)");
    typed<typename Classifier<T>::Forward>("classifier", dev, dtype_of<T>())(
        ptr<M>(a->outputs[0]), Grads ? need<T>(a->outputs[1], op, "dx") : nullptr,
        Grads ? need<M>(a->outputs[2], op, "dwte") : nullptr, a->workspace, ptr<T>(x), ptr<T>(wte),
        ptr<int32_t>(a->inputs[2]), x->shape[0], as_int(x->shape[1], op, "C"), as_int(wte->shape[0], op, "Vl"),
        as_int(v0, op, "v0"), as_int(V, op, "V"), a->attrs[2]->i, static_cast<M>(a->attrs[3]->f), nullptr);
  });
}
AqStatus classifier_fwd(void*, const AqKernelArgs* a, AqError* e) { return classifier_call<false>(a, e); }
AqStatus classifier_fused(void*, const AqKernelArgs* a, AqError* e) { return classifier_call<true>(a, e); }

// ---- sum_squares: x (n) -> sum () F64 --------------------------------------------------------------------
AqStatus sum_squares_fwd(void*, const AqKernelArgs* a, AqError* e) {
  return dispatch(a, e, "aq::sum_squares", [&](auto tag, Device dev) {
    using T = typename decltype(tag)::type;
    const double s = typed<typename AdamW<T>::SumSquares>("sum_squares", dev, dtype_of<T>())(
        ptr<T>(a->inputs[0]), aq_tensor_numel(a->inputs[0]));
    store_bytes(a->outputs[0]->data, &s, sizeof s, dev, a->stream);
  });
}

// ---- probes and shard rules --------------------------------------------------------------------------------

AttrValue I(int64_t v) { return AttrValue::integer(v); }
AttrValue F(double v) { return AttrValue::real(v); }

// Local head counts: a rank of n holds 1/n of the heads under the "heads" rule.
auto divide_attrs(std::vector<int> which) {
  return [which](const std::string& rule, int, int n, const std::vector<Shape>&, std::vector<AttrValue>& attrs) {
    if (rule != "heads") return;
    for (int i : which) attrs[static_cast<size_t>(i)].i /= n;
  };
}

// Packed [gate | up] rows (the column-parallel GEMM's layout): under the "gate-up pairs" rule, dimension 1 of
// input `tensor` splits as two equal parts, so a rank holds [its gate columns | its up columns].
auto gate_up_pairs(int which) {
  return [which](const std::string& rule, int tensor, int dim, const Shape& s,
                 const std::vector<AttrValue>&) -> std::vector<int64_t> {
    if (rule == "gate-up pairs" && tensor == which && dim == 1) return {s[1] / 2, s[1] / 2};
    return {};
  };
}

std::vector<BuiltinAdapter> make_table() {
  std::vector<BuiltinAdapter> t;
  {
    BuiltinAdapter a;
    a.op = "aq::gelu";
    a.forward = gelu_fwd;
    a.backward = gelu_bwd;
    a.probe.inputs = {{12, 7}};
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::add";
    a.forward = add_fwd;
    a.probe.inputs = {{12, 7}, {12, 7}};
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::layernorm";
    a.forward = layernorm_fwd;
    a.backward = layernorm_bwd;
    a.probe.inputs = {{12, 7}, {7}, {7}};
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::rmsnorm";
    a.forward = rmsnorm_fwd;
    a.backward = rmsnorm_bwd;
    a.probe.inputs = {{12, 7}, {7}};
    a.probe.attrs = {F(1e-5)};
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::matmul";
    a.forward = matmul_fwd;
    a.backward = matmul_bwd;
    // Every dimension is split by one rule (rows N, row-parallel IC, column-parallel OC).
    a.probe.inputs = {{12, 6}, {6, 18}, {18}};
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::attention";
    a.forward = attention_fwd;
    a.backward = attention_bwd;
    a.probe.inputs = {{3, 7, 90}};  // NH 6 heads of hs 5: C 30
    a.probe.attrs = {I(6)};
    a.shard_attrs = divide_attrs({0});
    // qkv is [q | k | v]: a rank holds its heads' columns of each (the column-parallel c_attn's layout).
    a.blocks = [](const std::string& rule, int tensor, int dim, const Shape& s,
                  const std::vector<AttrValue>&) -> std::vector<int64_t> {
      if (rule == "heads" && tensor == 0 && dim == 2) return {s[2] / 3, s[2] / 3, s[2] / 3};
      return {};
    };
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::attention_gqa";
    a.forward = attention_gqa_fwd;
    a.backward = attention_gqa_bwd;
    a.probe.inputs = {{3, 7, 72}};  // NH 12, NKV 6 (groups of 2), hs 3
    a.probe.attrs = {I(12), I(6), I(3)};
    a.shard_attrs = divide_attrs({0, 1});
    // qkv is [q (NH·hs) | k (NKV·hs) | v (NKV·hs)], each split over the ranks.
    a.blocks = [](const std::string& rule, int tensor, int dim, const Shape&,
                  const std::vector<AttrValue>& at) -> std::vector<int64_t> {
      if (rule == "heads" && tensor == 0 && dim == 2) {
        const int64_t hs = at[2].i;
        return {at[0].i * hs, at[1].i * hs, at[1].i * hs};
      }
      return {};
    };
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::swiglu";
    a.forward = swiglu_fwd;
    a.backward = swiglu_bwd;
    a.probe.inputs = {{12, 12}};  // F 6
    a.blocks = gate_up_pairs(0);    // inp
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::glu";
    a.forward = glu_fwd;
    a.backward = glu_bwd;
    a.probe.inputs = {{12, 6}, {12, 12}};  // F 6
    a.blocks = gate_up_pairs(1);             // inp (act is input 0)
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::rope";
    a.forward = rope_fwd;
    a.backward = rope_bwd;
    a.probe.inputs = {{6, 7, 24}};  // 6 heads of hs 4, all rotated (a head split must land on head boundaries)
    a.probe.attrs = {I(6), I(4), I(3), F(10000.0)};
    a.shard_attrs = divide_attrs({0});
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::embedding";
    a.forward = embedding_fwd;
    a.backward = embedding_bwd;
    a.probe.inputs = {{3, 7}, {12, 5}, {9, 5}};  // tokens, wte (V 12), wpe (maxT 9)
    a.probe.attrs = {I(0)};
    a.probe.int_high = {12, 0, 0};
    // Vocabulary-parallel: rank r holds rows r·V/n … of wte, so its v0 is r·V/n.
    a.shard_attrs = [](const std::string& rule, int r, int n, const std::vector<Shape>& whole,
                       std::vector<AttrValue>& attrs) {
      if (rule == "vocab") attrs[0].i = r * (whole[1][0] / n);
    };
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::softmax_xent";
    a.forward = softmax_xent_fwd;
    a.probe.inputs = {{12, 7}, {12}};
    a.probe.attrs = {F(1.0 / 12), I(0)};
    a.probe.int_high = {0, 7};
    a.fused = softmax_xent_fused;
    a.fused_dscale_attr = 0;
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::classifier";
    a.forward = classifier_fwd;
    a.fused = classifier_fused;
    a.fused_dscale_attr = 3;
    a.probe.inputs = {{7, 5}, {11, 5}, {7}};  // N 7 in chunks of 3 (the last one short), V 11
    a.probe.attrs = {I(0), I(11), I(3), F(1.0 / 7)};
    a.probe.int_high = {0, 0, 11};
    a.not_applicable["sharding"] =
        "the vocabulary-parallel rule combines row statistics across ranks through the kernel's ReduceHook, which "
        "a per-shard call cannot supply (tests/parallel/test_parallel.cpp, Layouts.EveryLayoutMatchesOneProcess, "
        "covers it through the whole model)";
    t.push_back(a);
  }
  {
    BuiltinAdapter a;
    a.op = "aq::sum_squares";
    a.forward = sum_squares_fwd;
    a.probe.inputs = {{18}};
    t.push_back(a);
  }
  return t;
}

const std::vector<BuiltinAdapter>& table() {
  static const std::vector<BuiltinAdapter> t = make_table();
  return t;
}

}  // namespace

const BuiltinAdapter* builtin_adapter(const std::string& op) {
  for (const BuiltinAdapter& a : table())
    if (a.op == op) return &a;
  return nullptr;
}

std::vector<std::string> builtin_adapter_ops() {
  std::vector<std::string> names;
  for (const BuiltinAdapter& a : table()) names.push_back(a.op);
  return names;
}

const std::map<std::string, std::string>& builtin_without_adapter() {
  static const std::map<std::string, std::string> m = {
      {"aq::adamw",
       "an in-place optimizer update of param, m and v (no outputs, no backward) over the multi-tensor chunk "
       "tables; tests/ops/test_ops.cpp checks it against torch's AdamW formula"},
  };
  return m;
}

}  // namespace aq::ops
