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
  if (!pending_.empty()) reclaim_pending();
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
  const size_t size = it->second;
  in_use_ -= size;
  cached_ += size;
  sizes_.erase(it);
  auto st = streams_.find(p);
  if (st == streams_.end()) {
    free_[size].push_back(p);
    return;
  }
  // Work queued on the other streams may still read or write the block: reuse waits for it.
  Pending pending{p, size, {}};
  for (CUstream_st* s : st->second) {
    cudaEvent_t ev = nullptr;
    if (!event_pool_.empty()) {
      ev = event_pool_.back();
      event_pool_.pop_back();
    } else {
      AQ_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    }
    AQ_CUDA_CHECK(cudaEventRecord(ev, s));
    pending.events.push_back(ev);
  }
  streams_.erase(st);
  pending_.push_back(std::move(pending));
}

void CachingAllocator::record_stream(void* p, CUstream_st* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!sizes_.count(p)) return;
  auto& list = streams_[p];
  for (CUstream_st* s : list)
    if (s == stream) return;
  list.push_back(stream);
}

void CachingAllocator::reclaim_pending() {
  size_t kept = 0;
  for (Pending& b : pending_) {
    bool done = true;
    for (cudaEvent_t ev : b.events) {
      const cudaError_t q = cudaEventQuery(ev);
      if (q == cudaErrorNotReady) {
        cudaGetLastError();  // not an error: clear it
        done = false;
        break;
      }
      AQ_CUDA_CHECK(q);
    }
    if (done) {
      for (cudaEvent_t ev : b.events) event_pool_.push_back(ev);
      free_[b.size].push_back(b.block);
    } else {
      pending_[kept++] = std::move(b);
    }
  }
  pending_.resize(kept);
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
