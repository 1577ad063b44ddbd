#include "parallel/context.h"

#include <cerrno>  // program_invocation_short_name
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "parallel/launcher_check.h"
#include "parallel/setup_watchdog.h"
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
  topo_ = Topology::build({"0"}, 1);
  intra_rs_ = intra_ag_ = device_intra_rs_ = device_intra_ag_ = world_;
  node_of_.assign(1, 0);
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
    // MPI_THREAD_MULTIPLE: DiLoCo's overlapped outer exchange is carried forward by a thread of its own
    // (parallel/algo/background.cpp) while the training thread keeps calling MPI on the other groups. An MPI
    // that offers less gets no such thread (threads_multiple()).
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    ctx.mpi_ = true;
    ctx.threads_multiple_ = provided >= MPI_THREAD_MULTIPLE;
    MPI_Comm_rank(MPI_COMM_WORLD, &ctx.world_rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ctx.world_size_);
    MPI_Comm node;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ctx.world_rank_, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    MPI_Comm_rank(node, &ctx.local_rank_);
    MPI_Comm_size(node, &ctx.local_size_);
    // Which ranks share a node (named by its lowest world rank), so a rank can count the GPU ranks before it
    // on its node without another collective later (local_index_among).
    int leader = ctx.world_rank_;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, node), "MPI_Allreduce (node leader)");
    ctx.node_of_.assign(static_cast<size_t>(ctx.world_size_), 0);
    check_mpi(MPI_Allgather(&leader, 1, MPI_INT, ctx.node_of_.data(), 1, MPI_INT, MPI_COMM_WORLD),
              "MPI_Allgather (node leaders)");
    MPI_Comm_free(&node);
    set_log_rank(ctx.world_rank_, ctx.world_size_);
  }
#else
  (void)argc;
  (void)argv;
#endif
  // Several tasks that each found a world of one (a bare srun -n N, mpirun with a build without MPI) would train
  // independently on the same data and --save file: refuse. Each such process is its own world, with no peer to
  // agree with, so every one of them prints the line and exits non-zero.
  const std::string refused = independent_tasks_error(launcher_env(), ctx.world_size_,
#ifdef AQ_HAVE_MPI
                                                      true);
#else
                                                      false);
#endif
  if (!refused.empty()) {
    std::fprintf(stderr, "%s: error: %s\n", program_invocation_short_name, refused.c_str());
    ctx.finalize();
    std::exit(1);
  }
  return ctx;
}

void ParallelContext::configure(int tp, double comm_timeout_s, const std::string& centres) {
  device_tp_.reset();  // they may refer to the groups replaced below
  device_dp_.reset();
  device_intra_rs_.reset();
  device_intra_ag_.reset();
  for (auto* g : {&outer_dp_, &outer_intra_rs_, &outer_intra_ag_, &outer_cross_rs_, &outer_cross_ag_}) g->reset();
  outer_made_ = false;
  AQ_CHECK(tp >= 1, "--tp must be >= 1 (got ", tp, ")");
  AQ_CHECK(world_size_ % tp == 0, "world size ", world_size_, " is not divisible by --tp ", tp,
           "; launch a multiple of ", tp, " ranks (mpirun -np ", (world_size_ / tp + 1) * tp, ") or change --tp");
  AQ_CHECK(comm_timeout_s > 0, "--comm-timeout must be > 0 seconds (got ", comm_timeout_s, ")");
  // The groups are made by blocking MPI calls that no collective watchdog covers yet: a time limit of their own.
  SetupWatchdog watchdog("creating the process groups (MPI_Allgather, MPI_Comm_split, MPI_Comm_dup)", comm_timeout_s,
                         world_rank_);
  // Fault injection for the set-up test: AQ_FAULT_INJECT=setupstall:RANK:0 stalls that rank here.
  if (const char* f = std::getenv("AQ_FAULT_INJECT")) {
    int r = -1;
    if (std::sscanf(f, "setupstall:%d", &r) == 1 && r == world_rank_)
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  // Every rank's AQ_CENTRE, gathered in fixed-size records (a world of one reads its own).
  constexpr int kName = 64;
  std::vector<std::string> env_names(static_cast<size_t>(world_size_));
  {
    const char* mine = std::getenv("AQ_CENTRE");
    AQ_CHECK(!mine || std::strlen(mine) < kName, "AQ_CENTRE=\"", mine, "\" is longer than ", kName - 1,
             " characters; use a shorter centre name");
    std::vector<char> all(static_cast<size_t>(kName) * world_size_, 0);
    if (mine) std::strncpy(all.data() + static_cast<size_t>(kName) * world_rank_, mine, kName - 1);
#ifdef AQ_HAVE_MPI
    if (mpi_)
      check_mpi(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all.data(), kName, MPI_CHAR, MPI_COMM_WORLD),
                "MPI_Allgather (AQ_CENTRE)");
#endif
    for (int r = 0; r < world_size_; ++r) env_names[r] = std::string(all.data() + static_cast<size_t>(kName) * r);
  }
  topo_ = Topology::build(Topology::names_for(centres, world_size_, env_names), tp);
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
    // Centre-aware DP groups. Colours: intra = (centre, tp_rank); cross = (tp_rank, intra index) for carriers.
    const int me = world_rank_, tpr = tp_rank(), intra = topo_.intra_index[me];
    const bool carrier = intra < topo_.cross_shards();
    MPI_Comm irs, iag, xrs, xag;
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, topo_.centre_of[me] * tp + tpr, me, &irs), "MPI_Comm_split (dp-intra)");
    check_mpi(MPI_Comm_dup(irs, &iag), "MPI_Comm_dup (dp-intra)");
    check_mpi(MPI_Comm_split(MPI_COMM_WORLD, carrier ? intra * tp + tpr : MPI_UNDEFINED, topo_.centre_of[me], &xrs),
              "MPI_Comm_split (dp-cross)");
    intra_rs_ = std::make_shared<MpiBackend>(irs, "dp-intra", monitor, comm_timeout_s);
    intra_ag_ = std::make_shared<MpiBackend>(iag, "dp-intra", monitor, comm_timeout_s);
    // Every rank registers the same number of groups with the monitor (ids must agree across the job), so
    // ranks without a cross group register two placeholders.
    if (carrier) {
      check_mpi(MPI_Comm_dup(xrs, &xag), "MPI_Comm_dup (dp-cross)");
      cross_rs_ = std::make_shared<MpiBackend>(xrs, "dp-cross", monitor, comm_timeout_s);
      cross_ag_ = std::make_shared<MpiBackend>(xag, "dp-cross", monitor, comm_timeout_s);
    } else {
      monitor->register_group();
      monitor->register_group();
      cross_rs_.reset();
      cross_ag_.reset();
    }
  }
#endif
  if (!mpi_) intra_rs_ = intra_ag_ = world_;
  timeout_s_ = comm_timeout_s;
  device_ = Device::CPU;
  device_tp_ = tp_group_;
  device_dp_ = dp_group_;
  device_intra_rs_ = intra_rs_;
  device_intra_ag_ = intra_ag_;
}

DpGroups ParallelContext::intra_dp_groups() {
  DpGroups g;
  g.dp = g.intra_rs = device_intra_rs_.get();
  g.intra_ag = device_intra_ag_.get();
  g.world_rank = world_rank_;
  g.timeout_s = timeout_s_;
  return g;  // no topology: nothing here crosses a centre
}

DpGroups ParallelContext::outer_dp_groups() {
  if (!outer_made_) {
    outer_made_ = true;
    outer_dp_ = dp_group_;
    outer_intra_rs_ = intra_rs_;
    outer_intra_ag_ = intra_ag_;
    outer_cross_rs_ = cross_rs_;
    outer_cross_ag_ = cross_ag_;
#ifdef AQ_HAVE_MPI
    if (mpi_) {
      // Every rank duplicates the same groups in the same order (a rank without cross groups registers
      // placeholders), so the monitor's group ids stay equal across the job.
      auto dup = [&](const std::shared_ptr<Backend>& g, const char* name) -> std::shared_ptr<Backend> {
        if (!g) {
          monitor_->register_group();
          return nullptr;
        }
        MPI_Comm c;
        check_mpi(MPI_Comm_dup(static_cast<MpiBackend&>(*g).comm(), &c), "MPI_Comm_dup (outer groups)");
        return std::make_shared<MpiBackend>(c, name, monitor_, timeout_s_);
      };
      outer_dp_ = dup(dp_group_, "dp (outer)");
      outer_intra_rs_ = dup(intra_rs_, "dp-intra (outer)");
      outer_intra_ag_ = dup(intra_ag_, "dp-intra (outer)");
      outer_cross_rs_ = dup(cross_rs_, "dp-cross (outer)");
      outer_cross_ag_ = dup(cross_ag_, "dp-cross (outer)");
    }
#endif
  }
  DpGroups g = dp_groups();
  g.dp = outer_dp_.get();
  g.intra_rs = outer_intra_rs_.get();
  g.intra_ag = outer_intra_ag_.get();
  g.cross_rs = outer_cross_rs_.get();
  g.cross_ag = outer_cross_ag_.get();
  return g;
}

DpGroups ParallelContext::dp_groups() {
  DpGroups g;
  g.dp = device_dp_.get();
  g.intra_rs = device_intra_rs_.get();
  g.intra_ag = device_intra_ag_.get();
  g.cross_rs = cross_rs_.get();
  g.cross_ag = cross_ag_.get();
  g.topo = &topo_;
  g.world_rank = world_rank_;
  g.timeout_s = timeout_s_;
  return g;
}

std::pair<int, int> ParallelContext::local_index_among(const std::function<bool(int)>& on) const {
  int index = -1, count = 0;
  for (int r = 0; r < world_size_; ++r) {
    if (node_of_[static_cast<size_t>(r)] != node_of_[static_cast<size_t>(world_rank_)] || !on(r)) continue;
    if (r == world_rank_) index = count;
    ++count;
  }
  return {index, count};
}

void ParallelContext::enable_device_groups(Device device, int gpus_on_node,
                                           [[maybe_unused]] bool device_dp_across_centres) {
  device_ = device;
  mixed_devices_ = false;
  // Every rank takes part in the agreement, a CPU rank too: in a job whose centres mix CPUs and GPUs the GPU
  // ranks must not wait for CPU ranks inside NCCL's set-up. [some rank on the CPU, some on a GPU, some GPU
  // rank without a GPU of its own (NCCL impossible)].
  int32_t seen[3] = {device == Device::CPU ? 1 : 0, device == Device::CUDA ? 1 : 0,
                     device == Device::CUDA && !(mpi_ && local_size_ <= gpus_on_node) ? 1 : 0};
  if (world_size_ > 1) world_->all_reduce(seen, 3, DType::I32, {"devices of the ranks", ReduceOp::Max})->wait();
  mixed_devices_ = seen[0] && seen[1];
  if (device == Device::CPU || world_size_ == 1) {
    device_tp_ = tp_group_;
    device_dp_ = dp_group_;
    device_intra_rs_ = intra_rs_;
    device_intra_ag_ = intra_ag_;
    return;
  }
#ifdef AQ_HAVE_NCCL
  // NCCL needs a GPU per rank, and every rank of its communicators on a GPU. Every GPU rank takes the same
  // branch, since the answer was agreed above.
  if (!seen[2] && !mixed_devices_) {
    // A failure here cannot be agreed on (peers are inside MPI/NCCL calls): report it on this rank and end the job.
    SetupWatchdog watchdog("creating the NCCL communicators", timeout_s_, world_rank_);
    try {
      auto comm_of = [](Backend& g) {
        MPI_Comm dup;
        check_mpi(MPI_Comm_dup(static_cast<MpiBackend&>(g).comm(), &dup), "MPI_Comm_dup (NCCL id exchange)");
        return dup;
      };
      MPI_Comm tpc = comm_of(*tp_group_), irs = comm_of(*intra_rs_), iag = comm_of(*intra_ag_);
      device_tp_ = std::make_shared<NcclBackend>(tpc, "tp", timeout_s_);
      device_intra_rs_ = std::make_shared<NcclBackend>(irs, "dp-intra", timeout_s_);
      device_intra_ag_ = std::make_shared<NcclBackend>(iag, "dp-intra", timeout_s_);
      for (MPI_Comm* c : {&tpc, &irs, &iag}) MPI_Comm_free(c);
      // Without device traffic across centres (DiLoCo: only the host outer exchange crosses them) no NCCL
      // communicator spans the wide-area link: setting one up there is slow, may fail, and would carry nothing.
      if (device_dp_across_centres) {
        MPI_Comm dpc = comm_of(*dp_group_);
        device_dp_ = std::make_shared<NcclBackend>(dpc, "dp", timeout_s_);
        MPI_Comm_free(&dpc);
      } else {
        device_dp_ = std::make_shared<StagedBackend>(*dp_group_, device);
      }
    } catch (const std::exception& e) {
      log_error(str("aq: error: setting up NCCL on rank ", world_rank_, " (host ", host_, "): ", e.what(),
                    "; ending the job"));
      abort(3);
    }
    return;
  }
#endif
  device_tp_ = std::make_shared<StagedBackend>(*tp_group_, device);
  device_dp_ = std::make_shared<StagedBackend>(*dp_group_, device);
  device_intra_rs_ = std::make_shared<StagedBackend>(*intra_rs_, device);
  device_intra_ag_ = std::make_shared<StagedBackend>(*intra_ag_, device);
}

std::string ParallelContext::banner(const std::string& device) {
  // Fixed-size records so one all_gather collects everyone's line.
  constexpr int kLen = 128;
  char mine[kLen] = {0};
  std::snprintf(mine, kLen, "%-20.20s rank %4d  local %3d/%-3d  device %-5.5s (tp %d, dp %d) centre %.16s",
                host_.c_str(), world_rank_, local_rank_, local_size_, device.c_str(), tp_rank(), dp_rank(),
                topo_.centre_names[static_cast<size_t>(centre())].c_str());
  std::vector<char> all(static_cast<size_t>(kLen) * world_size_);
  world_->all_gather(mine, all.data(), kLen / 4, DType::I32, {"banner"})->wait();  // 128 chars as 32 int32
  std::string out = str("world ", world_size_, " = tp ", tp_, " x dp ", dp(), " | ", topo_.describe(), "\n");
  for (int r = 0; r < world_size_; ++r)
    out += str("  ", std::string(all.data() + r * kLen), r + 1 < world_size_ ? "\n" : "");
  return out;
}

[[noreturn]] void ParallelContext::abort(int code) {
#ifdef AQ_HAVE_MPI
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

void ParallelContext::finalize() {
  for (auto* g : {&device_intra_rs_, &device_intra_ag_, &intra_rs_, &intra_ag_, &cross_rs_, &cross_ag_, &outer_dp_,
                  &outer_intra_rs_, &outer_intra_ag_, &outer_cross_rs_, &outer_cross_ag_})
    g->reset();
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
  return broadcast_string(my_error, -key);
}

std::string ParallelContext::broadcast_string(const std::string& s, int root) {
  if (world_size_ == 1) return s;
  AQ_ASSERT(world_->size() == world_size_, "broadcast_string before configure(): the MPI groups do not exist yet");
  int32_t len = world_rank_ == root ? static_cast<int32_t>(s.size()) : 0;
  world_->broadcast(&len, 1, DType::I32, root, {"string length"})->wait();
  // One int32 per byte: every backend moves I32, not every one moves raw bytes.
  std::vector<int32_t> buf(static_cast<size_t>(len));
  if (world_rank_ == root)
    for (int32_t i = 0; i < len; ++i) buf[i] = static_cast<unsigned char>(s[i]);
  world_->broadcast(buf.data(), len, DType::I32, root, {"string"})->wait();
  std::string out(static_cast<size_t>(len), ' ');
  for (int32_t i = 0; i < len; ++i) out[i] = static_cast<char>(buf[i]);
  return out;
}

}  // namespace aq
