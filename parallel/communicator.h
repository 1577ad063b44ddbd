// communicator.h — the seam between the training step and collective communication.
//
// The trainer calls all_reduce_mean on the flat gradient buffer after backward and before the optimizer: this
// is where gradient reduction happens (grep "all_reduce_mean(" to find the call site). LocalCommunicator is the
// world of one (a plain single-process run): every collective is the identity. The MPI and NCCL backends,
// process groups and the (tp, dp) mesh implement this interface in later work.
//
// Rule for every implementation: all ranks must call collectives in the same order with the same sizes.
#pragma once

#include <cstdint>
#include <string>

namespace aq {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string describe() const = 0;
  // In-place mean over ranks of n values.
  virtual void all_reduce_mean(float* data, int64_t n) = 0;
  virtual void all_reduce_mean(double* data, int64_t n) = 0;
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string describe() const override { return "local (single process)"; }
  void all_reduce_mean(float*, int64_t) override {}
  void all_reduce_mean(double*, int64_t) override {}
};

}  // namespace aq
