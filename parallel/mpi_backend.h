// mpi_backend.h — the MPI backend (Open MPI), and the job monitor that turns hangs into reports.
//
// Collectives are MPI's non-blocking ones (MPI_Iallreduce, …) on the group's communicator; Work::wait polls
// MPI_Test with a yielding back-off (so oversubscribed ranks do not steal each other's cores) and gives up
// after the timeout. Each collective first posts an "arrival" (group, sequence number) to the group's leader
// (its rank 0), and the leader posts its own arrivals to every member. So when a collective times out:
//   * the leader knows which members never arrived and names them;
//   * a member knows whether the leader arrived; if not, it names the leader, else it lets the leader report.
// Then the job is ended with MPI_Abort, so no rank is left hanging (Horovod's rule: abort before throwing).
#pragma once

#include <mpi.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/backend.h"

namespace aq {

// One per process: the arrival channel (a duplicate of MPI_COMM_WORLD) shared by every group.
class JobMonitor {
 public:
  JobMonitor();
  ~JobMonitor();
  int register_group();  // returns a new group id (the message tag); every rank registers groups in one order
  void post_arrival(int group, uint64_t seq, const std::vector<int>& to_world_ranks);
  void poll();  // drains arrivals and completed sends
  uint64_t last_arrival(int group, int world_rank) const;
  int world_rank() const { return world_rank_; }

 private:
  void poll_locked();
  // Every group's calls post and poll here, and a background thread may run some groups' calls
  // (parallel/algo/background.cpp): one thread at a time, so a probed arrival is received by whoever probed it.
  mutable std::mutex mu_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int world_rank_ = 0, next_group_ = 0;
  std::map<std::pair<int, int>, uint64_t> arrivals_;  // (group, world rank) → highest sequence seen
  struct Pending {
    MPI_Request req;
    std::unique_ptr<uint64_t> payload;
  };
  std::deque<Pending> sends_;
};

class MpiBackend final : public Backend {
 public:
  // `name` is the group's role in messages ("world", "tp", "dp"); comm is owned by the backend.
  MpiBackend(MPI_Comm comm, std::string name, std::shared_ptr<JobMonitor> monitor, double default_timeout_s);
  ~MpiBackend() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override;
  bool needs_global_issue_order() const override { return false; }

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
  WorkPtr barrier(const CollectiveOptions& opts) override;

  // Reports a collective that did not complete in time and ends the job. Used by MpiWork.
  [[noreturn]] void timed_out(const std::string& op, const std::string& name, uint64_t seq, double waited_s);
  double default_timeout_s() const { return default_timeout_s_; }
  JobMonitor& monitor() { return *monitor_; }
  MPI_Comm comm() const { return comm_; }

 private:
  uint64_t begin(bool collective);  // next sequence number; posts the arrival
  // keep: what MPI may still read until the request completes (the count arrays of the uneven collectives).
  WorkPtr make_work(MPI_Request req, const char* op, const CollectiveOptions& opts, uint64_t seq,
                    std::shared_ptr<void> keep = nullptr);

  MPI_Comm comm_;
  std::string name_;
  std::shared_ptr<JobMonitor> monitor_;
  double default_timeout_s_;
  int rank_ = 0, size_ = 1, group_id_ = 0;
  std::vector<int> world_ranks_;
  uint64_t seq_ = 0, p2p_seq_ = 0;

};

MPI_Datatype mpi_dtype(DType t);
// Throws CommError (after reporting) when an MPI call did not return MPI_SUCCESS.
void check_mpi(int rc, const char* call);

}  // namespace aq
