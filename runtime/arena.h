// arena.h — one allocation, planned up front, carved into aligned blocks.
//
// The training step must not call malloc: every activation and scratch buffer is laid out once. Layout code is
// written once and run twice — first against a planning arena (no memory, it only adds up sizes), then against
// a real arena of exactly that size — so the plan and the allocation cannot drift apart.
#pragma once

#include <cstddef>
#include <memory>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace aq {

// Returns an arena's memory to the device it came from.
struct ArenaFree {
  Device device = Device::CPU;
  void operator()(char* p) const;
};

class Arena {
 public:
  static constexpr size_t kAlign = 64;  // one cache line, and a full AVX-512 vector

  static Arena planner() { return Arena(); }   // counts bytes, hands out nullptr
  // Owns capacity_bytes of memory on `device`.
  explicit Arena(size_t capacity_bytes, Device device = Device::CPU);

  template <typename T>
  T* take(size_t count) {
    size_t bytes = (count * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    AQ_ASSERT(planning_ || used_ + bytes <= capacity_, "arena overflow: need ", used_ + bytes, " of ", capacity_);
    T* p = planning_ ? nullptr : reinterpret_cast<T*>(base_.get() + used_);
    used_ += bytes;
    return p;
  }
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }

 private:
  Arena() : planning_(true) {}
  bool planning_ = false;
  std::unique_ptr<char, ArenaFree> base_;
  size_t capacity_ = 0;
  size_t used_ = 0;
};

}  // namespace aq
