// trace.h — this rank's timeline for --trace: spans in Chrome's Trace Event Format, opened in Perfetto.
//
// Every span sits on one of a few streams, which become the threads (tid) of the rank's process in the trace:
// the thread that computes (forward/backward per block, optimizer, data, evaluation, checkpoints), and one per
// kind of communication (data-parallel gradient buckets, tensor-parallel collectives, cross-centre stages and
// DiLoCo outer exchanges). Synchronous work is a scoped Span; asynchronous work (a bucket's all-reduce from its
// launch to its completion) is recorded afterwards with both timestamps by record(). Asynchronous spans of one
// stream may overlap each other (two buckets in flight); the writer then spreads them over extra lanes of that
// stream (tid = stream + 100·lane), so that every (pid, tid) holds properly nested spans, as the format wants.
//
// Bounded: only steps inside the window (--trace-steps A:B, 1-based, inclusive) are recorded; set_step() at
// the start of every step opens and closes it, and whatever runs after step s (evaluation, a save) belongs to
// step s. Off by default: a disabled Span is one relaxed atomic load and one branch. record() takes a mutex, so
// any thread may record. Times are this process's steady clock; parallel/trace_session.h aligns the ranks.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aq::trace {

// Thread ids of the streams in the trace.
enum class Stream : int { Compute = 0, DataParallel = 1, TensorParallel = 2, CrossCentre = 3 };
constexpr int kStreams = 4;
const char* stream_name(Stream s);  // "compute", "dp buckets", "tp collectives", "cross-centre / outer"

// Steps recorded, 1-based and inclusive.
struct StepWindow {
  int64_t first = 2, last = 4;
};
// "A:B" (or "A" for A:A) with 1 <= A <= B; throws aq::Error with the fix otherwise.
StepWindow parse_step_window(const std::string& spec);

using Args = std::vector<std::pair<const char*, double>>;  // numeric arguments; keys are string literals

struct Event {
  std::string name;
  Stream stream;
  int64_t start_ns, end_ns;  // this process's steady clock
  int64_t step;
  Args args;
  std::string detail;  // optional text argument ("what")
};

namespace detail {
extern std::atomic<bool> g_active;
}

// Turns recording control on for `window` (with an empty event list); recording starts once set_step() enters
// the window. disable() turns it off again and drops the events.
void enable(StepWindow window);
void disable();
bool enabled();
StepWindow window();
// Called at the start of every training step (1-based).
void set_step(int64_t step);
int64_t current_step();
// Whether spans are recorded now: enabled and inside the window.
inline bool active() { return detail::g_active.load(std::memory_order_relaxed); }

int64_t now_ns();                      // the steady clock, in nanoseconds
int64_t ns_from_steady_ms(double ms);  // a Work's started_ms()/completed_ms() (runtime/sysinfo.h steady_ms)

// Records a finished span (nothing unless active()). Thread-safe.
void record(Stream stream, std::string name, int64_t start_ns, int64_t end_ns, Args args = {}, std::string detail = {});
// The events recorded so far, and how many were dropped over the cap (a guard against a huge window).
std::vector<Event> take_events();
int64_t dropped_events();

// The rank's events as Trace Event Format objects (no surrounding brackets, comma-separated), with pid = rank:
// thread names for every (stream, lane) used, then the spans, sorted by start (longer first on ties), lanes
// assigned so that spans on one tid nest properly. offset_ns is added to every local timestamp (the clock
// alignment: it maps this process's steady clock onto rank 0's, minus the trace's origin).
std::string events_json(std::vector<Event> events, int pid, int64_t offset_ns);

// A scoped span on `stream`, recorded when it ends (or at end()). With index >= 0 the name is "name index".
class Span {
 public:
  explicit Span(Stream stream, const char* name, int index = -1)
      : name_(active() ? name : nullptr), stream_(stream), index_(index) {
    if (name_) start_ns_ = now_ns();
  }
  ~Span() { end(); }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  void arg(const char* key, double value) {
    if (name_) args_.emplace_back(key, value);
  }
  void end() {
    if (name_) finish();
    name_ = nullptr;
  }

 private:
  void finish();
  const char* name_;
  Stream stream_;
  int index_;
  int64_t start_ns_ = 0;
  Args args_;
};

// The span of a whole training step: sets the step (which may open or close the window) and covers the step.
class StepSpan {
 public:
  explicit StepSpan(int64_t step);
  ~StepSpan();
  StepSpan(const StepSpan&) = delete;
  StepSpan& operator=(const StepSpan&) = delete;

 private:
  int64_t step_, start_ns_ = 0;
  bool on_ = false;
};

}  // namespace aq::trace
