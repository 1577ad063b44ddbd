// cuda_test_util.h — helpers shared by the GPU tests: the skip-without-GPU guard, device copies of host
// vectors, kernel lookup by device and dtype, and bf16 rounding for mixed-precision comparisons.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "ops/registry.h"
#include "runtime/bf16.h"
#include "runtime/cuda/device.h"
#include "tests/test_util.h"

namespace aq::test {

#define AQ_REQUIRE_GPU() \
  if (::aq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device visible (CPU-only machine): GPU test not run"

// A device copy of a host vector; read() brings it back.
template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& h) : n_(h.size()) {
    EXPECT_EQ(cudaMalloc(&p_, bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p_, h.data(), bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  T* get() { return p_; }
  std::vector<T> read() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  size_t bytes() const { return std::max<size_t>(1, n_) * sizeof(T); }
  T* p_ = nullptr;
  size_t n_;
};

template <typename Fn>
Fn* find_kernel(const char* op, Device d, DType t) {
  return ops::Registry::instance().find<Fn>(op, d, t);
}

inline std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = float_to_bf16(x[i]);
  return y;
}
inline std::vector<float> to_float(const std::vector<bf16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_to_float(x[i]);
  return y;
}
// x rounded to the nearest bf16 values (so a CPU reference sees exactly the GPU's inputs)
inline std::vector<float> round_bf16(const std::vector<float>& x) { return to_float(to_bf16(x)); }

}  // namespace aq::test
