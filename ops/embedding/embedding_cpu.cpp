// embedding_cpu.cpp — CPU token + position embedding.
#include <algorithm>

#include "ops/embedding/embedding.h"

namespace aq::ops {
namespace {

template <typename T>
void embedding_forward(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int T_, int C, int v0, int Vl) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t) {
      T* o = out + (static_cast<int64_t>(b) * T_ + t) * C;
      const int tok = inp[b * T_ + t] - v0;
      const bool mine = tok >= 0 && tok < Vl;
      const T* e = wte + static_cast<int64_t>(mine ? tok : 0) * C;
      const T* p = wpe + static_cast<int64_t>(t) * C;
      if (mine && wpe) {
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
      } else if (mine) {
        std::copy(e, e + C, o);
      } else if (wpe) {
        std::copy(p, p + C, o);
      } else {
        std::fill(o, o + C, T(0));
      }
    }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* inp, int B, int T_, int C, int v0, int Vl) {
  // Threads split the channels, and each walks every token in order: two tokens with the same id never race,
  // and the summation order is the same whatever the thread count, so results are bit-reproducible.
  constexpr int kBlock = 32;
  const int nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; ++blk) {
    const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T_; ++t) {
        const T* d = dout + (static_cast<int64_t>(b) * T_ + t) * C;
        const int tok = inp[b * T_ + t] - v0;
        if (tok >= 0 && tok < Vl) {
          T* e = dwte + static_cast<int64_t>(tok) * C;
#pragma omp simd
          for (int c = c0; c < c1; ++c) e[c] += d[c];
        }
        if (dwpe) {
          T* p = dwpe + static_cast<int64_t>(t) * C;
#pragma omp simd
          for (int c = c0; c < c1; ++c) p[c] += d[c];
        }
      }
  }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Embedding<T>::Forward>("embedding_forward", Device::CPU, dtype_of<T>(), &embedding_forward<T>);
  r.add<typename Embedding<T>::Backward>("embedding_backward", Device::CPU, dtype_of<T>(), &embedding_backward<T>);
}

}  // namespace

void register_embedding_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
