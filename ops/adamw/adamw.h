// adamw.h — AdamW with torch.optim.AdamW semantics, and the global gradient norm used for clipping.
//
// For step t (1-based), gradient g·grad_scale (grad_scale carries the clipping factor, saving a pass):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
#pragma once

#include <cstdint>
#include <vector>

#include "ops/registry.h"

namespace aq::ops {

struct AdamWParams {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // multiplies every gradient (clipping)
};

template <typename T>
struct AdamW {
  // param (n), grad (n), m (n), v (n)
  using Update = void(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& hp);
  // Σ x² over n values, accumulated in double in a fixed order (bit-reproducible for any thread count).
  using SumSquares = double(const T* x, int64_t n);
};

// Multi-tensor form: every parameter of the model (or of this rank's ZeRO-1 slice) in one launch. The flat
// buffer is described by a table of chunks of at most kTensorChunk elements, none crossing a tensor boundary,
// each carrying its tensor's flags. On CUDA the table lives in device memory (made once, at start-up).
constexpr int64_t kTensorChunk = 1 << 16;
struct TensorChunk {
  int64_t offset;      // first element, relative to the buffers passed
  int32_t n;           // elements, 1 … kTensorChunk
  uint8_t decay;       // 1: weight decay applies
  uint8_t norm_class;  // which of the two sums of squares it adds to (the trainer: 0 TP-sharded, 1 replicated)
  uint16_t pad = 0;
};
// Splits [offset, offset+n) into chunks appended to `out` (offset is relative, as in TensorChunk).
void append_chunks(std::vector<TensorChunk>& out, int64_t offset, int64_t n, bool decay, int norm_class);

// M is the master type (fp32 weights, gradients and moments); T the model's working type. When T differs
// from M (bf16), `copy` receives the updated weights rounded to T; otherwise it must be null.
template <typename T, typename M = master_t<T>>
struct MultiAdamW {
  // master, copy, grad, m, v: flat buffers the chunks index; weight decay hp.weight_decay where chunk.decay
  using Update = void(M* master, T* copy, const M* grad, M* m, M* v, const TensorChunk* chunks, int64_t nchunks,
                      const AdamWParams& hp);
  // sums[0], sums[1] (host) = Σ x² over the chunks of norm class 0 and 1, in double, in chunk order
  using SumSquares = void(double* sums, const M* x, const TensorChunk* chunks, int64_t nchunks);
  // dst (n) = src (n) rounded to T: the working copy made from the master weights
  using Cast = void(T* dst, const M* src, int64_t n);
};

void register_adamw_cpu(Registry& r);
void register_adamw_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
