// softmax_xent.h — fused softmax + cross-entropy, and the fused classifier (tied LM head) built on it.
//
// softmax_xent: per row of logits (N,V): loss = logsumexp(row) − row[target]; with backward, the row is
// overwritten in place by dlogits = (softmax(row) − onehot(target))·dscale. The probabilities exist once, in
// the buffer that held the logits.
//
// classifier: the LM head tied to wte, processed `chunk` rows at a time: logits = x·wteᵀ, softmax_xent, then
// dx = dlogits·wte and dwte += dlogitsᵀ·x. Only chunk×V logits ever exist — the full (N,V) matrix (200 MB for
// GPT-2 at B·T = 1024) is never materialised.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct SoftmaxXent {
  // losses (N), logits (N,V) in/out, targets (N); backward != 0 → logits become dlogits scaled by dscale
  using Forward = void(T* losses, T* logits, const int32_t* targets, int64_t N, int V, T dscale, int backward);
};

template <typename T>
struct Classifier {
  // losses (N); dx (N,C) overwritten and dwte (V,C) += when non-null (training), both null for evaluation;
  // scratch (chunk,V); x (N,C); wte (V,C); targets (N); dscale = 1/(number of tokens in the mean)
  using Forward = void(T* losses, T* dx, T* dwte, T* scratch, const T* x, const T* wte, const int32_t* targets,
                       int64_t N, int C, int V, int64_t chunk, T dscale);
};

void register_softmax_xent_cpu(Registry& r);

}  // namespace aq::ops
