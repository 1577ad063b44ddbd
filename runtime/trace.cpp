// trace.cpp — the span recorder behind --trace and its Trace Event Format writer (trace.h).
#include "runtime/trace.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace aq::trace {

namespace detail {
std::atomic<bool> g_active{false};
}

namespace {
// A window of a few steps of a large model holds some ten thousand spans per rank; past this cap (a window of
// thousands of steps) spans are counted and dropped instead of filling memory and a file of gigabytes.
constexpr size_t kMaxEvents = 500000;

struct State {
  std::mutex mu;
  bool enabled = false;
  StepWindow window;
  int64_t step = 0;
  std::vector<Event> events;
  int64_t dropped = 0;
};
State& state() {
  static State s;
  return s;
}

// ns as microseconds with three decimals, exactly (so that ts + dur of a child never passes its parent's).
std::string us(int64_t ns) {
  char buf[48];
  const bool neg = ns < 0;
  const uint64_t a = neg ? static_cast<uint64_t>(-(ns + 1)) + 1 : static_cast<uint64_t>(ns);
  std::snprintf(buf, sizeof buf, "%s%llu.%03llu", neg ? "-" : "", static_cast<unsigned long long>(a / 1000),
                static_cast<unsigned long long>(a % 1000));
  return buf;
}

std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}
}  // namespace

const char* stream_name(Stream s) {
  switch (s) {
    case Stream::Compute:
      return "compute";
    case Stream::DataParallel:
      return "dp buckets";
    case Stream::TensorParallel:
      return "tp collectives";
    case Stream::CrossCentre:
      return "cross-centre / outer";
  }
  return "?";
}

StepWindow parse_step_window(const std::string& spec) {
  const std::string fix = " (expected A:B, the first and last step to record, 1 <= A <= B, e.g. 2:4)";
  const size_t colon = spec.find(':');
  const std::string a = spec.substr(0, colon), b = colon == std::string::npos ? a : spec.substr(colon + 1);
  auto number = [&](const std::string& t) -> int64_t {
    AQ_CHECK(
        !t.empty() && t.size() <= 15 && std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; }),
        "--trace-steps ", spec, ": \"", t, "\" is not a step number", fix);
    return std::stoll(t);
  };
  StepWindow w{number(a), number(b)};
  AQ_CHECK(w.first >= 1 && w.first <= w.last, "--trace-steps ", spec, " is not a window of steps", fix);
  return w;
}

void enable(StepWindow window) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.enabled = true;
  s.window = window;
  s.step = 0;
  s.events.clear();
  s.dropped = 0;
  detail::g_active.store(false);
}

void disable() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.enabled = false;
  s.events.clear();
  s.events.shrink_to_fit();
  detail::g_active.store(false);
}

bool enabled() { return state().enabled; }
StepWindow window() { return state().window; }
int64_t current_step() { return state().step; }

void set_step(int64_t step) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.step = step;
  detail::g_active.store(s.enabled && step >= s.window.first && step <= s.window.last);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t ns_from_steady_ms(double ms) { return static_cast<int64_t>(ms * 1e6); }

void record(Stream stream, std::string name, int64_t start_ns, int64_t end_ns, Args args, std::string detail) {
  if (!active()) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.events.size() >= kMaxEvents) {
    ++s.dropped;
    return;
  }
  s.events.push_back(
      Event{std::move(name), stream, start_ns, std::max(start_ns, end_ns), s.step, std::move(args), std::move(detail)});
}

std::vector<Event> take_events() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return std::move(s.events);
}

int64_t dropped_events() { return state().dropped; }

void Span::finish() {
  std::string name = index_ >= 0 ? std::string(name_) + " " + std::to_string(index_) : std::string(name_);
  record(stream_, std::move(name), start_ns_, now_ns(), std::move(args_));
}

StepSpan::StepSpan(int64_t step) : step_(step) {
  set_step(step);
  on_ = active();
  if (on_) start_ns_ = now_ns();
}

StepSpan::~StepSpan() {
  // The window may have closed inside the step only through a nested set_step (tests); record regardless.
  if (on_) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.events.size() < kMaxEvents)
      s.events.push_back(Event{"step " + std::to_string(step_), Stream::Compute, start_ns_, now_ns(), step_, {}, {}});
  }
}

std::string events_json(std::vector<Event> events, int pid, int64_t offset_ns) {
  std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    if (a.start_ns != b.start_ns) return a.start_ns < b.start_ns;
    return a.end_ns > b.end_ns;  // the enclosing span first
  });
  // Lanes per stream: each lane is a stack of open spans' end times; a span goes on the first lane where it
  // nests inside whatever is still open there (or where nothing is open).
  std::map<int, std::vector<std::vector<int64_t>>> lanes;  // stream → lanes → open ends
  std::vector<int> tid(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    auto& ls = lanes[static_cast<int>(e.stream)];
    size_t k = 0;
    for (;; ++k) {
      if (k == ls.size()) ls.emplace_back();
      auto& open = ls[k];
      while (!open.empty() && open.back() <= e.start_ns) open.pop_back();
      if (open.empty() || open.back() >= e.end_ns) {
        open.push_back(e.end_ns);
        break;
      }
    }
    tid[i] = static_cast<int>(e.stream) + 100 * static_cast<int>(k);
  }
  std::string out;
  auto meta = [&](const char* what, int t, const std::string& args) {
    if (!out.empty()) out += ",\n";
    out += str("{\"name\":\"", what, "\",\"ph\":\"M\",\"pid\":", pid, ",\"tid\":", t, ",\"args\":{", args, "}}");
  };
  for (int s = 0; s < kStreams; ++s) {
    const size_t n = std::max<size_t>(1, lanes[s].size());
    for (size_t k = 0; k < n; ++k) {
      const int t = s + 100 * static_cast<int>(k);
      const std::string name =
          k == 0 ? stream_name(static_cast<Stream>(s)) : str(stream_name(static_cast<Stream>(s)), " #", k + 1);
      meta("thread_name", t, "\"name\":" + quoted(name));
      meta("thread_sort_index", t, str("\"sort_index\":", s * 100 + static_cast<int>(k)));
    }
  }
  for (size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    out += ",\n";
    out += str("{\"name\":", quoted(e.name), ",\"cat\":\"", stream_name(e.stream),
               "\",\"ph\":\"X\",\"ts\":", us(e.start_ns + offset_ns), ",\"dur\":", us(e.end_ns - e.start_ns),
               ",\"pid\":", pid, ",\"tid\":", tid[i], ",\"args\":{\"step\":", e.step);
    for (const auto& [k, v] : e.args) out += str(",", quoted(k), ":", nlohmann::json(v).dump());
    if (!e.detail.empty()) out += ",\"what\":" + quoted(e.detail);
    out += "}}";
  }
  return out;
}

}  // namespace aq::trace
