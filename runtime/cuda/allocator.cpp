#include "runtime/cuda/allocator.h"

#include <cuda_runtime.h>

#include "runtime/cuda/cuda_check.h"
#include "runtime/error.h"

namespace aq::cuda {

CachingAllocator& CachingAllocator::instance() {
  static CachingAllocator a;
  return a;
}

size_t CachingAllocator::round_up(size_t bytes) {
  const size_t unit = bytes < (1u << 20) ? 512 : (2u << 20);
  return (bytes + unit - 1) / unit * unit;
}

void* CachingAllocator::allocate(size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  void* p = nullptr;
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    cached_ -= size;
  } else {
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation && cached_ > 0) {  // give the cache back and try once more
      cudaGetLastError();
      release_cache();
      err = cudaMalloc(&p, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail(str("out of GPU memory allocating ", size >> 20, " MiB (", in_use_ >> 20, " MiB in use by Aqueduct, ",
               free_b >> 20, " MiB free of ", total_b >> 20, "); lower --batch or --seq, or use --zero 1 / more --tp"));
    }
    AQ_CUDA_CHECK(err);
    ++mallocs_;
  }
  sizes_[p] = size;
  in_use_ += size;
  if (in_use_ > peak_) peak_ = in_use_;
  return p;
}

void CachingAllocator::release(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = sizes_.find(p);
  AQ_ASSERT(it != sizes_.end(), "release of a pointer the allocator did not hand out");
  free_[it->second].push_back(p);
  in_use_ -= it->second;
  cached_ += it->second;
  sizes_.erase(it);
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cache();
}

void CachingAllocator::release_cache() {
  for (auto& [size, blocks] : free_)
    for (void* p : blocks) cudaFree(p);
  free_.clear();
  cached_ = 0;
}

}  // namespace aq::cuda
