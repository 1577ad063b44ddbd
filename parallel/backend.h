// backend.h — the collective-communication interface every backend implements (MPI, NCCL, MPI staged through
// host memory for GPU buffers, and the world of one).
//
// Shaped after PyTorch c10d: each collective takes an options struct with defaults (so arguments can be added
// without breaking callers) and returns a Work handle that can be tested or waited on with a timeout. Every
// collective carries a name and a per-group sequence number, which appear in every error about it.
//
// Rules whose violation hangs ranks (enforced by the watchdog, which then ends the job):
//   * every rank of a group calls the group's collectives in the same order, with the same counts and dtype;
//   * a buffer passed to an asynchronous collective is not touched until its Work has completed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace aq {

enum class ReduceOp { Sum, Max };

struct CollectiveOptions {
  std::string name = "collective";  // what the data is, e.g. "grad bucket 3", for diagnostics
  ReduceOp op = ReduceOp::Sum;
  double timeout_s = -1;            // < 0: the backend's default (--comm-timeout)
};

// A communication failure (timeout, dead peer, MPI error). By the time it is thrown the job is being ended.
class CommError : public Error {
 public:
  using Error::Error;
};

class Work {
 public:
  virtual ~Work() = default;
  virtual bool test() = 0;                   // non-blocking: has it completed? (also drives progress)
  virtual void wait(double timeout_s = -1) = 0;  // blocks; on timeout reports and ends the job
  uint64_t seq() const { return seq_; }
  const std::string& name() const { return name_; }
  double started_ms() const { return started_ms_; }
  double completed_ms() const { return completed_ms_; }  // when test()/wait() first saw it done; 0 before

 protected:
  // op: "all_reduce", …; stamps the start time.
  Work(uint64_t seq, std::string name, const char* op, double timeout_s);
  // The shared wait loop: polls test() with a polite back-off (spin, then yield, then sleep, so oversubscribed
  // ranks do not steal each other's cores). The limit is `timeout_s` if >= 0, else the options' timeout, else
  // `default_timeout_s`; past it, on_timeout(waited seconds) is called, which reports and does not return.
  void poll_until_done(double timeout_s, double default_timeout_s, const std::function<void(double)>& on_timeout);

  uint64_t seq_ = 0;
  std::string name_;
  const char* op_ = "";
  double timeout_s_ = -1;  // from the options; < 0: the backend's default
  double started_ms_ = 0, completed_ms_ = 0;
};
using WorkPtr = std::shared_ptr<Work>;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string describe() const = 0;
  // Whether collectives on different groups of this backend must be issued in the same order on every rank
  // (blocking calls; NCCL). An algorithm running several calls at once orders its stages accordingly. The
  // default is the safe answer; MPI's non-blocking collectives progress per communicator and say no.
  virtual bool needs_global_issue_order() const { return true; }

  // In place over `count` elements.
  virtual WorkPtr all_reduce(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) = 0;
  // send holds size()·recv_count elements; rank r receives the reduction of block r into recv (a separate
  // buffer of recv_count elements).
  virtual WorkPtr reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                                 const CollectiveOptions& opts) = 0;
  // recv holds size()·send_count elements, rank r's contribution at block r.
  virtual WorkPtr all_gather(const void* send, void* recv, int64_t send_count, DType dtype,
                             const CollectiveOptions& opts) = 0;
  // Uneven forms (MPI_Ireduce_scatter, MPI_Iallgatherv): rank r's block has counts[r] elements, blocks packed
  // in rank order in the full buffer. all_gather_v may run in place (send == recv + offset of this rank's
  // block). A backend without them keeps these defaults, which refuse with the backend's name (c10d's rule:
  // adding a collective does not break every backend).
  virtual WorkPtr reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                                   const CollectiveOptions& opts);
  virtual WorkPtr all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                               const CollectiveOptions& opts);
  virtual WorkPtr broadcast(void* data, int64_t count, DType dtype, int root, const CollectiveOptions& opts) = 0;
  virtual WorkPtr send(const void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) = 0;
  virtual WorkPtr recv(void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) = 0;
  virtual WorkPtr barrier(const CollectiveOptions& opts) = 0;

  // Convenience: blocking forms.
  void all_reduce_sync(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) {
    all_reduce(data, count, dtype, opts)->wait();
  }
};

// The world of one: every collective completes immediately and leaves the data as it is.
class LocalBackend final : public Backend {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string describe() const override { return "local (single process)"; }
  WorkPtr all_reduce(void*, int64_t, DType, const CollectiveOptions& o) override { return done(o); }
  WorkPtr reduce_scatter(const void* send, void* recv, int64_t n, DType dt, const CollectiveOptions& o) override;
  WorkPtr all_gather(const void* send, void* recv, int64_t n, DType dt, const CollectiveOptions& o) override;
  WorkPtr reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dt,
                           const CollectiveOptions& o) override {
    return reduce_scatter(send, recv, counts.at(0), dt, o);
  }
  WorkPtr all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dt,
                       const CollectiveOptions& o) override {
    return all_gather(send, recv, counts.at(0), dt, o);
  }
  WorkPtr broadcast(void*, int64_t, DType, int, const CollectiveOptions& o) override { return done(o); }
  WorkPtr send(const void*, int64_t, DType, int peer, const CollectiveOptions&) override;
  WorkPtr recv(void*, int64_t, DType, int peer, const CollectiveOptions&) override;
  WorkPtr barrier(const CollectiveOptions& o) override { return done(o); }

 private:
  WorkPtr done(const CollectiveOptions& o);
  uint64_t seq_ = 0;
};

}  // namespace aq
