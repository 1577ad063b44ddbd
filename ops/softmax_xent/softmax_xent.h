// softmax_xent.h — fused softmax + cross-entropy, and the fused classifier (tied LM head) built on it.
//
// softmax_xent: per row of logits (N,V): loss = logsumexp(row) − row[target]; with backward, the row is
// overwritten in place by dlogits = (softmax(row) − onehot(target))·dscale. The probabilities exist once, in
// the buffer that held the logits.
//
// classifier: the LM head tied to wte, processed `chunk` rows at a time: logits = x·wteᵀ, softmax_xent, then
// dx = dlogits·wte and dwte += dlogitsᵀ·x. Only chunk×V logits ever exist — the full (N,V) matrix (200 MB for
// GPT-2 at B·T = 1024) is never materialised.
//
// Vocabulary-parallel form (Megatron): wte holds rows v0 … v0+Vl−1 of a table padded to a multiple of the
// tensor-parallel size, of which the first V are real. Each rank computes its slice of the logits; the row
// maximum, the sum of exponentials and the target logit are combined across ranks through `hook`, so the full
// logits are never gathered on one rank. dx is then a partial sum (the caller all-reduces it). hook == null
// means a single rank owning the whole vocabulary.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct SoftmaxXent {
  // losses (N), logits (N,V) in/out, targets (N); backward != 0 → logits become dlogits scaled by dscale
  using Forward = void(T* losses, T* logits, const int32_t* targets, int64_t N, int V, T dscale, int backward);
};

// Combines per-row statistics across the ranks that share the vocabulary (sum, or max when is_max != 0).
template <typename T>
struct ReduceHook {
  void* ctx;
  void (*all_reduce)(void* ctx, T* data, int64_t n, int is_max);
};

// Losses, the row statistics and dwte are in master precision M; for a bf16 model the logits are computed and
// normalised in fp32 and only dlogits is rounded to bf16 for the two backward GEMMs.
template <typename T, typename M = master_t<T>>
struct Classifier {
  // losses (N); dx (N,C) overwritten and dwte (Vl,C) += when non-null (training), both null for evaluation;
  // scratch: classifier_scratch_bytes<T>(chunk, Vl) bytes of device memory; x (N,C); wte (Vl,C) = rows
  // v0…v0+Vl−1; targets (N) in [0,V); dscale = 1/(number of tokens in the mean); hook null unless the
  // vocabulary is split
  using Forward = void(M* losses, T* dx, M* dwte, void* scratch, const T* x, const T* wte, const int32_t* targets,
                       int64_t N, int C, int Vl, int v0, int V, int64_t chunk, M dscale, const ReduceHook<M>* hook);
};

// Scratch of the classifier: chunk×Vl logits in master precision, plus the bf16 dlogits when T is narrower.
template <typename T>
constexpr size_t classifier_scratch_bytes(int64_t chunk, int Vl) {
  const size_t n = static_cast<size_t>(chunk) * static_cast<size_t>(Vl);
  return n * sizeof(master_t<T>) + (sizeof(T) < sizeof(master_t<T>) ? n * sizeof(T) : 0);
}

void register_softmax_xent_cpu(Registry& r);
void register_softmax_xent_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
