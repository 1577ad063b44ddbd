// glu_cpu.cpp — the gated linear unit's kernels on the CPU (float and double); see glu.h.
#include "ops/glu/glu.h"

namespace aq::ops {
namespace {

// gate (N,F), inp (N,2F)
template <typename T>
void glu_split(T* __restrict gate, const T* __restrict inp, int64_t N, int F) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i)
    for (int j = 0; j < F; ++j) gate[i * F + j] = inp[i * 2 * F + j];
}

// out (N,F), act (N,F), inp (N,2F)
template <typename T>
void glu_forward(T* __restrict out, const T* __restrict act, const T* __restrict inp, int64_t N, int F) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i)
    for (int j = 0; j < F; ++j) out[i * F + j] = act[i * F + j] * inp[i * 2 * F + F + j];
}

// dinp (N,2F) may alias inp (N,2F): no __restrict on them
template <typename T>
void glu_backward(T* dinp, T* __restrict dact, const T* __restrict dout, const T* __restrict act, const T* inp,
                  int64_t N, int F) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i)
    for (int j = 0; j < F; ++j) {
      const T d = dout[i * F + j], up = inp[i * 2 * F + F + j];
      dact[i * F + j] = d * up;
      dinp[i * 2 * F + F + j] = d * act[i * F + j];
      dinp[i * 2 * F + j] = T(0);
    }
}

// dinp (N,2F), dgate (N,F)
template <typename T>
void glu_merge(T* __restrict dinp, const T* __restrict dgate, int64_t N, int F) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i)
    for (int j = 0; j < F; ++j) dinp[i * 2 * F + j] = dgate[i * F + j];
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Glu<T>::Split>("glu_split", Device::CPU, dtype_of<T>(), &glu_split<T>);
  r.add<typename Glu<T>::Forward>("glu_forward", Device::CPU, dtype_of<T>(), &glu_forward<T>);
  r.add<typename Glu<T>::Backward>("glu_backward", Device::CPU, dtype_of<T>(), &glu_backward<T>);
  r.add<typename Glu<T>::Merge>("glu_merge", Device::CPU, dtype_of<T>(), &glu_merge<T>);
}

}  // namespace

void register_glu_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
