// background.cpp — an algorithm whose calls a background thread carries forward (dp_algorithm.h,
// progress_in_background).
//
// Why: MPI over TCP moves a message only while some thread is inside an MPI call (Open MPI has no progress
// thread for its TCP transport), a message past the eager limit needs the receiver to answer a rendezvous, and
// each stage of a hierarchical call starts only from test(). A training loop that tests its outer exchange once
// or twice a step therefore advances it by a stage or two a step, and --outer-overlap's "exchange behind the
// next τ inner steps" never happens on a slow link. Here one thread per wrapped algorithm tests every call in
// flight every `poll_ms` while the caller computes.
//
// Rules (the thread makes them necessary):
//   * the wrapped algorithm, its backends' communicators and the Works it returned are touched under one mutex,
//     by the caller or by the thread, never by both at once; its communicators are used by nothing else;
//   * the backends must allow MPI calls from two threads at once (MPI_THREAD_MULTIPLE): the caller keeps using
//     its other communicators meanwhile (ParallelContext::threads_multiple);
//   * a failure seen by the thread stops it and is thrown by the caller's next call of any kind: the wrapped
//     algorithm may be left mid-stage, so nothing runs on it after (the job is ending: see backend.h).
// Results are the wrapped algorithm's, bit for bit: the thread changes when stages start, not what they compute.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "parallel/algo/dp_algorithm.h"
#include "runtime/sysinfo.h"

namespace aq {
namespace {

// One call in flight, shared by the caller's Work and the thread.
struct Call {
  WorkPtr inner;
  std::atomic<bool> done{false};
};

class BackgroundAlgorithm;

class BackgroundWork final : public Work {
 public:
  BackgroundWork(BackgroundAlgorithm* owner, std::shared_ptr<Call> call)
      : Work(call->inner->seq(), call->inner->name(), "background", -1), owner_(owner), call_(std::move(call)) {
    started_ms_ = call_->inner->started_ms();
  }
  bool test() override;
  void wait(double timeout_s) override;

 private:
  void stamp_completion();
  BackgroundAlgorithm* owner_;
  std::shared_ptr<Call> call_;
};

class BackgroundAlgorithm final : public DpAlgorithm {
 public:
  BackgroundAlgorithm(std::unique_ptr<DpAlgorithm> inner, double poll_ms)
      : inner_(std::move(inner)), poll_(std::chrono::microseconds(static_cast<int64_t>(poll_ms * 1000))) {
    thread_ = std::thread([this] { run(); });
  }
  ~BackgroundAlgorithm() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
    live_.clear();  // before inner_: the wrapped calls refer to it
  }

  std::string describe() const override { return inner_->describe() + ", progressed by a background thread"; }

  WorkPtr all_reduce(float* data, int64_t count, int64_t offset, const CollectiveOptions& opts) override {
    return start([&] { return inner_->all_reduce(data, count, offset, opts); });
  }
  WorkPtr reduce_scatter(const float* send, float* recv, int64_t slice, const CollectiveOptions& opts) override {
    return start([&] { return inner_->reduce_scatter(send, recv, slice, opts); });
  }
  WorkPtr all_gather(const void* send, void* recv, int64_t slice, DType dtype, const CollectiveOptions& opts) override {
    return start([&] { return inner_->all_gather(send, recv, slice, dtype, opts); });
  }
  WanStats take_wan_stats() override {
    std::lock_guard<std::mutex> l(mu_);
    rethrow_failure();
    return inner_->take_wan_stats();
  }
  bool keeps_residuals() const override { return inner_->keeps_residuals(); }  // fixed at construction
  bool residuals(std::vector<float>& host) override {
    std::lock_guard<std::mutex> l(mu_);
    rethrow_failure();
    return inner_->residuals(host);
  }
  void restore_residuals(std::vector<float> centre_residual) override {
    std::lock_guard<std::mutex> l(mu_);
    rethrow_failure();
    inner_->restore_residuals(std::move(centre_residual));
  }
  void drop_unclaimed_residuals() override {
    std::lock_guard<std::mutex> l(mu_);
    rethrow_failure();
    inner_->drop_unclaimed_residuals();
  }
  int64_t completed_in_background() const override { return completed_in_background_.load(); }

  // BackgroundWork's side. test() does not wait for the thread: while it runs a stage (encoding a fragment,
  // say) the call is simply not done yet.
  bool test(Call& c) {
    if (c.done.load()) return true;
    std::unique_lock<std::mutex> l(mu_, std::try_to_lock);
    if (!l.owns_lock()) return false;
    rethrow_failure();
    if (c.inner->test()) c.done = true;
    return c.done;
  }
  void wait(Call& c, double timeout_s) {
    if (c.done.load()) return;
    std::lock_guard<std::mutex> l(mu_);
    rethrow_failure();
    c.inner->wait(timeout_s);  // blocks with the lock held: the thread has nothing to add meanwhile
    c.done = true;
  }

 private:
  template <typename F>
  WorkPtr start(F&& launch) {
    auto call = std::make_shared<Call>();
    {
      std::lock_guard<std::mutex> l(mu_);
      rethrow_failure();
      call->inner = launch();
      live_.push_back(call);
    }
    cv_.notify_one();
    return std::make_shared<BackgroundWork>(this, std::move(call));
  }

  // Under the lock.
  void rethrow_failure() const {
    if (failure_) std::rethrow_exception(failure_);
  }

  void run() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || (!live_.empty() && !failure_); });
      if (stop_) return;
      for (auto it = live_.begin(); it != live_.end();) {
        Call& c = **it;
        if (!c.done) {
          try {
            if (c.inner->test()) {
              c.done = true;
              ++completed_in_background_;
            }
          } catch (...) {
            failure_ = std::current_exception();  // kept for the caller; the thread stops testing
            break;
          }
        }
        it = c.done ? live_.erase(it) : it + 1;
      }
      if (live_.empty() || failure_) continue;
      l.unlock();
      std::this_thread::sleep_for(poll_);
      l.lock();
    }
  }

  std::unique_ptr<DpAlgorithm> inner_;
  const std::chrono::microseconds poll_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Call>> live_;  // calls the thread still tests
  bool stop_ = false;
  std::exception_ptr failure_;  // what a call threw on the thread
  std::atomic<int64_t> completed_in_background_{0};
  std::thread thread_;  // last: starts after everything it uses exists
};

bool BackgroundWork::test() {
  if (!owner_->test(*call_)) return false;
  stamp_completion();
  return true;
}

void BackgroundWork::wait(double timeout_s) {
  owner_->wait(*call_, timeout_s);
  stamp_completion();
}

void BackgroundWork::stamp_completion() {
  // When the thread (or the caller) first saw the wrapped call complete: published by Call::done.
  if (completed_ms_ == 0) completed_ms_ = call_->inner->completed_ms() > 0 ? call_->inner->completed_ms() : steady_ms();
}

}  // namespace

std::unique_ptr<DpAlgorithm> progress_in_background(std::unique_ptr<DpAlgorithm> inner, double poll_ms) {
  return std::make_unique<BackgroundAlgorithm>(std::move(inner), poll_ms);
}

}  // namespace aq
