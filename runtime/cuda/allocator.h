// allocator.h — a caching device allocator: cudaMalloc only on a cache miss, never inside the step loop once
// the first step has sized everything. Blocks are rounded up (512 B under 1 MiB, 2 MiB above) and kept in
// per-size free lists when freed; they go back to the driver only when a cudaMalloc runs out of memory. One
// allocator per process; a mutex makes it safe to call from several host threads.
//
// Streams: a released block is reused at once, which is correct for work on the compute stream (the legacy
// default stream orders it). A block that another stream also uses (NCCL's communication stream) is marked
// with record_stream(); when it is released, an event is recorded on each such stream and the block returns
// to the free lists only once those events have completed — the rule PyTorch's caching allocator follows.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

struct CUstream_st;  // cudaStream_t and cudaEvent_t are pointers to these (cuda_runtime.h)
struct CUevent_st;

namespace aq::cuda {

class CachingAllocator {
 public:
  static CachingAllocator& instance();
  void* allocate(size_t bytes);
  void release(void* p) noexcept;  // back to the cache (at once, or when the streams recorded for it are done)
  // Marks that `stream` uses the block containing p. Pointers outside the allocator's live blocks (views
  // inside an arena, which lives as long as its model) are ignored.
  void record_stream(void* p, CUstream_st* stream);
  size_t peak_bytes() const { return peak_; }
  size_t cached_bytes() const { return cached_; }    // free blocks ready for reuse
  size_t pending_bytes() const { return pending_bytes_; }  // released blocks waiting for other streams
  size_t driver_allocations() const { return mallocs_; }  // cudaMalloc calls so far

 private:
  static size_t round_up(size_t bytes);
  void release_cache();    // with the mutex held
  // With the mutex held: blocks whose streams are done go back to the free lists (wait: block until all are).
  void reclaim_pending(bool wait);
  struct Pending {
    void* block;
    size_t size;
    std::vector<CUevent_st*> events;  // one per stream that used the block
  };
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;  // rounded size → blocks
  std::map<void*, size_t> sizes_;              // live block → rounded size (ordered: record_stream finds
                                               // the block containing a pointer)
  std::unordered_map<void*, std::vector<CUstream_st*>> streams_;  // live block → other streams using it
  std::vector<Pending> pending_;
  std::vector<CUevent_st*> event_pool_;
  size_t in_use_ = 0, peak_ = 0, cached_ = 0, pending_bytes_ = 0, mallocs_ = 0;
};

}  // namespace aq::cuda
