// cuda_check.h — CUDA error checks that say where and what: host, rank, device, file:line and the failing call.
//
// Only included by CUDA code (built when the CUDA toolkit is present).
#pragma once

#include <cuda_runtime.h>

namespace aq::cuda {

[[noreturn]] void fail_call(const char* call, cudaError_t err, const char* file, int line);

}  // namespace aq::cuda

#define AQ_CUDA_CHECK(call)                                                                 \
  do {                                                                                      \
    cudaError_t aq_err_ = (call);                                                           \
    if (aq_err_ != cudaSuccess) ::aq::cuda::fail_call(#call, aq_err_, __FILE__, __LINE__); \
  } while (0)
