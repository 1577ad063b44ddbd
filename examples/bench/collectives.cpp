// collectives.cpp — `aq-bench collectives`: an nccl-tests-style table of the data-parallel algorithms
// (parallel/algo/: flat, hier) × wire compression over a size sweep, on the world mpirun started.
//
//   mpirun -np 4 build/bin/aq-bench collectives --centres 2 --sizes 4K:64M --algos flat,hier --compress none,int8
// Per size S (bytes of fp32): time = mean over --iters calls after --warmup (each rank's mean, the slowest rank
// reported), algbw = S/t, busbw = algbw·2(n−1)/n (nccl-tests' all-reduce factor, n = DP ranks), and wan_bytes
// = what all ranks sent to other centres per call, from the algorithm's own WanStats (hier counts its messages
// exactly; flat reports a ring's bytes, since the backend picks its algorithm). Every rank contributes
// (r+1)·(1 + (i mod 7)/8) at element i, so the first call's result is checked against the closed form; `maxerr`
// is its largest relative error (0 for fp32, about 2^-8 for bf16 and int8's per-block steps of 1/127).
// Ranks refill their buffer and meet at a barrier before every timed call, so only the call is timed.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "examples/bench/bench.h"
#include "examples/main_guard.h"
#include "parallel/context.h"
#include "runtime/file_io.h"
#include "runtime/log.h"
#include "runtime/sysinfo.h"

namespace aq::bench {
namespace {

struct Options {
  std::string sizes = "4K:64M", algos = "flat,hier", compress = "none,bf16,int8", centres = "auto", csv;
  int iters = 20, warmup = 2;
  double timeout = 300;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

void fill(std::vector<float>& buf, int rank) {
  for (size_t i = 0; i < buf.size(); ++i)
    buf[i] = static_cast<float>((rank + 1) * (1.0 + static_cast<double>(i % 7) / 8));
}

void run(ParallelContext& ctx, const Options& o) {
  AQ_CHECK(o.iters >= 1 && o.warmup >= 1, "--iters and --warmup must be >= 1 (got ", o.iters, " and ", o.warmup, ")");
  const std::vector<double> sizes = parse_sizes(o.sizes);
  const std::vector<std::string> algos = split_list(o.algos), codecs = split_list(o.compress);
  for (const auto& a : algos)
    AQ_CHECK(a == "flat" || a == "hier", "--algos entries are flat or hier (got \"", a, "\")");
  for (const auto& c : codecs) wan_codec_from_name(c);
  if (!o.csv.empty()) check_writable(o.csv, "CSV");  // every rank: the check must fail everywhere or nowhere
  ctx.configure(1, o.timeout, o.centres);
  const Topology& topo = ctx.topology();
  const int n = ctx.dp(), rank = ctx.world_rank();
  int64_t max_count = 0;
  for (double s : sizes) max_count = std::max<int64_t>(max_count, static_cast<int64_t>(s / 4));
  std::vector<float> buf(static_cast<size_t>(max_count));
  const double p = n, expect_base = p * (p + 1) / 2;

  std::ofstream csv;
  if (!o.csv.empty() && rank == 0) {
    csv.open(o.csv);
    csv << "algo,compress,ranks,centres,bytes,count,time_us,algbw_gbs,busbw_gbs,wan_bytes,max_rel_err\n";
  }
  if (rank == 0)
    std::printf(
        "# aq-bench collectives: %d ranks, %s; %d warm-up + %d timed calls per size; time = slowest rank's "
        "mean\n# busbw = algbw * 2(n-1)/n; wan_bytes = bytes all ranks sent to other centres per call\n",
        n, topo.describe().c_str(), o.warmup, o.iters);
  for (const std::string& algo : algos)
    for (const std::string& cname : codecs) {
      const WanCodec codec = wan_codec_from_name(cname);
      if (algo == "flat" && codec != WanCodec::None) {
        if (rank == 0)
          std::printf("\n# flat with %s: skipped (compression applies to hier's cross-centre hop)\n", cname.c_str());
        continue;
      }
      DpAlgoOptions ao;
      ao.algo = algo;
      ao.codec = codec;
      ao.buffer_size = max_count;
      std::unique_ptr<DpAlgorithm> dp = make_dp_algorithm(ao, ctx.dp_groups());
      if (rank == 0) {
        std::printf("\n# %s, wan-compress %s\n", dp->describe().c_str(), cname.c_str());
        std::printf("%12s %10s %11s %11s %11s %14s %9s\n", "size", "count", "time(us)", "algbw(GB/s)", "busbw(GB/s)",
                    "wan_bytes", "maxerr");
      }
      for (double s : sizes) {
        const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(s / 4));
        const double bytes = 4.0 * static_cast<double>(count);
        std::vector<float> data(buf.begin(), buf.begin() + count);
        double err = 0;
        for (int w = 0; w < o.warmup; ++w) {
          fill(data, rank);
          dp->all_reduce(data.data(), count, 0, {"bench warm-up"})->wait();
          if (w == 0)
            for (int64_t i = 0; i < count; ++i) {
              const double want = expect_base * (1.0 + static_cast<double>(i % 7) / 8);
              err = std::max(err, std::fabs(data[static_cast<size_t>(i)] - want) / want);
            }
        }
        dp->take_wan_stats();
        double total_ms = 0;
        for (int it = 0; it < o.iters; ++it) {
          fill(data, rank);
          ctx.world().barrier({"bench barrier"})->wait();
          const double t0 = steady_ms();
          dp->all_reduce(data.data(), count, 0, {"bench all-reduce"})->wait();
          total_ms += steady_ms() - t0;
        }
        // Slowest rank's mean time, and the job's WAN bytes (sum) and largest error (max).
        double mx[2] = {total_ms / o.iters, err}, sum = dp->take_wan_stats().bytes / o.iters;
        ctx.world().all_reduce_sync(mx, 2, DType::F64, {"bench: slowest rank", ReduceOp::Max});
        ctx.world().all_reduce_sync(&sum, 1, DType::F64, {"bench: wan bytes"});
        const double t_s = mx[0] / 1e3, algbw = bytes / t_s / 1e9, busbw = algbw * 2.0 * (n - 1) / n;
        if (rank == 0) {
          std::printf("%12s %10lld %11.1f %11.3f %11.3f %14.0f %9.2e\n", format_bytes(bytes).c_str(),
                      static_cast<long long>(count), t_s * 1e6, algbw, busbw, sum, mx[1]);
          std::fflush(stdout);
          if (csv.is_open())
            csv << algo << ',' << cname << ',' << n << ',' << topo.centres() << ',' << bytes << ',' << count << ','
                << t_s * 1e6 << ',' << algbw << ',' << busbw << ',' << sum << ',' << mx[1] << '\n';
        }
      }
    }
  if (csv.is_open()) {
    csv.close();
    std::printf("\nwrote %s\n", o.csv.c_str());
  }
}

}  // namespace

int collectives_main(int argc, char** argv) {
  Options o;
  CLI::App app{"aq-bench collectives: time, algbw, busbw and WAN bytes of the data-parallel all-reduce algorithms"};
  app.add_option("--sizes", o.sizes, "Bytes of fp32 per call: LO:HI (x4 steps) or a list, K/M/G suffixes")
      ->capture_default_str();
  app.add_option("--iters", o.iters, "Timed calls per size")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed calls first (the first one is checked)")->capture_default_str();
  app.add_option("--algos", o.algos, "flat,hier")->capture_default_str();
  app.add_option("--compress", o.compress, "some of none,bf16,int8,int4 (hier's cross-centre hop)")
      ->capture_default_str();
  app.add_option("--centres", o.centres, "auto (AQ_CENTRE) | N equal blocks of ranks")->capture_default_str();
  app.add_option("--comm-timeout", o.timeout, "Seconds a call may take before the job is ended")->capture_default_str();
  app.add_option("--csv", o.csv, "Also write the table here");
  ParallelContext& ctx = ParallelContext::init(&argc, &argv);
  return run_main("aq-bench collectives", app, argc, argv, ctx, [&] { run(ctx, o); });
}

}  // namespace aq::bench
