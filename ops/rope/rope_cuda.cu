// rope_cuda.cu — rotary embedding on CUDA, in place, float and bf16 (rotation in fp32).
//
// One block per (batch, position) row: the block first evaluates the row's hs/2 cos/sin values into shared
// memory, then rotates every pair of every head of the row with them. inv_freq is computed on the host in
// double, exactly as rope_cpu.cpp does, and passed by value; the angle pos·inv_freq and its cos/sin are taken
// in double on the device (hs/2 sincos per row, shared by all the row's heads) and rounded to fp32, so the
// table equals the CPU's (see rope.h for why double).
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/rope/rope.h"

namespace aq::ops {
namespace {

constexpr int kMaxRopeHead = 512;  // inv_freq travels as a kernel argument: hs/2 doubles, 2 KiB at most
constexpr int kRopeThreads = 128;

struct InvFreq {
  double v[kMaxRopeHead / 2];
};

// x (B·T_ rows, stride): heads 0 … n_heads−1 of each row rotated by sign·angle; grid B·T_, hs floats of
// dynamic shared memory (cos then sin of the row's hs/2 angles)
template <typename T>
__global__ void rope_kernel(T* x, int T_, int stride, int n_heads, int hs, int pos0, InvFreq f, float sign) {
  extern __shared__ float cs[];
  const int half = hs / 2;
  const int64_t row = blockIdx.x;
  const int t = static_cast<int>(row % T_);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double s, c;
    sincos(static_cast<double>(pos0 + t) * f.v[i], &s, &c);
    cs[i] = static_cast<float>(c);
    cs[half + i] = sign * static_cast<float>(s);
  }
  __syncthreads();
  T* xr = x + row * stride;
  for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    T* p = xr + h * hs + i;
    const float a = cuda::to_f(p[0]), b = cuda::to_f(p[half]), c = cs[i], s = cs[half + i];
    p[0] = cuda::from_f<T>(a * c - b * s);
    p[half] = cuda::from_f<T>(b * c + a * s);
  }
}

template <typename T>
void rope_rotate(T* x, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta, float sign) {
  check_rope_shape(B, T_, stride, n_heads, hs, pos0, theta);
  AQ_CHECK(hs <= kMaxRopeHead, "rope: head size ", hs, " exceeds the CUDA kernel's limit of ", kMaxRopeHead);
  if (B == 0 || T_ == 0 || n_heads == 0) return;
  InvFreq f;
  for (int i = 0; i < hs / 2; ++i) f.v[i] = std::pow(theta, -2.0 * i / hs);
  const unsigned rows = static_cast<unsigned>(static_cast<int64_t>(B) * T_);
  rope_kernel<T><<<rows, kRopeThreads, hs * sizeof(float)>>>(x, T_, stride, n_heads, hs, pos0, f, sign);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void rope_forward(T* x, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta) {
  rope_rotate(x, B, T_, stride, n_heads, hs, pos0, theta, 1.0f);
}

template <typename T>
void rope_backward(T* dx, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta) {
  rope_rotate(dx, B, T_, stride, n_heads, hs, pos0, theta, -1.0f);
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Rope<T>::Forward>("rope_forward", Device::CUDA, dtype_of<T>(), &rope_forward<T>);
  r.add<typename Rope<T>::Backward>("rope_backward", Device::CUDA, dtype_of<T>(), &rope_backward<T>);
}

}  // namespace

void register_rope_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
