// staged_backend.h — collectives on GPU buffers through a host backend (MPI), by copying through host memory.
//
// Used when NCCL cannot be: a build without NCCL, or several ranks sharing one GPU (NCCL refuses duplicate
// devices in a communicator). Each call copies the device data to a host buffer, runs the host collective,
// waits, and copies the result back, so its Work is complete on return: correct and simple, with no overlap.
// send() returns only once the message is delivered, so a ring of sends must post its receives from another
// thread, or keep messages small enough for MPI's eager protocol.
// MPI has no bf16 type: bf16 reductions are widened to fp32 in the host buffer, reduced, and rounded back
// (which is also what NCCL does inside its bf16 reductions).
#pragma once

#include <string>
#include <vector>

#include "parallel/backend.h"

namespace aq {

class StagedBackend final : public Backend {
 public:
  StagedBackend(Backend& host, Device device) : host_(host), device_(device) {}

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  std::string describe() const override { return host_.describe() + " staged through host memory"; }

  WorkPtr all_reduce(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) override;
  WorkPtr reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                         const CollectiveOptions& opts) override;
  WorkPtr all_gather(const void* send, void* recv, int64_t send_count, DType dtype,
                     const CollectiveOptions& opts) override;
  WorkPtr reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                           const CollectiveOptions& opts) override;
  WorkPtr all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                       const CollectiveOptions& opts) override;
  WorkPtr broadcast(void* data, int64_t count, DType dtype, int root, const CollectiveOptions& opts) override;
  WorkPtr send(const void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) override;
  WorkPtr recv(void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) override;
  WorkPtr barrier(const CollectiveOptions& opts) override { return host_.barrier(opts); }

 private:
  char* stage(size_t bytes);
  Backend& host_;
  Device device_;
  std::vector<char> a_, b_;  // host staging buffers, grown once
  std::vector<float> wide_;  // bf16 reductions, widened
};

}  // namespace aq
