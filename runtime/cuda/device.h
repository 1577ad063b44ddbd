// device.h — CUDA devices: how many are visible, which one a rank uses, and what it is.
//
// A rank uses the GPU numbered by its rank among the GPU ranks of its node (its local rank from MPI, unless
// CPU centres share the node: their ranks take no GPU), so ranks never share a GPU by accident. More GPU ranks
// on a node than visible GPUs is an error that names the host, the counts, CUDA_VISIBLE_DEVICES and the
// mpirun flag that fixes it.
#pragma once

#include <cstddef>
#include <string>

namespace aq::cuda {

// Visible CUDA devices; 0 when there is no driver or no device (never throws).
int device_count();

struct DeviceInfo {
  int index = -1;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_memory = 0;
  int runtime_version = 0, driver_version = 0;
};

// Selects (cudaSetDevice) the device of GPU rank `local_rank` of the node's `local_size` and describes it.
DeviceInfo select_device(int local_rank, int local_size);
int current_device();                       // the device cudaSetDevice selected
std::string describe(const DeviceInfo& d);  // "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB, CUDA runtime 13.0, driver 13.0)"

}  // namespace aq::cuda
