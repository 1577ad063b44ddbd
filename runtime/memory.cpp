#include "runtime/memory.h"

#include <cstdlib>
#include <cstring>

#include "runtime/error.h"
#ifdef AQ_HAVE_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda/allocator.h"
#include "runtime/cuda/cuda_check.h"
#endif

namespace aq {

bool cuda_built() {
#ifdef AQ_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

#ifndef AQ_HAVE_CUDA
namespace {
[[noreturn]] void no_cuda() {
  fail("this build has no CUDA backend (the CUDA toolkit was not found at configure time); use --device cpu or "
       "rebuild with -DAQ_CUDA=ON");
}
}  // namespace
#endif

void* device_alloc(Device d, size_t bytes) {
  if (d == Device::CPU) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    AQ_CHECK(p != nullptr, "out of memory allocating ", bytes >> 20, " MiB; lower --batch or --seq, or use a smaller "
             "model");
    return p;
  }
#ifdef AQ_HAVE_CUDA
  return cuda::CachingAllocator::instance().allocate(bytes);
#else
  no_cuda();
#endif
}

void device_free(Device d, void* p) {
  if (d == Device::CPU) {
    std::free(p);
    return;
  }
#ifdef AQ_HAVE_CUDA
  cuda::CachingAllocator::instance().release(p);
#endif
}

void device_zero(Device d, void* p, size_t bytes) {
  if (bytes == 0) return;
  if (d == Device::CPU) {
    std::memset(p, 0, bytes);
    return;
  }
#ifdef AQ_HAVE_CUDA
  AQ_CUDA_CHECK(cudaMemset(p, 0, bytes));
#else
  no_cuda();
#endif
}

size_t device_peak_bytes(Device d) {
#ifdef AQ_HAVE_CUDA
  if (d == Device::CUDA) return cuda::CachingAllocator::instance().peak_bytes();
#endif
  (void)d;
  return 0;
}

size_t device_driver_allocations(Device d) {
#ifdef AQ_HAVE_CUDA
  if (d == Device::CUDA) return cuda::CachingAllocator::instance().driver_allocations();
#endif
  (void)d;
  return 0;
}

void device_synchronize(Device d) {
  if (d == Device::CPU) return;
#ifdef AQ_HAVE_CUDA
  AQ_CUDA_CHECK(cudaDeviceSynchronize());
#endif
}

void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  if (dst_dev == Device::CPU && src_dev == Device::CPU) {
    std::memmove(dst, src, bytes);
    return;
  }
#ifdef AQ_HAVE_CUDA
  AQ_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
#else
  no_cuda();
#endif
}

}  // namespace aq
