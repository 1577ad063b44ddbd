// op_profile.h — where a training step's time goes: wall time per named region, for aq-bench --profile.
//
// The model, the kernels and the trainer open a ProfileScope around each piece of a step ("fwd gemm c_fc",
// "bwd layernorm", "adamw"). Times are exclusive: a scope nested inside another (the classifier's GEMMs inside
// the classifier) is charged to itself only, so the entries add up to the profiled time without double counting.
// CPU kernels are synchronous, so a wall clock around the call is the kernel's time; on a GPU the launches are
// asynchronous and these times would be meaningless (aq-bench refuses --profile there).
//
// Off by default: a disabled scope is one load and one branch. Not thread-safe: scopes are opened by the thread
// that drives the step (the master thread), never inside OpenMP regions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace aq {

class OpProfile {
 public:
  struct Entry {
    double ms = 0;  // exclusive wall time, summed over calls
    int64_t calls = 0;
  };
  // Steps whose scopes are recorded: the first `skip` calls of begin_step() are ignored (warm-up steps).
  explicit OpProfile(int skip_steps = 0) : skip_(skip_steps) {}
  void begin_step() { ++steps_seen_; }
  bool recording() const { return steps_seen_ > skip_; }
  int64_t recorded_steps() const { return steps_seen_ > skip_ ? steps_seen_ - skip_ : 0; }
  void add(const char* name, double ms) {
    Entry& e = entries_[name];
    e.ms += ms;
    ++e.calls;
  }
  const std::map<std::string, Entry>& entries() const { return entries_; }

 private:
  int skip_;
  int64_t steps_seen_ = 0;
  std::map<std::string, Entry> entries_;
};

// The profile scopes report to (null: profiling off). Set by aq-bench --profile around the run.
void set_active_profile(OpProfile* p);
OpProfile* active_profile();
// Called at the start of every training step (by the trainer) so that warm-up steps can be skipped.
void profile_begin_step();

class ProfileScope {
 public:
  explicit ProfileScope(const char* name) : name_(active_profile() ? name : nullptr) {
    if (name_) start();
  }
  ~ProfileScope() {
    if (name_) stop();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  void start();
  void stop();
  const char* name_;
  double t0_ = 0, child_ms_ = 0;
  ProfileScope* parent_ = nullptr;
};

// Runs f inside a ProfileScope named `name`.
template <typename F>
inline void profiled(const char* name, F&& f) {
  ProfileScope scope(name);
  f();
}

}  // namespace aq
