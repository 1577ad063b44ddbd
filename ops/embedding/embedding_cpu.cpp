// embedding_cpu.cpp — CPU token + position embedding.
#include <algorithm>

#include "ops/embedding/embedding.h"

namespace aq::ops {
namespace {

template <typename T>
void embedding_forward(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int T_, int C) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t) {
      T* o = out + (static_cast<int64_t>(b) * T_ + t) * C;
      const T* e = wte + static_cast<int64_t>(inp[b * T_ + t]) * C;
      const T* p = wpe + static_cast<int64_t>(t) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* inp, int B, int T_, int C) {
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
        T* e = dwte + static_cast<int64_t>(inp[b * T_ + t]) * C;
        T* p = dwpe + static_cast<int64_t>(t) * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) {
          e[c] += d[c];
          p[c] += d[c];
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
