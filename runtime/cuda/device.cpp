#include "runtime/cuda/device.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "runtime/cuda/cuda_check.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace aq::cuda {

[[noreturn]] void fail_call(const char* call, cudaError_t err, const char* file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  fail(str("CUDA call ", call, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ", file, ":",
           line, " on host ", host_name(), ", rank ", log_rank(), ", device ", dev));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

DeviceInfo select_device(int local_rank, int local_size) {
  const int n = device_count();
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  AQ_CHECK(n > 0, "a CUDA rank (--device cuda, or a centre's =cuda in --centre-device): no CUDA device is visible ",
           "on host ", host_name(), " (CUDA_VISIBLE_DEVICES=", visible ? visible : "<unset>", "); use --device cpu ",
           "or NAME=cpu for that centre");
  AQ_CHECK(local_rank < n, "host ", host_name(), " runs ", local_size, " GPU ranks but only ", n,
           " CUDA device(s) are visible (CUDA_VISIBLE_DEVICES=", visible ? visible : "<unset>", "): local rank ",
           local_rank, " has no GPU. Launch at most ", n, " GPU ranks per node (mpirun --map-by ppr:", n,
           ":node; ranks of CPU centres do not count) or make more devices visible");
  AQ_CUDA_CHECK(cudaSetDevice(local_rank));
  cudaDeviceProp prop{};
  AQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, local_rank));
  DeviceInfo d;
  d.index = local_rank;
  d.name = prop.name;
  d.cc_major = prop.major;
  d.cc_minor = prop.minor;
  d.total_memory = prop.totalGlobalMem;
  cudaRuntimeGetVersion(&d.runtime_version);
  cudaDriverGetVersion(&d.driver_version);
  return d;
}

int current_device() {
  int d = 0;
  AQ_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

std::string describe(const DeviceInfo& d) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s (sm_%d%d, %.1f GiB, CUDA runtime %d.%d, driver %d.%d)", d.name.c_str(),
                d.cc_major, d.cc_minor, static_cast<double>(d.total_memory) / (1 << 30), d.runtime_version / 1000,
                d.runtime_version % 1000 / 10, d.driver_version / 1000, d.driver_version % 1000 / 10);
  return buf;
}

}  // namespace aq::cuda
