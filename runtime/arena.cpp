#include "runtime/arena.h"

#include <cstdlib>

namespace aq {

void Arena::Free::operator()(char* p) const { std::free(p); }

Arena::Arena(size_t capacity_bytes) : capacity_(capacity_bytes) {
  size_t rounded = (capacity_bytes + kAlign - 1) / kAlign * kAlign;
  if (rounded == 0) rounded = kAlign;
  char* p = static_cast<char*>(std::aligned_alloc(kAlign, rounded));
  AQ_CHECK(p != nullptr, "out of memory: could not allocate ", capacity_bytes / (1 << 20),
           " MiB; lower --batch or --seq, or use a smaller model");
  base_.reset(p);
}

}  // namespace aq
