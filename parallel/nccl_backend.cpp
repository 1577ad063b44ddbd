#include "parallel/nccl_backend.h"

#include "parallel/mpi_backend.h"
#include "runtime/cuda/allocator.h"
#include "runtime/cuda/cuda_check.h"
#include "runtime/log.h"
#include "runtime/sysinfo.h"

namespace aq {
namespace {

#define AQ_NCCL_CHECK(call)                                                                              \
  do {                                                                                                   \
    ncclResult_t r_ = (call);                                                                            \
    AQ_CHECK(r_ == ncclSuccess, "NCCL call ", #call, " failed: ", ncclGetErrorString(r_), " at ", __FILE__, \
             ":", __LINE__, " on host ", host_name(), ", rank ", log_rank());                             \
  } while (0)

ncclDataType_t nccl_dtype(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::U16: break;
  }
  fail(str("NCCL has no reduction for dtype ", dtype_name(t)));
}

// Types for operations that only move data (no arithmetic): 16-bit integers travel as 16-bit floats.
ncclDataType_t movement_dtype(DType t) { return nccl_dtype(t == DType::U16 ? DType::F16 : t); }

class NcclWork final : public Work {
 public:
  NcclWork(NcclBackend* backend, cudaEvent_t done, const char* op, const CollectiveOptions& opts, uint64_t seq)
      : Work(seq, opts.name, op, opts.timeout_s), backend_(backend), done_(done) {}
  ~NcclWork() override {
    if (done_) {
      wait(-1);
      cudaEventDestroy(done_);
    }
  }

  bool test() override {
    if (completed_ms_ > 0) return true;
    const cudaError_t q = cudaEventQuery(done_);
    if (q == cudaErrorNotReady) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(backend_->comm(), &async);
      if (async != ncclSuccess && async != ncclInProgress)
        backend_->fail_op(op_, name_, seq_, str("asynchronous NCCL error: ", ncclGetErrorString(async)));
      return false;
    }
    AQ_CUDA_CHECK(q);
    completed_ms_ = steady_ms();
    // Kernels queued after this point on the compute stream see the result.
    AQ_CUDA_CHECK(cudaStreamWaitEvent(backend_->compute_stream(), done_, 0));
    return true;
  }

  void wait(double timeout_s) override {
    poll_until_done(timeout_s, backend_->default_timeout_s(), [&](double waited) {
      backend_->fail_op(op_, name_, seq_, str("timed out after ", static_cast<int>(waited), " s"));
    });
  }

 private:
  NcclBackend* backend_;
  cudaEvent_t done_;
};

}  // namespace

NcclBackend::NcclBackend(MPI_Comm comm, std::string name, double default_timeout_s, cudaStream_t compute_stream)
    : compute_(compute_stream), name_(std::move(name)), default_timeout_s_(default_timeout_s) {
  MPI_Comm_rank(comm, &rank_);
  MPI_Comm_size(comm, &size_);
  AQ_CUDA_CHECK(cudaGetDevice(&device_));
  ncclUniqueId id;
  if (rank_ == 0) AQ_NCCL_CHECK(ncclGetUniqueId(&id));
  check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm), "MPI_Bcast (NCCL unique id)");
  // Collectives are only enqueued here and waited for by polling events, so no thread ever blocks inside
  // NCCL and ncclCommAbort can always end a hung collective.
  AQ_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
  AQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  AQ_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  AQ_CUDA_CHECK(cudaMalloc(&barrier_word_, sizeof(float)));
}

NcclBackend::~NcclBackend() {
  if (comm_) ncclCommDestroy(comm_);
  if (ready_) cudaEventDestroy(ready_);
  if (stream_) cudaStreamDestroy(stream_);
  if (barrier_word_) cudaFree(barrier_word_);
}

std::string NcclBackend::describe() const {
  int v = 0;
  ncclGetVersion(&v);
  return str("NCCL ", v / 10000, ".", (v / 100) % 100, ".", v % 100, " ", name_, " group of ", size_, " (device ",
             device_, ")");
}

[[noreturn]] void NcclBackend::fail_op(const std::string& op, const std::string& name, uint64_t seq,
                                       const std::string& why) {
  const std::string what = str(op, " \"", name, "\" (", name_, " group, sequence number ", seq, ") on rank ",
                               log_rank(), " (host ", host_name(), ", device ", device_, "): ", why);
  log_error(str("aq: error: ", what, ". Aborting the NCCL communicator and ending the job"));
  ncclCommAbort(comm_);
  comm_ = nullptr;
  MPI_Abort(MPI_COMM_WORLD, 3);
  throw CommError(what);
}

void NcclBackend::gate(const void* a, const void* b) {
  AQ_CUDA_CHECK(cudaEventRecord(ready_, compute_));
  AQ_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  // Blocks of the caching allocator used here must not be reused before this stream is done with them.
  for (const void* p : {a, b})
    if (p) cuda::CachingAllocator::instance().record_stream(const_cast<void*>(p), stream_);
}

WorkPtr NcclBackend::finish(const char* op, const CollectiveOptions& opts, uint64_t seq) {
  cudaEvent_t done;
  AQ_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  AQ_CUDA_CHECK(cudaEventRecord(done, stream_));
  return std::make_shared<NcclWork>(this, done, op, opts, seq);
}

WorkPtr NcclBackend::all_reduce(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) {
  gate(data);
  AQ_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_dtype(dtype),
                              opts.op == ReduceOp::Sum ? ncclSum : ncclMax, comm_, stream_));
  return finish("all_reduce", opts, ++seq_);
}

WorkPtr NcclBackend::reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                                    const CollectiveOptions& opts) {
  AQ_ASSERT(send != recv, "reduce_scatter needs separate send and receive buffers");
  gate(send, recv);
  AQ_NCCL_CHECK(ncclReduceScatter(send, recv, static_cast<size_t>(recv_count), nccl_dtype(dtype),
                                  opts.op == ReduceOp::Sum ? ncclSum : ncclMax, comm_, stream_));
  return finish("reduce_scatter", opts, ++seq_);
}

WorkPtr NcclBackend::all_gather(const void* send, void* recv, int64_t send_count, DType dtype,
                                const CollectiveOptions& opts) {
  gate(send, recv);
  // NCCL's in-place form is exactly ours: send == recv + rank·send_count.
  AQ_NCCL_CHECK(ncclAllGather(send, recv, static_cast<size_t>(send_count), movement_dtype(dtype), comm_, stream_));
  return finish("all_gather", opts, ++seq_);
}

WorkPtr NcclBackend::reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                                      const CollectiveOptions& opts) {
  AQ_ASSERT(send != recv, "reduce_scatter_v needs separate send and receive buffers");
  gate(send, recv);
  const size_t es = dtype_size(dtype);
  size_t off = 0;
  AQ_NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size_; ++r) {
    // recvbuff is only written on the root; every rank passes its own block's destination.
    AQ_NCCL_CHECK(ncclReduce(static_cast<const char*>(send) + off * es, recv, static_cast<size_t>(counts[r]),
                             nccl_dtype(dtype), opts.op == ReduceOp::Sum ? ncclSum : ncclMax, r, comm_, stream_));
    off += static_cast<size_t>(counts[r]);
  }
  AQ_NCCL_CHECK(ncclGroupEnd());
  return finish("reduce_scatter_v", opts, ++seq_);
}

WorkPtr NcclBackend::all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                                  const CollectiveOptions& opts) {
  gate(send, recv);
  const size_t es = dtype_size(dtype);
  size_t off = 0;
  AQ_NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size_; ++r) {
    char* block = static_cast<char*>(recv) + off * es;
    AQ_NCCL_CHECK(ncclBroadcast(r == rank_ ? send : block, block, static_cast<size_t>(counts[r]),
                                movement_dtype(dtype), r, comm_, stream_));
    off += static_cast<size_t>(counts[r]);
  }
  AQ_NCCL_CHECK(ncclGroupEnd());
  return finish("all_gather_v", opts, ++seq_);
}

WorkPtr NcclBackend::broadcast(void* data, int64_t count, DType dtype, int root, const CollectiveOptions& opts) {
  gate(data);
  AQ_NCCL_CHECK(ncclBroadcast(data, data, static_cast<size_t>(count),
                              movement_dtype(dtype), root, comm_, stream_));
  return finish("broadcast", opts, ++seq_);
}

WorkPtr NcclBackend::send(const void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) {
  gate(data);
  AQ_NCCL_CHECK(ncclSend(data, static_cast<size_t>(count), movement_dtype(dtype), peer,
                         comm_, stream_));
  return finish("send", opts, ++p2p_seq_);
}

WorkPtr NcclBackend::recv(void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) {
  gate(data);
  AQ_NCCL_CHECK(ncclRecv(data, static_cast<size_t>(count), movement_dtype(dtype), peer,
                         comm_, stream_));
  return finish("recv", opts, ++p2p_seq_);
}

WorkPtr NcclBackend::barrier(const CollectiveOptions& opts) {
  gate();
  AQ_NCCL_CHECK(ncclAllReduce(barrier_word_, barrier_word_, 1, ncclFloat32, ncclSum, comm_, stream_));
  return finish("barrier", opts, ++seq_);
}

}  // namespace aq
