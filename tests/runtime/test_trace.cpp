// test_trace.cpp — the --trace recorder (runtime/trace.h): the step window, proper nesting of the spans on
// every (pid, tid) even when asynchronous spans of one stream overlap, monotone timestamps, thread safety, and
// the refusal of bad --trace-steps values.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "runtime/error.h"
#include "runtime/trace.h"

namespace {

using aq::trace::Span;
using aq::trace::Stream;

nlohmann::json parse_events(std::vector<aq::trace::Event> ev, int pid = 0, int64_t offset_ns = 0) {
  return nlohmann::json::parse("[" + aq::trace::events_json(std::move(ev), pid, offset_ns) + "]");
}

// Every pair of complete events on one (pid, tid) is either disjoint or nested; ts never decreases.
void expect_proper(const nlohmann::json& events) {
  std::map<std::pair<int, int>, std::vector<std::pair<double, double>>> by_thread;
  double last_ts = -1e300;
  for (const auto& e : events) {
    if (e["ph"] != "X") continue;
    const double ts = e["ts"].get<double>(), end = ts + e["dur"].get<double>();
    EXPECT_GE(ts, last_ts) << e.dump();
    last_ts = ts;
    by_thread[{e["pid"].get<int>(), e["tid"].get<int>()}].emplace_back(ts, end);
  }
  for (const auto& [key, spans] : by_thread)
    for (size_t i = 0; i < spans.size(); ++i)
      for (size_t j = i + 1; j < spans.size(); ++j) {
        const auto [a0, a1] = spans[i];
        const auto [b0, b1] = spans[j];
        const bool disjoint = a1 <= b0 || b1 <= a0;
        const bool nested = (a0 <= b0 && b1 <= a1) || (b0 <= a0 && a1 <= b1);
        EXPECT_TRUE(disjoint || nested) << "tid " << key.second << ": [" << a0 << ", " << a1 << ") and [" << b0 << ", "
                                        << b1 << ") overlap partially";
      }
}

struct TraceOn {
  explicit TraceOn(aq::trace::StepWindow w) { aq::trace::enable(w); }
  ~TraceOn() { aq::trace::disable(); }
};

TEST(Trace, StepWindowParsing) {
  auto w = aq::trace::parse_step_window("2:4");
  EXPECT_EQ(w.first, 2);
  EXPECT_EQ(w.last, 4);
  w = aq::trace::parse_step_window("7");
  EXPECT_EQ(w.first, 7);
  EXPECT_EQ(w.last, 7);
  for (const char* bad : {"", ":", "4:2", "0:3", "a:b", "2:", ":3", "-1:2", "2:4:6", "1.5:3", "99999999999999999:1"})
    EXPECT_THROW(aq::trace::parse_step_window(bad), aq::Error) << bad;
  try {
    aq::trace::parse_step_window("5:2");
  } catch (const aq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 <= A <= B"), std::string::npos) << e.what();
  }
}

TEST(Trace, DisabledRecordsNothing) {
  aq::trace::disable();
  aq::trace::set_step(3);
  EXPECT_FALSE(aq::trace::active());
  { Span s(Stream::Compute, "nothing"); }
  aq::trace::record(Stream::DataParallel, "nothing", 0, 10);
  EXPECT_TRUE(aq::trace::take_events().empty());
}

TEST(Trace, OnlyStepsInsideTheWindow) {
  TraceOn on({2, 3});
  for (int64_t step = 1; step <= 5; ++step) {
    aq::trace::StepSpan st(step);
    EXPECT_EQ(aq::trace::active(), step >= 2 && step <= 3) << step;
    Span s(Stream::Compute, "work", static_cast<int>(step));
  }
  const auto ev = aq::trace::take_events();
  ASSERT_EQ(ev.size(), 4u);  // "step 2", "work 2", "step 3", "work 3"
  std::map<std::string, int64_t> names;
  for (const auto& e : ev) names[e.name] = e.step;
  EXPECT_EQ(names.count("work 1") + names.count("work 4") + names.count("step 5"), 0u);
  EXPECT_EQ(names["work 2"], 2);
  EXPECT_EQ(names["step 3"], 3);
  EXPECT_EQ(names["work 3"], 3);
}

TEST(Trace, ScopedSpansNestOnTheComputeThread) {
  TraceOn on({1, 1});
  aq::trace::set_step(1);
  {
    aq::trace::StepSpan st(1);
    {
      Span fwd(Stream::Compute, "forward");
      for (int l = 0; l < 3; ++l) {
        Span blk(Stream::Compute, "fwd block", l);
        Span tp(Stream::TensorParallel, "attn.c_proj output");
        tp.arg("bytes", 4096);
      }
    }
    Span bwd(Stream::Compute, "backward");
    for (int l = 2; l >= 0; --l) {
      Span blk(Stream::Compute, "bwd block", l);
      blk.end();  // closed early (before the bucket launch), and not again by the destructor
      blk.end();
    }
  }
  auto ev = aq::trace::take_events();
  EXPECT_EQ(ev.size(), 1u + 1 + 3 + 3 + 1 + 3);
  const nlohmann::json j = parse_events(std::move(ev), 5, 1000);
  expect_proper(j);
  int spans = 0;
  for (const auto& e : j) {
    EXPECT_EQ(e["pid"], 5);
    if (e["ph"] != "X") continue;
    ++spans;
    if (e["cat"] == "compute") {
      EXPECT_EQ(e["tid"], 0) << e.dump();  // scoped spans never need a second lane
    }
    if (e["cat"] == "tp collectives") {
      EXPECT_EQ(e["tid"], 2);
      EXPECT_EQ(e["args"]["bytes"], 4096);
    }
    EXPECT_EQ(e["args"]["step"], 1);
  }
  EXPECT_EQ(spans, 12);
}

TEST(Trace, OverlappingAsyncSpansGetTheirOwnLanes) {
  TraceOn on({1, 1});
  aq::trace::set_step(1);
  // Three buckets in flight at once (launch → completion, emitted at completion, out of order), and a
  // cross-centre stage nested in one of them in time (another stream: unaffected).
  aq::trace::record(Stream::DataParallel, "bucket 1 all-reduce", 5000, 15000, {{"bytes", 64}});
  aq::trace::record(Stream::DataParallel, "bucket 0 all-reduce", 0, 10000, {{"bytes", 128}});
  aq::trace::record(Stream::DataParallel, "bucket 2 all-reduce", 12000, 20000);
  aq::trace::record(Stream::DataParallel, "bucket 3 all-reduce", 10000, 11000);  // starts as bucket 0 ends
  aq::trace::record(Stream::CrossCentre, "hier: intra-centre reduce-scatter", 1000, 3000);
  aq::trace::record(Stream::Compute, "inverted", 500, 100);  // end before start is clamped to an empty span
  const nlohmann::json j = parse_events(aq::trace::take_events(), 0, -1000);
  expect_proper(j);
  std::map<std::string, int> tid;
  std::map<int, std::string> thread_names;
  for (const auto& e : j) {
    if (e["ph"] == "M" && e["name"] == "thread_name") thread_names[e["tid"].get<int>()] = e["args"]["name"];
    if (e["ph"] == "X") tid[e["name"].get<std::string>()] = e["tid"].get<int>();
  }
  EXPECT_EQ(tid["bucket 0 all-reduce"], 1);
  EXPECT_EQ(tid["bucket 1 all-reduce"], 101);  // overlaps bucket 0 partially: the second lane
  EXPECT_EQ(tid["bucket 2 all-reduce"], 1);    // bucket 0 has ended: back on the first lane
  EXPECT_EQ(tid["bucket 3 all-reduce"], 1);
  EXPECT_EQ(tid["hier: intra-centre reduce-scatter"], 3);
  EXPECT_EQ(thread_names[0], "compute");
  EXPECT_EQ(thread_names[1], "dp buckets");
  EXPECT_EQ(thread_names[101], "dp buckets #2");
  EXPECT_EQ(thread_names[2], "tp collectives");
  EXPECT_EQ(thread_names[3], "cross-centre / outer");
  for (const auto& e : j)
    if (e["ph"] == "X" && e["name"] == "bucket 0 all-reduce") {
      EXPECT_DOUBLE_EQ(e["ts"].get<double>(), -1.0);  // the offset applies: (0 − 1000) ns = −1 µs
      EXPECT_DOUBLE_EQ(e["dur"].get<double>(), 10.0);
      EXPECT_EQ(e["args"]["bytes"], 128);
    } else if (e["ph"] == "X" && e["name"] == "inverted") {
      EXPECT_EQ(e["dur"].get<double>(), 0.0);
    }
}

TEST(Trace, ThreadsMayRecordAtOnce) {
  TraceOn on({1, 1});
  aq::trace::set_step(1);
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([t] {
      for (int i = 0; i < 500; ++i) {
        const int64_t t0 = aq::trace::now_ns();
        aq::trace::record(t % 2 ? Stream::DataParallel : Stream::CrossCentre, "async", t0, t0 + 1000);
      }
    });
  for (auto& th : pool) th.join();
  const auto ev = aq::trace::take_events();
  EXPECT_EQ(ev.size(), 2000u);
  expect_proper(parse_events(ev));
}

}  // namespace
