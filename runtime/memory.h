// memory.h — memory on a device: allocate, zero, and copy between host and device.
//
// The model and the trainer hold their buffers through DeviceBuffer so one code path serves the CPU and CUDA.
// CPU memory is 64-byte aligned host memory; CUDA memory comes from the caching allocator. Asking for CUDA in a
// build without the toolkit is an error that says so.
#pragma once

#include <cstddef>
#include <utility>

#include "runtime/tensor.h"

namespace aq {

void* device_alloc(Device d, size_t bytes);
void device_free(Device d, void* p);
void device_zero(Device d, void* p, size_t bytes);
// Copies between any two places (host ↔ device, or within one); synchronous.
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
bool cuda_built();  // whether this build has the CUDA backend
void device_synchronize(Device d);  // waits for the device's queued work (timing); no-op on the CPU
// Device memory statistics of this process (CUDA: the caching allocator's; 0 on the CPU): peak bytes handed
// out, and driver allocations (cudaMalloc calls) so far — constant once the step loop is warm.
size_t device_peak_bytes(Device d);
size_t device_driver_allocations(Device d);

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device d, size_t n) : device_(d), n_(n), p_(static_cast<T*>(device_alloc(d, n * sizeof(T)))) {
    device_zero(d, p_, n * sizeof(T));
  }
  // Without the zero fill, for a buffer the next operation overwrites whole (scratch on a hot path).
  struct Uninitialized {};
  DeviceBuffer(Device d, size_t n, Uninitialized)
      : device_(d), n_(n), p_(static_cast<T*>(device_alloc(d, n * sizeof(T)))) {}
  ~DeviceBuffer() {
    if (p_) device_free(device_, p_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(device_, o.device_);
    std::swap(n_, o.n_);
    std::swap(p_, o.p_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  Device device() const { return device_; }

 private:
  Device device_ = Device::CPU;
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace aq
