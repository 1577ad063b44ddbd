// context.h — the process layout of a job: world, tensor-parallel and data-parallel groups.
//
// Ranks are laid out Megatron-style with tensor parallelism varying fastest: rank = dp_rank·tp + tp_rank, so a
// TP group is `tp` consecutive ranks (on one node when ranks are packed by node) and a DP group is the ranks
// with the same tp_rank. Rank, local rank and local size come from MPI itself (MPI_Comm_split_type with
// MPI_COMM_TYPE_SHARED), not from one launcher's environment, so mpirun, a hostfile and srun --mpi=pmix all work.
// A program started without a launcher is a world of one and never initialises MPI.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/algo/dp_algorithm.h"
#include "parallel/backend.h"
#include "parallel/topology.h"

namespace aq {

class JobMonitor;  // parallel/mpi_backend.h (MPI builds)

class ParallelContext {
 public:
  // Initialises MPI when the process was started by an MPI launcher; otherwise a world of one.
  static ParallelContext& init(int* argc, char*** argv);
  // A world of one that never touches MPI (tests, tools, and single-process references inside MPI jobs).
  static ParallelContext& local();

  // Creates the TP and DP groups and the centre-aware DP groups (topology.h) for --centres `centres` (auto |
  // N). Every rank must call it with the same arguments.
  void configure(int tp, double comm_timeout_s, const std::string& centres = "auto");
  const Topology& topology() const { return topo_; }
  int centre() const { return topo_.centre_of[static_cast<size_t>(world_rank_)]; }

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  int tp() const { return tp_; }
  int dp() const { return world_size_ / tp_; }
  int tp_rank() const { return world_rank_ % tp_; }
  int dp_rank() const { return world_rank_ / tp_; }
  const std::string& host() const { return host_; }
  // This rank's index among the ranks of its node that `on` (a predicate on world ranks) selects, counted by
  // world rank, and how many of them there are: (-1, count) when `on` does not select this rank. Each node's
  // ranks are known from init(), so this needs no communication.
  std::pair<int, int> local_index_among(const std::function<bool(int)>& on) const;
  bool uses_mpi() const { return mpi_; }
  // Whether two threads may call MPI at once (MPI_THREAD_MULTIPLE granted); true without MPI.
  bool threads_multiple() const { return !mpi_ || threads_multiple_; }

  // Groups for host memory (MPI).
  Backend& world() { return *world_; }
  Backend& tp_group() { return *tp_group_; }
  Backend& dp_group() { return *dp_group_; }

  // Groups for buffers on `device` (the model's compute and gradients): the host groups for the CPU; for CUDA,
  // NCCL when this build has it, every rank is on a GPU and each has its own (agreed across ranks), otherwise
  // the MPI groups staged through host memory (a build without NCCL, or a job whose centres mix CPUs and GPUs:
  // NCCL communicators would span ranks that have no GPU). Collective: every rank calls it, with its own
  // device, after configure(). A failure while creating NCCL communicators is reported by its rank and ends
  // the job. `device_dp_across_centres` false (DiLoCo: device buffers never cross centres) keeps the whole
  // DP group off NCCL, so no NCCL communicator spans centres.
  void enable_device_groups(Device device, int gpus_on_node, bool device_dp_across_centres = true);
  bool mixed_devices() const { return mixed_devices_; }  // after enable_device_groups: CPU and GPU ranks
  Device device() const { return device_; }
  Backend& device_tp_group() { return *device_tp_; }
  Backend& device_dp_group() { return *device_dp_; }
  // The groups a data-parallel algorithm runs on, for buffers on the device given to enable_device_groups.
  DpGroups dp_groups();
  // The groups of data parallelism inside this rank's centre only (DiLoCo's inner steps): the dp-intra groups
  // as the whole DP group, without centres.
  DpGroups intra_dp_groups();
  // Groups for an exchange that runs in the background while the inner steps use the dp-intra groups
  // (DiLoCo's overlapped outer syncs): duplicates of the centre-aware host groups, made on the first call.
  // Collective: every rank calls it at the same point. Host buffers only.
  DpGroups outer_dp_groups();
  // Host groups of this rank's centre (same tp_rank) and across centres (null where this rank carries no
  // cross-centre shard): for checkpoints of per-centre state. Not while an algorithm's call is in flight.
  Backend& intra_group() { return *intra_rs_; }
  Backend* cross_group() { return cross_rs_.get(); }

  // Rank 0 gathers every rank's host, local rank, device and (tp, dp) coordinates into a table. Collective.
  std::string banner(const std::string& device);
  // Ends the job from any rank (MPI_Abort under MPI).
  [[noreturn]] void abort(int code);
  void finalize();

  // All ranks learn whether any rank failed; the lowest failing rank's message is returned on every rank
  // (empty when all succeeded). Collective: every rank calls it at the same point.
  std::string agree_on_failure(const std::string& my_error);
  // Rank `root`'s string on every rank (collective over the world: every rank calls it, in the same order).
  std::string broadcast_string(const std::string& s, int root = 0);

 private:
  ParallelContext() = default;
  void make_local();
  bool mpi_ = false;
  bool threads_multiple_ = false;
  int world_rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1, tp_ = 1;
  double timeout_s_ = 300;
  std::string host_;
  std::shared_ptr<Backend> world_, tp_group_, dp_group_;
  Device device_ = Device::CPU;
  bool mixed_devices_ = false;
  std::vector<int> node_of_;  // by world rank: the lowest world rank on its node (init)
  std::shared_ptr<Backend> device_tp_, device_dp_;
  Topology topo_;
  // Centre-aware DP groups: intra-centre (host and device; one communicator for reduce-scatters, one for
  // all-gathers) and cross-centre (host; null where this rank carries no shard).
  std::shared_ptr<Backend> intra_rs_, intra_ag_, device_intra_rs_, device_intra_ag_, cross_rs_, cross_ag_;
  std::shared_ptr<Backend> outer_dp_, outer_intra_rs_, outer_intra_ag_, outer_cross_rs_, outer_cross_ag_;
  bool outer_made_ = false;
  std::shared_ptr<JobMonitor> monitor_;  // MPI jobs: the watchdog's arrival channel
};

}  // namespace aq
