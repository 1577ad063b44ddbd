// trace_session.cpp — start-up checks, clock alignment and the merged trace file (trace_session.h).
#include "parallel/trace_session.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "runtime/file_io.h"
#include "runtime/log.h"

namespace aq {
namespace {
// Round trips per rank: the best of a few filters out a ping that met a descheduled peer (oversubscribed ranks).
constexpr int kPings = 8;

std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}
}  // namespace

void trace_work(trace::Stream stream, std::string name, const Work& work, trace::Args args) {
  if (!trace::active() || work.completed_ms() <= 0) return;
  trace::record(stream, std::move(name), trace::ns_from_steady_ms(work.started_ms()),
                trace::ns_from_steady_ms(work.completed_ms()), std::move(args), work.name());
}

TraceSession::TraceSession(ParallelContext& ctx, std::string path, trace::StepWindow window, std::string program)
    : ctx_(ctx), path_(std::move(path)), program_(std::move(program)), window_(window) {
  if (path_.empty()) return;
  // Only rank 0 writes the file; its failure reaches every rank, so all exit with the same single line.
  std::string error;
  if (ctx_.world_rank() == 0) {
    try {
      check_writable(path_, "--trace");
    } catch (const Error& e) {
      error = e.what();
    }
  }
  error = ctx_.agree_on_failure(error);
  if (!error.empty()) throw AgreedError(error);
  align_clocks();
  trace::enable(window_);
  log_info("trace: recording steps ", window_.first, "-", window_.last, " into ", path_);
}

TraceSession::~TraceSession() {
  if (!path_.empty()) trace::disable();
}

void TraceSession::align_clocks() {
  Backend& w = ctx_.world();
  const int n = ctx_.world_size(), me = ctx_.world_rank();
  if (n > 1) w.barrier({"trace clock alignment"})->wait();
  if (me == 0) {
    // Every rank sends the same number of pings in turn, so rank 0 answers them in rank order.
    for (int r = 1; r < n; ++r)
      for (int k = 0; k < kPings; ++k) {
        double ping = 0;
        w.recv(&ping, 1, DType::F64, r, {"trace clock ping"})->wait();
        double t = static_cast<double>(trace::now_ns());
        w.send(&t, 1, DType::F64, r, {"trace clock answer"})->wait();
      }
  } else {
    double best_rtt = std::numeric_limits<double>::infinity(), best_offset = 0;
    for (int k = 0; k < kPings; ++k) {
      const int64_t t1 = trace::now_ns();
      double ping = static_cast<double>(t1), t0 = 0;
      w.send(&ping, 1, DType::F64, 0, {"trace clock ping"})->wait();
      w.recv(&t0, 1, DType::F64, 0, {"trace clock answer"})->wait();
      const int64_t t2 = trace::now_ns();
      const double rtt = static_cast<double>(t2 - t1);
      if (rtt < best_rtt) {
        best_rtt = rtt;
        // Rank 0's clock minus ours: differences of int64 first, so the double keeps every nanosecond.
        best_offset = t0 - static_cast<double>(t1) - static_cast<double>(t2 - t1) / 2;
      }
    }
    offset_ns_ = static_cast<int64_t>(std::llround(best_offset));
    clock_offset_us_ = best_offset / 1000.0;
    clock_rtt_us_ = best_rtt / 1000.0;
  }
  // The origin: rank 0's clock now.
  double origin = me == 0 ? static_cast<double>(trace::now_ns()) : 0;
  if (n > 1) w.broadcast(&origin, 1, DType::F64, 0, {"trace origin"})->wait();
  offset_ns_ -= static_cast<int64_t>(std::llround(origin));
}

void TraceSession::write() {
  if (path_.empty() || written_) return;
  written_ = true;
  const int me = ctx_.world_rank(), n = ctx_.world_size();
  const int64_t dropped = trace::dropped_events();
  std::vector<trace::Event> events = trace::take_events();
  trace::disable();
  // This rank's process: pid = world rank, named with where it runs and its coordinates.
  const Topology& topo = ctx_.topology();
  const std::string centre =
      topo.centres() > 0 ? topo.centre_names[static_cast<size_t>(ctx_.centre())] : std::string("0");
  const std::string pname = str("rank ", me, " | ", ctx_.host(), " | centre ", centre, " | tp ", ctx_.tp_rank(), "/",
                                ctx_.tp(), " | dp ", ctx_.dp_rank(), "/", ctx_.dp());
  std::string text =
      str("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":", me, ",\"tid\":0,\"args\":{\"name\":", quoted(pname),
          "}},\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":", me, ",\"tid\":0,\"args\":{\"sort_index\":", me,
          "}},\n");
  const size_t spans = events.size();
  text += trace::events_json(std::move(events), me, offset_ns_);

  Backend& w = ctx_.world();
  if (me != 0) {
    double head[4] = {static_cast<double>(text.size()), clock_offset_us_, clock_rtt_us_, static_cast<double>(spans)};
    w.send(head, 4, DType::F64, 0, {"trace events size"})->wait();
    text.resize((text.size() + 1) / 2 * 2, ' ');  // sent as 16-bit words (the backends' smallest type)
    w.send(text.data(), static_cast<int64_t>(text.size() / 2), DType::U16, 0, {"trace events"})->wait();
    if (dropped > 0) log_line_all(str("trace: rank ", me, " dropped ", dropped, " spans over the cap"));
    return;
  }
  AtomicWriter out(path_);
  const std::string head = "{\"traceEvents\":[\n";
  out.write(head.data(), head.size());
  out.write(text.data(), text.size());
  double worst_offset = 0, worst_rtt = 0;
  size_t total = spans;
  std::string buf;
  for (int r = 1; r < n; ++r) {
    double h[4] = {0, 0, 0, 0};
    w.recv(h, 4, DType::F64, r, {"trace events size"})->wait();
    const size_t bytes = static_cast<size_t>(h[0]);
    buf.assign((bytes + 1) / 2 * 2, ' ');
    w.recv(buf.data(), static_cast<int64_t>(buf.size() / 2), DType::U16, r, {"trace events"})->wait();
    out.write(",\n", 2);
    out.write(buf.data(), bytes);
    worst_offset = std::max(worst_offset, std::fabs(h[1]));
    worst_rtt = std::max(worst_rtt, h[2]);
    total += static_cast<size_t>(h[3]);
  }
  nlohmann::ordered_json other = {
      {"program", program_},
      {"ranks", n},
      {"steps", str(window_.first, ":", window_.last)},
      {"clock_alignment", n == 1 ? "none needed (one rank); ts is its steady clock in microseconds since the start"
                                 : "ping with rank 0 (NTP-style, best of 8 round trips per rank); ts is rank 0's "
                                   "steady clock in microseconds since the alignment"},
      {"largest_clock_offset_us", worst_offset},
      {"worst_round_trip_us", worst_rtt}};
  const std::string tail = "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":" + other.dump() + "}\n";
  out.write(tail.data(), tail.size());
  out.commit();
  if (dropped > 0) log_info("trace: rank 0 dropped ", dropped, " spans over the cap (narrow --trace-steps)");
  log_info("trace: wrote ", path_, ": ", total, " spans from ", n, n == 1 ? " rank" : " ranks", ", steps ",
           window_.first, "-", window_.last,
           n > 1 ? str("; clocks aligned to rank 0 (largest offset ", worst_offset, " us, worst best-round-trip ",
                       worst_rtt, " us)")
                 : "",
           "; open it in https://ui.perfetto.dev");
}

}  // namespace aq
