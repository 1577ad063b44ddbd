// rope_cpu.cpp — CPU rotary embedding. The (T, hs/2) cos/sin table is computed once per call in double (see
// rope.h) and shared by every batch row and head; then (batch, position) rows are rotated in parallel.
#include <cmath>
#include <vector>

#include "ops/rope/rope.h"

namespace aq::ops {

void check_rope_shape(int B, int T_, int stride, int n_heads, int hs, int pos0, double theta) {
  AQ_CHECK(hs >= 2 && hs % 2 == 0, "rope: head size ", hs, " must be even (columns i and i + hs/2 form a pair)");
  AQ_CHECK(B >= 0 && T_ >= 0 && n_heads >= 0 && static_cast<int64_t>(n_heads) * hs <= stride, "rope: ", n_heads,
           " heads of size ", hs, " do not fit a row of ", stride, " columns (B=", B, ", T=", T_, ")");
  AQ_CHECK(pos0 >= 0, "rope: position offset ", pos0, " must be >= 0");
  AQ_CHECK(theta > 0, "rope: rope_theta ", theta, " must be > 0");
}

namespace {

template <typename T>
void rope_rotate(T* x, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta, double sign) {
  check_rope_shape(B, T_, stride, n_heads, hs, pos0, theta);
  const int half = hs / 2;
  std::vector<double> inv_freq(half);  // the same expression as rope_cuda.cu's, so both tables agree
  for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * i / hs);
  std::vector<T> cs(static_cast<size_t>(T_) * half), sn(cs.size());  // (T_, half)
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T_; ++t)
    for (int i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos0 + t) * inv_freq[i];
      cs[static_cast<size_t>(t) * half + i] = static_cast<T>(std::cos(angle));
      sn[static_cast<size_t>(t) * half + i] = static_cast<T>(sign * std::sin(angle));
    }
  const int64_t rows = static_cast<int64_t>(B) * T_;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* c = cs.data() + (r % T_) * half;
    const T* s = sn.data() + (r % T_) * half;
    for (int h = 0; h < n_heads; ++h) {
      T* x1 = x + r * stride + static_cast<int64_t>(h) * hs;
      T* x2 = x1 + half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const T a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

template <typename T>
void rope_forward(T* x, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta) {
  rope_rotate(x, B, T_, stride, n_heads, hs, pos0, theta, 1.0);
}

template <typename T>
void rope_backward(T* dx, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta) {
  rope_rotate(dx, B, T_, stride, n_heads, hs, pos0, theta, -1.0);
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Rope<T>::Forward>("rope_forward", Device::CPU, dtype_of<T>(), &rope_forward<T>);
  r.add<typename Rope<T>::Backward>("rope_backward", Device::CPU, dtype_of<T>(), &rope_backward<T>);
}

}  // namespace

void register_rope_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
