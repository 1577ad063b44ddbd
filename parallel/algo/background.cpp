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
//   * a failure seen by the thread is kept and thrown by the caller's next test() or wait() of that call.
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
  std::exception_ptr error;  // under the mutex
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
    live_.clear();  // unfinished calls finish here (a Work dropped early waits), before the algorithm goes
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
    return inner_->take_wan_stats();
  }
  bool keeps_residuals() const override { return inner_->keeps_residuals(); }  // fixed at construction
  bool residuals(std::vector<float>& host) override {
    std::lock_guard<std::mutex> l(mu_);
    return inner_->residuals(host);
  }
  void restore_residuals(std::vector<float> centre_residual) override {
    std::lock_guard<std::mutex> l(mu_);
    inner_->restore_residuals(std::move(centre_residual));
  }
  void drop_unclaimed_residuals() override {
    std::lock_guard<std::mutex> l(mu_);
    inner_->drop_unclaimed_residuals();
  }
  int64_t completed_in_background() const override { return completed_in_background_.load(); }

  // BackgroundWork's side.
  bool test(Call& c) {
    if (c.done.load()) return true;
    std::lock_guard<std::mutex> l(mu_);
    return check(c);
  }
  void wait(Call& c, double timeout_s) {
    if (c.done.load()) return;
    std::lock_guard<std::mutex> l(mu_);
    if (c.error) std::rethrow_exception(c.error);
    c.inner->wait(timeout_s);  // blocks with the lock held: the thread has nothing to add meanwhile
    c.done = true;
  }

 private:
  template <typename F>
  WorkPtr start(F&& launch) {
    auto call = std::make_shared<Call>();
    {
      std::lock_guard<std::mutex> l(mu_);
      call->inner = launch();
      live_.push_back(call);
    }
    cv_.notify_one();
    return std::make_shared<BackgroundWork>(this, std::move(call));
  }

  // Under the lock: tests c once; rethrows what the thread saw go wrong.
  bool check(Call& c) {
    if (c.error) std::rethrow_exception(c.error);
    if (!c.done && c.inner->test()) c.done = true;
    return c.done;
  }

  void run() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || !live_.empty(); });
      if (stop_) return;
      for (auto it = live_.begin(); it != live_.end();) {
        Call& c = **it;
        bool finished = c.done;
        if (!finished && !c.error) {
          try {
            finished = check(c);
            if (finished) ++completed_in_background_;
          } catch (...) {
            c.error = std::current_exception();
          }
        }
        it = finished || c.error ? live_.erase(it) : it + 1;
      }
      if (live_.empty()) continue;
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
  std::atomic<int64_t> completed_in_background_{0};
  std::thread thread_;  // last: starts after everything it uses exists
};

bool BackgroundWork::test() {
  const bool done = owner_->test(*call_);
  if (done && completed_ms_ == 0) completed_ms_ = call_->inner->completed_ms() ? call_->inner->completed_ms() : steady_ms();
  return done;
}

void BackgroundWork::wait(double timeout_s) {
  owner_->wait(*call_, timeout_s);
  if (completed_ms_ == 0) completed_ms_ = call_->inner->completed_ms() ? call_->inner->completed_ms() : steady_ms();
}

}  // namespace

std::unique_ptr<DpAlgorithm> progress_in_background(std::unique_ptr<DpAlgorithm> inner, double poll_ms) {
  return std::make_unique<BackgroundAlgorithm>(std::move(inner), poll_ms);
}

}  // namespace aq
