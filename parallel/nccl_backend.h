// nccl_backend.h — the NCCL backend: collectives on GPU buffers, behind the same Backend interface as MPI.
//
// One NCCL communicator per process group, created from a unique id that the group's rank 0 broadcasts over
// MPI. Collectives run on a dedicated communication stream, gated by an event recorded on the compute stream
// (so they start only after the kernels that produced their input) and followed by an event that Work::test /
// wait query. wait() also polls ncclCommGetAsyncError; on a timeout or an asynchronous NCCL error it reports
// the op, its sequence number and the rank, aborts the communicator (so peers do not hang) and ends the job.
//
// Rule: every rank of a group calls its collectives in the same order (NCCL hangs otherwise).
// Known limits: with tp > 1 and dp > 1 two communicators share a GPU (TP all-reduces and in-flight DP buckets);
// NCCL documents that a device-wide synchronisation meanwhile (e.g. the caching allocator's cudaFree after an
// out-of-memory retry) can deadlock them. Allocator blocks handed to a collective are recorded for the
// communication stream (CachingAllocator::record_stream), so they are not reused while NCCL still uses them. A Work destroyed during stack unwinding still waits (up to the
// timeout) before the job ends.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <string>

#include "parallel/backend.h"

namespace aq {

class NcclBackend final : public Backend {
 public:
  // `comm` is an MPI communicator over the same ranks (used once, for the unique id); the current CUDA device
  // must already be selected. compute_stream is where the producing kernels run (0: the legacy default stream).
  NcclBackend(MPI_Comm comm, std::string name, double default_timeout_s, cudaStream_t compute_stream = nullptr);
  ~NcclBackend() override;
  NcclBackend(const NcclBackend&) = delete;
  NcclBackend& operator=(const NcclBackend&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override;

  WorkPtr all_reduce(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) override;
  WorkPtr reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                         const CollectiveOptions& opts) override;
  WorkPtr all_gather(const void* send, void* recv, int64_t send_count, DType dtype,
                     const CollectiveOptions& opts) override;
  // Uneven forms as NCCL groups: one ncclReduce (ncclBroadcast) per rank's block.
  WorkPtr reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                           const CollectiveOptions& opts) override;
  WorkPtr all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                       const CollectiveOptions& opts) override;
  WorkPtr broadcast(void* data, int64_t count, DType dtype, int root, const CollectiveOptions& opts) override;
  WorkPtr send(const void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) override;
  WorkPtr recv(void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) override;
  WorkPtr barrier(const CollectiveOptions& opts) override;

  // Reports a failed or timed-out operation, aborts the communicator and ends the job. Used by NcclWork.
  [[noreturn]] void fail_op(const std::string& op, const std::string& name, uint64_t seq, const std::string& why);
  double default_timeout_s() const { return default_timeout_s_; }
  ncclComm_t comm() const { return comm_; }
  cudaStream_t compute_stream() const { return compute_; }

 private:
  // The communication stream waits for the work already queued on the compute stream; the buffers a and b
  // (when they are blocks of the caching allocator) are marked as used by the communication stream.
  void gate(const void* a = nullptr, const void* b = nullptr);
  WorkPtr finish(const char* op, const CollectiveOptions& opts, uint64_t seq);

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr, compute_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  std::string name_;
  double default_timeout_s_;
  int rank_ = 0, size_ = 1, device_ = -1;
  uint64_t seq_ = 0, p2p_seq_ = 0;
  float* barrier_word_ = nullptr;
};

}  // namespace aq
