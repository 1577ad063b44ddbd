// bench.h — the aq-bench subcommands that live outside aq_bench.cpp (communication across centres and the cost
// model), and the helpers they share. aq_bench.cpp only dispatches to them.
//   aq-bench collectives   nccl-tests-style table of the data-parallel algorithms × compression (under mpirun)
//   aq-bench calibrate     α–β per link class, compute per token, codec throughput → JSON (under mpirun)
//   aq-bench predict       the cost model: a layout's step time and WAN bytes, and what-if tables
//   aq-bench wan           the training config on the WAN testbed under flat/hier/bf16/int8, measured and predicted
//   aq-bench wan-worker    one configuration of `wan` (started by it under the testbed's mpirun)
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "parallel/cost_model.h"

namespace aq {
class ParallelContext;
}

namespace aq::bench {

int collectives_main(int argc, char** argv);
int calibrate_main(int argc, char** argv);
int predict_main(int argc, char** argv);
int wan_main(int argc, char** argv);
int wan_worker_main(int argc, char** argv);

// The training shape that `wan`, `calibrate` and `predict` share (aq-train flags).
struct TrainShape {
  int layers = 4, heads = 4, dim = 128, vocab = 256, seq = 64, batch = 8;
  double params() const;  // GPT-2 parameters of this shape (tied head), as aq-train counts them
};
TrainShape shape_for(const std::string& config);  // "tiny" | "small"; throws aq::Error with the choices

// Measures a Calibration on the world of ctx (configured by the caller). Collective: every rank calls it; the
// result is meaningful on every rank. Prints what it measured on rank 0.
struct CalibrateOptions {
  std::string config = "tiny", data;  // data: training shards (glob); empty: a random-token shard
  int steps = 10, threads = 1;        // one-process training steps per rank (the first two are not timed)
  double max_bytes = 2 * 1048576.0;   // largest ping-pong message
  bool compute_only = false;          // skip the links (a compute figure taken just before a measured run)
};
cost::Calibration calibrate(ParallelContext& ctx, const CalibrateOptions& o);

// What-if tables for jobs the testbed cannot hold (GPT-2 124M, 1.5B, a 7B shape; 2-8 centres of 8-512 GPUs;
// 100 Mbit/s-100 Gbit/s between centres; flat ring vs hier vs hier+int8), assumptions printed first.
// wan_latency_s: one message's latency across centres.
void print_what_if(double wan_latency_s);

// Calibration files (JSON): what was measured, with its source, so a prediction can say what it assumed.
nlohmann::ordered_json calibration_to_json(const cost::Calibration& c);
cost::Calibration calibration_from_json(const nlohmann::json& j, const std::string& where);
cost::Calibration load_calibration(const std::string& path);
void save_calibration(const cost::Calibration& c, const std::string& path);
std::string describe_calibration(const cost::Calibration& c);  // one line per link class, compute, codecs

// "100mbit", "1gbit", "500kbit" → bytes per second (tc units, k = 1000). Throws aq::Error otherwise.
double rate_bytes_per_s(const std::string& rate);
std::string format_rate(double bytes_per_s);  // "100 Mbit/s"
// "4K:64M" (×4 steps), "4096,65536", "1M": byte sizes with K/M/G (binary) suffixes.
std::vector<double> parse_sizes(const std::string& s);
std::string format_bytes(double b);  // "4 KiB", "64 MiB", "3.2 MB" style
double median(std::vector<double> v);
// Runs a shell command; returns its exit status (−1 when it cannot run) and its standard output.
int run_capture(const std::string& cmd, std::string& out);
// This executable's path (for launching itself under mpirun).
std::string self_exe(const char* argv0);

}  // namespace aq::bench
