#include "parallel/mpi_backend.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "runtime/log.h"
#include "runtime/sysinfo.h"

namespace aq {
namespace {

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) s += str(i ? ", " : "", ranks[i]);
  return s.empty() ? "none" : s;
}

class MpiWork final : public Work {
 public:
  MpiWork(MpiBackend* backend, MPI_Request req, const char* op, const CollectiveOptions& opts, uint64_t seq,
          std::shared_ptr<void> keep)
      : Work(seq, opts.name, op, opts.timeout_s), backend_(backend), req_(req), keep_(std::move(keep)) {}
  ~MpiWork() override {
    // A Work dropped before completion must not leave MPI writing into freed memory: finish it.
    if (req_ != MPI_REQUEST_NULL) wait(-1);
  }

  bool test() override {
    if (req_ == MPI_REQUEST_NULL) return true;
    int flag = 0;
    check_mpi(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), op_);
    backend_->monitor().poll();
    if (flag) {
      req_ = MPI_REQUEST_NULL;
      completed_ms_ = steady_ms();
    }
    return flag != 0;
  }

  void wait(double timeout_s) override {
    poll_until_done(timeout_s, backend_->default_timeout_s(),
                    [&](double waited) { backend_->timed_out(op_, name_, seq_, waited); });
  }

 private:
  MpiBackend* backend_;
  MPI_Request req_;
  std::shared_ptr<void> keep_;  // released with the Work, after the request completed
};

constexpr int kPointToPointTag = 1;

int mpi_count(int64_t n) {
  AQ_CHECK(n >= 0 && n <= 0x7fffffff, "a single MPI message of ", n, " elements exceeds MPI's int count; lower ",
           "--bucket-mb");
  return static_cast<int>(n);
}

}  // namespace

MPI_Datatype mpi_dtype(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::U16:
    case DType::BF16:
    case DType::F16: return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string msg = str(call, " failed on rank ", rank, " (host ", host_name(), "): ", std::string(text, len));
  log_error(str("aq: error: ", msg, "; ending the job"));
  MPI_Abort(MPI_COMM_WORLD, 3);
  throw CommError(msg);
}

// ---- JobMonitor -------------------------------------------------------------------------------------------

JobMonitor::JobMonitor() {
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &world_rank_);
}

JobMonitor::~JobMonitor() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (auto& p : sends_) {
    int done = 0;
    MPI_Test(&p.req, &done, MPI_STATUS_IGNORE);
    if (!done) {
      MPI_Request_free(&p.req);
      (void)p.payload.release();  // MPI may still read it: leak these 8 bytes rather than free them under it
    }
  }
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

int JobMonitor::register_group() { return next_group_++; }

void JobMonitor::post_arrival(int group, uint64_t seq, const std::vector<int>& to_world_ranks) {
  std::lock_guard<std::mutex> l(mu_);
  arrivals_[{group, world_rank_}] = seq;
  for (int dst : to_world_ranks) {
    if (dst == world_rank_) continue;
    Pending p{MPI_REQUEST_NULL, std::make_unique<uint64_t>(seq)};
    check_mpi(MPI_Isend(p.payload.get(), 1, MPI_UINT64_T, dst, group, comm_, &p.req), "MPI_Isend (arrival)");
    sends_.push_back(std::move(p));
  }
  poll_locked();
}

void JobMonitor::poll() {
  std::lock_guard<std::mutex> l(mu_);
  poll_locked();
}

void JobMonitor::poll_locked() {
  while (!sends_.empty()) {
    int done = 0;
    check_mpi(MPI_Test(&sends_.front().req, &done, MPI_STATUS_IGNORE), "MPI_Test (arrival)");
    if (!done) break;
    sends_.pop_front();
  }
  for (;;) {
    int flag = 0;
    MPI_Status st;
    check_mpi(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe (arrival)");
    if (!flag) return;
    uint64_t seq = 0;
    check_mpi(MPI_Recv(&seq, 1, MPI_UINT64_T, st.MPI_SOURCE, st.MPI_TAG, comm_, MPI_STATUS_IGNORE),
              "MPI_Recv (arrival)");
    uint64_t& slot = arrivals_[{st.MPI_TAG, st.MPI_SOURCE}];
    slot = std::max(slot, seq);
  }
}

uint64_t JobMonitor::last_arrival(int group, int world_rank) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = arrivals_.find({group, world_rank});
  return it == arrivals_.end() ? 0 : it->second;
}

// ---- MpiBackend -------------------------------------------------------------------------------------------

MpiBackend::MpiBackend(MPI_Comm comm, std::string name, std::shared_ptr<JobMonitor> monitor, double default_timeout_s)
    : comm_(comm), name_(std::move(name)), monitor_(std::move(monitor)), default_timeout_s_(default_timeout_s) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  world_ranks_.resize(static_cast<size_t>(size_));
  const int me = monitor_->world_rank();
  check_mpi(MPI_Allgather(&me, 1, MPI_INT, world_ranks_.data(), 1, MPI_INT, comm_), "MPI_Allgather (group ranks)");
  // Every process creates the groups in the same order, so the ids agree across the job.
  group_id_ = monitor_->register_group();
}

MpiBackend::~MpiBackend() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::string MpiBackend::describe() const { return str("MPI ", name_, " group of ", size_); }

uint64_t MpiBackend::begin(bool collective) {
  // Point-to-point operations involve only some ranks, so they get their own counter: the collective sequence
  // numbers stay equal across the group, which the watchdog's "did not arrive" list relies on.
  if (!collective) return ++p2p_seq_;
  ++seq_;
  if (size_ > 1) {
    // Members tell the leader; the leader tells the members.
    if (rank_ == 0)
      monitor_->post_arrival(group_id_, seq_, world_ranks_);
    else
      monitor_->post_arrival(group_id_, seq_, {world_ranks_[0]});
  }
  return seq_;
}

WorkPtr MpiBackend::make_work(MPI_Request req, const char* op, const CollectiveOptions& opts, uint64_t seq,
                              std::shared_ptr<void> keep) {
  return std::make_shared<MpiWork>(this, req, op, opts, seq, std::move(keep));
}

[[noreturn]] void MpiBackend::timed_out(const std::string& op, const std::string& name, uint64_t seq, double waited) {
  monitor_->poll();
  const std::string what = str(op, " \"", name, "\" (", name_, " group, sequence number ", seq, ") timed out after ",
                               static_cast<int>(waited), " s on rank ", monitor_->world_rank(), " (host ", host_name(),
                               ")");
  std::vector<int> missing, arrived;
  if (op == "send" || op == "recv") {
    // Point-to-point calls post no arrivals: the one rank that matters is the peer, which its name carries.
    log_error(str("aq: error: ", what, ": the peer never posted the matching ", op == "send" ? "recv" : "send",
                  ". Ending the job (raise --comm-timeout if a step legitimately takes longer)"));
  } else if (rank_ == 0) {
    for (int r = 0; r < size_; ++r)
      (monitor_->last_arrival(group_id_, world_ranks_[r]) >= seq ? arrived : missing).push_back(world_ranks_[r]);
    log_error(str("aq: error: ", what, ": ranks that did not arrive: ", rank_list(missing), "; arrived: ",
                  rank_list(arrived), ". Ending the job (raise --comm-timeout if a step legitimately takes longer)"));
  } else if (monitor_->last_arrival(group_id_, world_ranks_[0]) < seq) {
    log_error(str("aq: error: ", what, ": ranks that did not arrive include ", world_ranks_[0],
                  " (this group's leader). Ending the job"));
  } else {
    // The leader arrived, so it is waiting too and will name the missing ranks; give it time to say so.
    std::this_thread::sleep_for(std::chrono::seconds(5));
    log_error(str("aq: error: ", what, "; the group leader, rank ", world_ranks_[0],
                  ", reports which ranks did not arrive. Ending the job"));
  }
  MPI_Abort(MPI_COMM_WORLD, 3);
  throw CommError(what);
}

namespace {
// The MPI type of a reduction: MPI has no 16-bit floats (mpi_dtype moves them as MPI_UINT16_T, which would add
// them as integers); bf16 reductions of device buffers are widened by StagedBackend.
MPI_Datatype mpi_reduce_dtype(DType dtype, const char* op) {
  AQ_ASSERT(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::I32, op, " on ", dtype_name(dtype));
  return mpi_dtype(dtype);
}
}  // namespace

WorkPtr MpiBackend::all_reduce(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) {
  const MPI_Datatype type = mpi_reduce_dtype(dtype, "all_reduce");
  const uint64_t seq = begin(true);
  MPI_Request req;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, mpi_count(count), type,
                           opts.op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_, &req),
            "MPI_Iallreduce");
  return make_work(req, "all_reduce", opts, seq);
}

WorkPtr MpiBackend::reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                                   const CollectiveOptions& opts) {
  AQ_ASSERT(send != recv, "reduce_scatter needs separate send and receive buffers");
  const MPI_Datatype type = mpi_reduce_dtype(dtype, "reduce_scatter");
  const uint64_t seq = begin(true);
  MPI_Request req;
  check_mpi(MPI_Ireduce_scatter_block(send, recv, mpi_count(recv_count),
                                      type, opts.op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_, &req),
            "MPI_Ireduce_scatter_block");
  return make_work(req, "reduce_scatter", opts, seq);
}

WorkPtr MpiBackend::all_gather(const void* send, void* recv, int64_t send_count, DType dtype,
                               const CollectiveOptions& opts) {
  const uint64_t seq = begin(true);
  MPI_Request req;
  const bool in_place = static_cast<const char*>(send) ==
                        static_cast<const char*>(recv) + static_cast<size_t>(rank_ * send_count) * dtype_size(dtype);
  check_mpi(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, mpi_count(send_count), mpi_dtype(dtype), recv,
                           mpi_count(send_count), mpi_dtype(dtype), comm_, &req),
            "MPI_Iallgather");
  return make_work(req, "all_gather", opts, seq);
}

WorkPtr MpiBackend::reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                                     const CollectiveOptions& opts) {
  AQ_ASSERT(static_cast<int>(counts.size()) == size_, "reduce_scatter_v with ", counts.size(), " counts on ", size_,
            " ranks");
  AQ_ASSERT(send != recv, "reduce_scatter_v needs separate send and receive buffers");
  const MPI_Datatype type = mpi_reduce_dtype(dtype, "reduce_scatter_v");
  auto keep = std::make_shared<std::vector<int>>(counts.size());
  std::vector<int>& c = *keep;
  for (size_t i = 0; i < counts.size(); ++i) c[i] = mpi_count(counts[i]);
  const uint64_t seq = begin(true);
  MPI_Request req;
  check_mpi(MPI_Ireduce_scatter(send, recv, c.data(), type, opts.op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_, &req),
            "MPI_Ireduce_scatter");
  return make_work(req, "reduce_scatter_v", opts, seq, keep);
}

WorkPtr MpiBackend::all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                                 const CollectiveOptions& opts) {
  AQ_ASSERT(static_cast<int>(counts.size()) == size_, "all_gather_v with ", counts.size(), " counts on ", size_,
            " ranks");
  auto keep = std::make_shared<std::vector<int>>(2 * counts.size());  // counts, then displacements
  int* c = keep->data();
  int* d = c + counts.size();
  int64_t off = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    c[i] = mpi_count(counts[i]);
    d[i] = mpi_count(off);
    off += counts[i];
  }
  const bool in_place = static_cast<const char*>(send) ==
                        static_cast<const char*>(recv) + static_cast<size_t>(d[rank_]) * dtype_size(dtype);
  const uint64_t seq = begin(true);
  MPI_Request req;
  check_mpi(MPI_Iallgatherv(in_place ? MPI_IN_PLACE : send, c[rank_], mpi_dtype(dtype), recv, c, d,
                            mpi_dtype(dtype), comm_, &req),
            "MPI_Iallgatherv");
  return make_work(req, "all_gather_v", opts, seq, keep);
}

WorkPtr MpiBackend::broadcast(void* data, int64_t count, DType dtype, int root, const CollectiveOptions& opts) {
  const uint64_t seq = begin(true);
  MPI_Request req;
  check_mpi(MPI_Ibcast(data, mpi_count(count), mpi_dtype(dtype), root, comm_, &req), "MPI_Ibcast");
  return make_work(req, "broadcast", opts, seq);
}

WorkPtr MpiBackend::send(const void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) {
  const uint64_t seq = begin(false);
  MPI_Request req;
  check_mpi(MPI_Isend(data, mpi_count(count), mpi_dtype(dtype), peer, kPointToPointTag, comm_, &req),
            "MPI_Isend");
  return make_work(req, "send", opts, seq);
}

WorkPtr MpiBackend::recv(void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) {
  const uint64_t seq = begin(false);
  MPI_Request req;
  check_mpi(MPI_Irecv(data, mpi_count(count), mpi_dtype(dtype), peer, kPointToPointTag, comm_, &req),
            "MPI_Irecv");
  return make_work(req, "recv", opts, seq);
}

WorkPtr MpiBackend::barrier(const CollectiveOptions& opts) {
  const uint64_t seq = begin(true);
  MPI_Request req;
  check_mpi(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier");
  return make_work(req, "barrier", opts, seq);
}

}  // namespace aq
