// rmsnorm_cuda.cu — RMSNorm (optionally fused with the residual add) on CUDA, forward and backward, for float and bf16
// activations (rstd, arithmetic and the weight gradient in fp32).
//
// One warp per row, reductions with cub::WarpReduce, as layernorm_cuda.cu. The weight gradient is a
// deterministic column sum (ops/cuda/column_sums.cuh: fixed row chunks, partials added in order, no atomics).
#include <cub/warp/warp_reduce.cuh>

#include "ops/cuda/column_sums.cuh"
#include "ops/cuda/common.cuh"
#include "ops/rmsnorm/rmsnorm.h"

namespace aq::ops {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block
using WarpReduce = cub::WarpReduce<float>;

// res (N,C) (optional) = a + b_in; out (N,C) = RMSNorm(res or a); rstd (N); w (C)
// With bf16, the rounded residual is what gets normalised (and what backward reads), as in layernorm_cuda.cu.
template <typename T>
__global__ void rmsnorm_forward_kernel(T* res, T* out, float* rstd, const T* a, const T* b_in, const T* w, int64_t N,
                                       int C, float eps) {
  __shared__ typename WarpReduce::TempStorage tmp[kRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= N) return;  // the whole warp leaves together
  const T* x = a + row * C;
  T* r = res ? res + row * C : nullptr;
  float ss = 0;
  for (int c = lane; c < C; c += kWarp) {
    float v = cuda::to_f(x[c]);
    if (r) {
      const T rv = cuda::from_f<T>(v + cuda::to_f(b_in[row * C + c]));
      r[c] = rv;
      v = cuda::to_f(rv);
    }
    ss += v * v;
  }
  __syncwarp();  // this lane's stores to r are visible to the other lanes below
  const T* src = r ? r : x;
  const float s = rsqrtf(__shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(ss), 0) / C + eps);
  for (int c = lane; c < C; c += kWarp) out[row * C + c] = cuda::from_f<T>(cuda::to_f(src[c]) * s * cuda::to_f(w[c]));
  if (lane == 0) rstd[row] = s;
}

void check_shape(int C, double eps) {
  AQ_CHECK(C >= 1 && eps >= 0, "rmsnorm: width C=", C, " must be >= 1 and eps=", eps, " >= 0");
}

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int64_t N, int C, double eps) {
  check_shape(C, eps);
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  rmsnorm_forward_kernel<T>
      <<<blocks, kRowsPerBlock * kWarp>>>(nullptr, out, rstd, inp, nullptr, w, N, C, static_cast<float>(eps));
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void residual_rmsnorm_forward(T* res, T* out, float* rstd, const T* a, const T* b_in, const T* w, int64_t N, int C,
                              double eps) {
  check_shape(C, eps);
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  rmsnorm_forward_kernel<T>
      <<<blocks, kRowsPerBlock * kWarp>>>(res, out, rstd, a, b_in, w, N, C, static_cast<float>(eps));
  AQ_CUDA_LAUNCH_CHECK();
}

// dinp (N,C) += d/dinp; dout, inp (N,C); w (C); rstd (N)
template <typename T>
__global__ void rmsnorm_backward_input_kernel(T* dinp, const T* dout, const T* inp, const T* w, const float* rstd,
                                              int64_t N, int C) {
  __shared__ typename WarpReduce::TempStorage tmp[kRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= N) return;
  const T* x = inp + row * C;
  const T* d = dout + row * C;
  const float s = rstd[row];
  float dot = 0;  // Σ dout·w·xhat
  for (int c = lane; c < C; c += kWarp) dot += cuda::to_f(d[c]) * cuda::to_f(w[c]) * cuda::to_f(x[c]) * s;
  const float m = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(dot), 0) / C;
  for (int c = lane; c < C; c += kWarp) {
    const float g = (cuda::to_f(d[c]) * cuda::to_f(w[c]) - cuda::to_f(x[c]) * s * m) * s;
    dinp[row * C + c] = cuda::from_f<T>(cuda::to_f(dinp[row * C + c]) + g);
  }
}

// The weight-gradient term of one element: dout·xhat.
template <typename T>
struct RmsNormWeightTerm {
  const T *dout, *inp;
  const float* rstd;
  int C;
  __device__ void operator()(int64_t row, int c, float (&acc)[1]) const {
    acc[0] += cuda::to_f(dout[row * C + c]) * cuda::to_f(inp[row * C + c]) * rstd[row];
  }
};

template <typename T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int64_t N,
                      int C) {
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  rmsnorm_backward_input_kernel<T><<<blocks, kRowsPerBlock * kWarp>>>(dinp, dout, inp, w, rstd, N, C);
  AQ_CUDA_LAUNCH_CHECK();
  cuda::column_sums<1>({{dw}}, N, C, RmsNormWeightTerm<T>{dout, inp, rstd, C});
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename RmsNorm<T>::Forward>("rmsnorm_forward", Device::CUDA, dtype_of<T>(), &rmsnorm_forward<T>);
  r.add<typename RmsNorm<T>::ResidualForward>("residual_rmsnorm_forward", Device::CUDA, dtype_of<T>(),
                                              &residual_rmsnorm_forward<T>);
  r.add<typename RmsNorm<T>::Backward>("rmsnorm_backward", Device::CUDA, dtype_of<T>(), &rmsnorm_backward<T>);
}

}  // namespace

void register_rmsnorm_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
