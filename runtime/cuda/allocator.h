// allocator.h — a caching device allocator: cudaMalloc only on a cache miss, never inside the step loop once
// the first step has sized everything. Blocks are rounded up (512 B under 1 MiB, 2 MiB above) and kept in
// per-size free lists when freed; empty_cache() returns them to the driver. One allocator per process; a mutex
// makes it safe to call from several host threads. Blocks are reused at once, which is correct while all work
// runs on one stream (the legacy default stream); a second stream touching them needs an event per block.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace aq::cuda {

class CachingAllocator {
 public:
  static CachingAllocator& instance();
  void* allocate(size_t bytes);
  void release(void* p);  // back to the cache
  void empty_cache();
  size_t bytes_in_use() const { return in_use_; }
  size_t peak_bytes() const { return peak_; }
  size_t cached_bytes() const { return cached_; }
  size_t driver_allocations() const { return mallocs_; }  // cudaMalloc calls so far

 private:
  static size_t round_up(size_t bytes);
  void release_cache();  // with the mutex held
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;  // rounded size → blocks
  std::unordered_map<void*, size_t> sizes_;    // live block → rounded size
  size_t in_use_ = 0, peak_ = 0, cached_ = 0, mallocs_ = 0;
};

}  // namespace aq::cuda
