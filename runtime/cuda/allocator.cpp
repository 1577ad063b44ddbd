#include "runtime/cuda/allocator.h"

#include <cuda_runtime.h>

#include "runtime/cuda/cuda_check.h"
#include "runtime/error.h"
#include "runtime/log.h"

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
  if (!pending_.empty()) reclaim_pending(false);
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  void* p = nullptr;
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    cached_ -= size;
  } else {
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation && (cached_ > 0 || !pending_.empty())) {
      // Give the cache back (waiting for blocks other streams still use) and try once more.
      cudaGetLastError();
      reclaim_pending(true);
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

// Called from destructors (DeviceBuffer, DeviceScratch), so it reports problems instead of throwing.
void CachingAllocator::release(void* p) noexcept {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = sizes_.find(p);
  if (it == sizes_.end()) {
    log_error("aq: internal error: release of a device pointer the caching allocator did not hand out (ignored)");
    return;
  }
  const size_t size = it->second;
  in_use_ -= size;
  sizes_.erase(it);
  auto st = streams_.find(p);
  if (st == streams_.end()) {
    free_[size].push_back(p);
    cached_ += size;
    return;
  }
  // Work queued on the other streams may still read or write the block: its reuse waits for that work.
  Pending pending{p, size, {}};
  bool ok = true;
  for (CUstream_st* s : st->second) {
    cudaEvent_t ev = nullptr;
    if (!event_pool_.empty()) {
      ev = event_pool_.back();
      event_pool_.pop_back();
    } else if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
      ok = false;
      break;
    }
    pending.events.push_back(ev);
    if (cudaEventRecord(ev, s) != cudaSuccess) {
      ok = false;
      break;
    }
  }
  streams_.erase(st);
  if (!ok) {
    // Without an event we cannot know when the block is free: keep it out of circulation rather than risk it.
    const cudaError_t e = cudaGetLastError();
    log_error(str("aq: warning: cannot record a stream event for a ", size >> 10, " KiB device block (",
                  cudaGetErrorString(e), "); the block is not reused"));
    for (cudaEvent_t ev : pending.events) cudaEventDestroy(ev);
    return;
  }
  pending_bytes_ += size;
  pending_.push_back(std::move(pending));
}

void CachingAllocator::record_stream(void* p, CUstream_st* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  // The block containing p: collectives are often handed a view inside a scratch block.
  auto it = sizes_.upper_bound(p);
  if (it == sizes_.begin()) return;
  --it;
  if (static_cast<char*>(p) >= static_cast<char*>(it->first) + it->second) return;  // not ours (an arena view)
  auto& list = streams_[it->first];
  for (CUstream_st* s : list)
    if (s == stream) return;
  list.push_back(stream);
}

void CachingAllocator::reclaim_pending(bool wait) {
  size_t kept = 0;
  for (size_t i = 0; i < pending_.size(); ++i) {
    Pending& b = pending_[i];
    bool done = true;
    for (cudaEvent_t ev : b.events) {
      const cudaError_t q = wait ? cudaEventSynchronize(ev) : cudaEventQuery(ev);
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
      cached_ += b.size;
      pending_bytes_ -= b.size;
    } else {
      if (kept != i) pending_[kept] = std::move(b);
      ++kept;
    }
  }
  pending_.resize(kept);
}

void CachingAllocator::release_cache() {
  for (auto& [size, blocks] : free_)
    for (void* p : blocks) cudaFree(p);
  free_.clear();
  cached_ = 0;
}

}  // namespace aq::cuda
