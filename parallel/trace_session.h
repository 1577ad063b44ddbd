// trace_session.h — --trace for a whole job: the start-up checks, the alignment of the ranks' clocks, and the
// one merged Chrome-trace file (runtime/trace.h records each rank's spans).
//
// Clock alignment (NTP-style, with rank 0 as the reference): after a barrier, every rank r > 0 in turn makes a
// few round trips with rank 0 over the world group: r notes its clock t1 and sends a ping, rank 0 answers with
// its own clock T, r notes t2 on receipt. Assuming the two legs take equally long, rank 0's clock at r's
// midpoint (t1 + t2) / 2 was T, so offset = T − (t1 + t2) / 2; the round trip with the smallest t2 − t1 is kept,
// and its half is the bound on the error. Every timestamp a rank writes is its own clock + offset − origin,
// where the origin is rank 0's clock when the alignment ended, so the trace starts near 0 on every rank.
// (One host: every rank reads the same CLOCK_MONOTONIC, so the measured offsets show the method's own error.)
//
// Output: each rank serialises its events (pid = world rank, process named with host, centre and tp/dp
// coordinates); ranks send them to rank 0 in rank order, and rank 0 writes ONE file, atomically.
#pragma once

#include <string>

#include "parallel/context.h"
#include "runtime/trace.h"

namespace aq {

// Records an asynchronous collective that has completed (its Work's launch and completion stamps) as a span on
// `stream`; nothing unless trace::active().
void trace_work(trace::Stream stream, std::string name, const Work& work, trace::Args args = {});

class TraceSession {
 public:
  // An empty path: tracing off, and every call below does nothing. Otherwise collective (every rank, after
  // ctx.configure()): rank 0 checks that `path` can be written, and a failure ends every rank with that one
  // line (an AgreedError); then the clocks are aligned and the recorder is enabled for `window`.
  TraceSession(ParallelContext& ctx, std::string path, trace::StepWindow window, std::string program);
  ~TraceSession();
  TraceSession(const TraceSession&) = delete;
  TraceSession& operator=(const TraceSession&) = delete;

  // Collective: gathers every rank's spans to rank 0, which writes the file and logs a one-line summary.
  void write();

 private:
  void align_clocks();
  ParallelContext& ctx_;
  std::string path_, program_;
  trace::StepWindow window_;
  int64_t offset_ns_ = 0;  // added to this rank's steady clock (see above)
  double clock_offset_us_ = 0, clock_rtt_us_ = 0;
  bool written_ = false;
};

}  // namespace aq
