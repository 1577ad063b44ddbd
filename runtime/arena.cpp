#include "runtime/arena.h"

#include "runtime/memory.h"

namespace aq {

void ArenaFree::operator()(char* p) const { device_free(device, p); }

Arena::Arena(size_t capacity_bytes, Device device)
    : base_(static_cast<char*>(device_alloc(device, capacity_bytes)), ArenaFree{device}), capacity_(capacity_bytes) {}

}  // namespace aq
