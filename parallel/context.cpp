#include "parallel/context.h"

#include <cstdlib>
#include <vector>

#include "parallel/staged_backend.h"
#include "runtime/log.h"
#ifdef AQ_HAVE_MPI
#include "parallel/mpi_backend.h"
#endif
#ifdef AQ_HAVE_NCCL
#include "parallel/nccl_backend.h"
#endif

namespace aq {
namespace {

// Whether an MPI launcher started us: Open MPI, PMIx (srun --mpi=pmix), PMI-1/2 (MPICH, srun --mpi=pmi2).
bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(var)) return true;
  return false;
}

}  // namespace

void ParallelContext::make_local() {
  host_ = host_name();
  world_ = std::make_shared<LocalBackend>();
  tp_group_ = world_;
  dp_group_ = world_;
  device_tp_ = tp_group_;
  device_dp_ = dp_group_;
}

ParallelContext& ParallelContext::local() {
  static ParallelContext ctx;  // never touches MPI, even in a process that also has the MPI context
  if (!ctx.world_) ctx.make_local();
  return ctx;
}

ParallelContext& ParallelContext::init(int* argc, char*** argv) {
  static ParallelContext ctx;
  if (!ctx.world_) ctx.make_local();
#ifdef AQ_HAVE_MPI
  if (launched_by_mpi() && !ctx.mpi_) {
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    ctx.mpi_ = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &ctx.world_rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ctx.world_size_);
    MPI_Comm node;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ctx.world_rank_, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    MPI_Comm_rank(node, &ctx.local_rank_);
    MPI_Comm_size(node, &ctx.local_size_);
    MPI_Comm_free(&node);
    set_log_rank(ctx.world_rank_, ctx.world_size_);
  }
#else
  (void)argc;
  (void)argv;
  if (launched_by_mpi())
    log_error("aq: warning: started by an MPI launcher but built without MPI: running as independent single "
              "processes (install libopenmpi-dev and rebuild)");
#endif
  return ctx;
}

void ParallelContext::configure(int tp, double comm_timeout_s) {
  device_tp_.reset();  // they may refer to the groups replaced below
  device_dp_.reset();
  AQ_CHECK(tp >= 1, "--tp must be >= 1 (got ", tp, ")");
  AQ_CHECK(world_size_ % tp == 0, "world size ", world_size_, " is not divisible by --tp ", tp,
           "; launch a multiple of ", tp, " ranks (mpirun -np ", (world_size_ / tp + 1) * tp, ") or change --tp");
  AQ_CHECK(comm_timeout_s > 0, "--comm-timeout must be > 0 seconds (got ", comm_timeout_s, ")");
  tp_ = tp;
#ifdef AQ_HAVE_MPI
  if (mpi_) {
    // One monitor for the life of the job (group ids keep counting up across reconfigurations, identically on
    // every rank), so arrivals in flight are never sent to a freed communicator.
    if (!monitor_) monitor_ = std::make_shared<JobMonitor>();
    const std::shared_ptr<JobMonitor>& monitor = monitor_;
    MPI_Comm world, tpc, dpc;
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &world), "MPI_Comm_dup");
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, dp_rank(), tp_rank(), &tpc), "MPI_Comm_split (tp)");
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, tp_rank(), dp_rank(), &dpc), "MPI_Comm_split (dp)");
    world_ = std::make_shared<MpiBackend>(world, "world", monitor, comm_timeout_s);
    tp_group_ = std::make_shared<MpiBackend>(tpc, "tp", monitor, comm_timeout_s);
    dp_group_ = std::make_shared<MpiBackend>(dpc, "dp", monitor, comm_timeout_s);
  }
#endif
  timeout_s_ = comm_timeout_s;
  device_ = Device::CPU;
  device_tp_ = tp_group_;
  device_dp_ = dp_group_;
}

void ParallelContext::enable_device_groups(Device device, int gpus_on_node) {
  device_ = device;
  if (device == Device::CPU || world_size_ == 1) {
    device_tp_ = tp_group_;
    device_dp_ = dp_group_;
    return;
  }
#ifdef AQ_HAVE_NCCL
  // NCCL needs a GPU per rank. Every rank must take the same branch, so the answer is agreed first.
  int32_t cannot = mpi_ && local_size_ <= gpus_on_node ? 0 : 1;
  world_->all_reduce(&cannot, 1, DType::I32, {"NCCL impossible on some rank", ReduceOp::Max})->wait();
  if (!cannot) {
    // A failure here cannot be agreed on (peers are inside MPI/NCCL calls): report it on this rank and end the job.
    try {
      auto comm_of = [](Backend& g) {
        MPI_Comm dup;
        check_mpi(MPI_Comm_dup(static_cast<MpiBackend&>(g).comm(), &dup), "MPI_Comm_dup (NCCL id exchange)");
        return dup;
      };
      MPI_Comm tpc = comm_of(*tp_group_), dpc = comm_of(*dp_group_);
      device_tp_ = std::make_shared<NcclBackend>(tpc, "tp", timeout_s_);
      device_dp_ = std::make_shared<NcclBackend>(dpc, "dp", timeout_s_);
      MPI_Comm_free(&tpc);
      MPI_Comm_free(&dpc);
    } catch (const std::exception& e) {
      log_error(str("aq: error: setting up NCCL on rank ", world_rank_, " (host ", host_, "): ", e.what(),
                    "; ending the job"));
      abort(3);
    }
    return;
  }
#endif
  (void)gpus_on_node;
  device_tp_ = std::make_shared<StagedBackend>(*tp_group_, device);
  device_dp_ = std::make_shared<StagedBackend>(*dp_group_, device);
}

std::string ParallelContext::banner(const std::string& device) {
  // Fixed-size records so one all_gather collects everyone's line.
  constexpr int kLen = 96;
  char mine[kLen] = {0};
  std::snprintf(mine, kLen, "%-24.24s rank %4d  local %3d/%-3d  device %-7.7s (tp %d, dp %d)", host_.c_str(),
                world_rank_, local_rank_, local_size_, device.c_str(), tp_rank(), dp_rank());
  std::vector<char> all(static_cast<size_t>(kLen) * world_size_);
  world_->all_gather(mine, all.data(), kLen / 4, DType::I32, {"banner"})->wait();  // 96 chars as 24 int32
  std::string out = str("world ", world_size_, " = tp ", tp_, " x dp ", dp(), "\n");
  for (int r = 0; r < world_size_; ++r) out += str("  ", std::string(all.data() + r * kLen), r + 1 < world_size_ ? "\n" : "");
  return out;
}

[[noreturn]] void ParallelContext::abort(int code) {
#ifdef AQ_HAVE_MPI
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

void ParallelContext::finalize() {
  device_tp_.reset();
  device_dp_.reset();
  tp_group_.reset();
  dp_group_.reset();
  world_.reset();
  monitor_.reset();
#ifdef AQ_HAVE_MPI
  if (mpi_) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
#endif
}

std::string ParallelContext::agree_on_failure(const std::string& my_error) {
  if (world_size_ == 1) return my_error;
  AQ_ASSERT(world_->size() == world_size_, "agree_on_failure before configure(): the MPI groups do not exist yet");
  // The lowest failing rank wins: all-reduce the negated rank (max of -rank = min rank), then broadcast it.
  int32_t key = my_error.empty() ? INT32_MIN : -world_rank_;
  world_->all_reduce(&key, 1, DType::I32, {"failure agreement", ReduceOp::Max})->wait();
  if (key == INT32_MIN) return "";
  const int root = -key;
  int32_t len = world_rank_ == root ? static_cast<int32_t>(my_error.size()) : 0;
  world_->broadcast(&len, 1, DType::I32, root, {"failure message length"})->wait();
  std::vector<int32_t> buf(static_cast<size_t>(len));
  if (world_rank_ == root)
    for (int32_t i = 0; i < len; ++i) buf[i] = static_cast<unsigned char>(my_error[i]);
  world_->broadcast(buf.data(), len, DType::I32, root, {"failure message"})->wait();
  std::string msg(static_cast<size_t>(len), ' ');
  for (int32_t i = 0; i < len; ++i) msg[i] = static_cast<char>(buf[i]);
  return msg;
}

}  // namespace aq
