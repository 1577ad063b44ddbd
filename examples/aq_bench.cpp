// aq-bench — training throughput, memory and communication of named model configurations.
//
//   build/bin/aq-bench --config gpt2-124m --threads 2 --steps 5          one process on the CPU
//   build/bin/aq-bench --config gpt2-124m-1k --device cuda --dtype bf16 --steps 20 --warmup 3   one GPU
//   mpirun -np 2 build/bin/aq-bench --config tiny --tp 1 --threads 1     one layout, several ranks
//   build/bin/aq-bench scaling --config tiny --worlds 1,2 --tp 1,2       weak and strong scaling table
//   ... --trace out/bench.json [--trace-steps 2:4]    a timeline of every rank's steps (README: Reading a trace)
// Runs the real training path (aq::train: data loader, forward, backward, gradient reduction, clipping,
// AdamW) on a random-token shard and skips --warmup steps. It prints tokens/s (all ranks' tokens), peak
// resident memory, and per-step compute, total communication and exposed communication (what overlap did not
// hide). On a GPU it also prints the model-FLOPs utilisation, with the formula, the per-token figure and the peak
// it divided by (and where that peak came from), the peak device memory and the number of cudaMalloc calls in
// the step loop (expected 0: the caching allocator serves every step after the first). The last line is JSON for
// scripts (scripts/bench_vs_pytorch.py compares it with PyTorch; scripts/gpu_check.sh summarises it).
//
// MFU = (FLOPs/token x tokens/s) / (devices x peak), FLOPs/token = 6*N + 6*L*C*T: 6N for the forward and
// backward matmuls against every parameter (the tied LM head included; an untied input table, a Llama's
// embed_tokens, is a lookup and counts nothing: 6*(N - V*C)), 6*L*C*T for causal attention's QK^T
// and AV (forward 2*2*C*T/2 per token per layer, as only the lower triangle is useful; the backward twice
// that). PaLM and nanoGPT count the full square, 12*L*C*T, which reads ~7% higher at GPT-2 124M and T=1024.
//
// `scaling` launches one mpirun per layout, prints the table, and writes it as CSV plus a PNG plot
// (scripts/plot_scaling.py, Debian's python3-matplotlib).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "examples/bench/bench.h"
#include "examples/main_guard.h"
#ifdef AQ_HAVE_CUDA
#include "runtime/cuda/device.h"
#endif
#include "ops/cpu/blas.h"
#include "parallel/trace_session.h"
#include "runtime/blas_setup.h"
#include "runtime/data.h"
#include "runtime/log.h"
#include "runtime/op_profile.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"
#include "train/trainer.h"

namespace {

struct BenchConfig {
  const char* name;
  int layers, heads, dim, vocab, max_seq, seq, batch;
  // A Llama (RMSNorm, rotary theta 10000, SwiGLU of width ffn, kv_heads key/value heads, untied head) when ffn > 0.
  int kv_heads = 0, ffn = 0;
  bool tied = false;                   // a Llama's tie_word_embeddings
  const char* model_config = nullptr;  // --model-config: the model is this config.json's, as it is
};
constexpr BenchConfig kConfigs[] = {
    {"tiny", 4, 4, 128, 256, 128, 128, 16},
    {"gpt2-124m", 12, 12, 768, 50257, 1024, 256, 4},
    // GPT-2 124M at its full context, for one GPU: B=16 fits an 80 GB H100 with room to spare (--batch to change).
    {"gpt2-124m-1k", 12, 12, 768, 50257, 1024, 1024, 16},
    {"llama-tiny", 4, 4, 128, 256, 128, 128, 16, 2, 344},
    // GPT-2 124M's width and depth as a Llama with 4 kv heads, F = 2048 and a 32k vocabulary: 125M parameters
    // (untied head), the same tokens per step as gpt2-124m.
    {"llama-125m", 12, 12, 768, 32000, 1024, 256, 4, 4, 2048},
};
// "tiny (L4 H4 C128 V256 T128 B16) | gpt2-124m (…) | …", for --help, from the table itself.
std::string config_help() {
  std::string s;
  for (const auto& c : kConfigs)
    s += aq::str(s.empty() ? "" : " | ", c.name, " (", c.ffn ? "Llama " : "", "L", c.layers, " H", c.heads,
                 c.ffn ? aq::str(" KV", c.kv_heads, " F", c.ffn) : "", " C", c.dim, " V", c.vocab, " T", c.seq, " B",
                 c.batch, ")");
  return s;
}

const BenchConfig& find_config(const std::string& name) {
  for (const auto& c : kConfigs)
    if (name == c.name) return c;
  std::string names;
  for (const auto& c : kConfigs) names += aq::str(names.empty() ? "" : ", ", c.name);
  aq::fail(aq::str("unknown --config ", name, " (choose ", names, ")"));
}

// Dense peak of one GPU in TFLOPS, from NVIDIA's datasheets (their tensor-core figures "with sparsity" halved).
// bf16: BF16 tensor cores; fp32: plain FP32 (CUDA cores, no TF32; Aqueduct's fp32 GEMMs use CUBLAS_COMPUTE_32F).
// 0: not known here. Keys match whole words of the CUDA device name, most specific first ("H100 PCIe" before
// "H100"; "L4" does not match "L40S").
struct PeakEntry {
  const char* key;    // word(s) in cudaDeviceProp::name, e.g. "NVIDIA H100 80GB HBM3"
  const char* label;  // what is printed as the source
  double bf16, fp32;
};
constexpr PeakEntry kPeaks[] = {
    {"H100 PCIe", "H100 PCIe", 756.0, 51.2},
    {"H100 NVL", "H100 NVL", 835.0, 0},
    {"GH200", "GH200 (H100/H200 SXM clocks)", 989.4, 66.9},
    {"H200 NVL", "H200 NVL", 835.5, 0},
    {"H100", "H100 SXM", 989.4, 66.9},  // "NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 ..."
    {"H200", "H200 SXM", 989.4, 66.9},
    {"A100", "A100", 312.0, 19.5},
    {"L40S", "L40S", 362.0, 0},
    {"L4", "L4", 121.0, 0},
};

bool has_word(const std::string& name, const std::string& key) {
  for (size_t p = name.find(key); p != std::string::npos; p = name.find(key, p + 1)) {
    const size_t e = p + key.size();
    const bool left = p == 0 || !std::isalnum(static_cast<unsigned char>(name[p - 1]));
    const bool right = e == name.size() || !std::isalnum(static_cast<unsigned char>(name[e]));
    if (left && right) return true;
  }
  return false;
}

struct Peak {
  double tflops = 0;   // per device; 0 = unknown (MFU n/a)
  std::string source;  // where the figure came from, or why there is none
};

// The peak an MFU divides by: --peak-tflops when given, else the table for a GPU; none for a CPU.
Peak find_peak(bool gpu, const std::string& device_name, const std::string& dtype, double override_tflops) {
  if (override_tflops > 0) return {override_tflops, "--peak-tflops"};
  if (!gpu) return {0, "no peak table for CPUs; pass --peak-tflops X (dense TFLOPS of one rank's cores) for an MFU"};
  if (has_word(device_name, "MIG"))
    return {0, aq::str("\"", device_name, "\" is a MIG slice (a fraction of the GPU's peak); pass --peak-tflops X")};
  for (const PeakEntry& e : kPeaks)
    if (has_word(device_name, e.key)) {
      const double v = dtype == "bf16" ? e.bf16 : e.fp32;
      if (v > 0)
        return {v, aq::str("table: ", e.label, ", dense ",
                           dtype == "bf16" ? "BF16 tensor core" : "FP32 without tensor cores (no TF32)",
                           ", NVIDIA datasheet")};
      return {0, aq::str("aq-bench's table has no ", dtype, " peak for ", e.label, "; pass --peak-tflops X")};
    }
  return {0, aq::str("device \"", device_name, "\" is not in aq-bench's peak table; pass --peak-tflops X (dense ",
                     dtype, " TFLOPS of one GPU) for an MFU")};
}

struct BenchOptions {
  int batch = 0, threads = 0, steps = 5, warmup = 1, zero = 0;
  bool profile = false;
  std::string device = "cpu", dtype = "auto";
  double peak_tflops = 0;  // 0: from the table (GPUs only)
};

// The sgemm ceiling of a step: every distinct (transposes, M, N, K, leading dimensions, beta) GEMM the step made,
// timed alone with the same thread count in the same run, weighted by how often the step calls it. Its rate is
// the fastest the step's own matrix products go on this machine; the model's FLOP/s divided by it is the CPU MFU.
// It is measured between the steps: after every measured step, one pass times each shape again (outside the
// step's time). On a machine shared with other work the load moves both the step and the ceiling, so each step is
// divided by the ceiling measured right after it and the median of those ratios is reported; a single ceiling
// measured before or after the run swung the ratio by ±30% here. A square sgemm is timed in each pass for
// reference (bad shapes show as a ceiling well below it).
constexpr int kSquareN = 1536;
class CeilingMeter {
 public:
  // One pass after a step that took step_ms; `calls` holds every GEMM of the `steps_so_far` steps run so far.
  void pass(const std::map<aq::cpu::GemmShape, int64_t>& calls, int64_t steps_so_far, double step_ms) {
    double flops = 0, seconds = 0;
    for (const auto& [shape, n] : calls) {
      const double per_step = static_cast<double>(n) / static_cast<double>(steps_so_far);
      auto it = best_.find(shape);
      const int reps = it != best_.end() && it->second > 0.1 ? 1 : 2;  // big calls are steady; small ones vary
      const double t = aq::cpu::time_gemm(shape, reps);
      best_[shape] = it == best_.end() ? t : std::min(it->second, t);
      flops += per_step * shape.flops();
      seconds += per_step * t;
    }
    const aq::cpu::GemmShape sq{false, false, kSquareN, kSquareN, kSquareN, kSquareN, kSquareN, kSquareN, false};
    passes_.push_back({flops / seconds / 1e9, sq.flops() / aq::cpu::time_gemm(sq, 1) / 1e9, step_ms, flops, seconds});
    calls_per_step_ = 0;
    for (const auto& [shape, n] : calls) calls_per_step_ += static_cast<double>(n) / static_cast<double>(steps_so_far);
  }
  bool empty() const { return passes_.empty(); }

  // Results: medians over the passes; model_flops_per_step is what one step of this rank computes (model FLOPs).
  nlohmann::ordered_json summary(double model_flops_per_step) const {
    std::vector<double> ceil, square, mfu, share;
    for (const Pass& p : passes_) {
      ceil.push_back(p.ceiling_gflops);
      square.push_back(p.square_gflops);
      mfu.push_back(model_flops_per_step / (p.step_ms / 1000.0) / 1e9 / p.ceiling_gflops);
      share.push_back(p.gemm_seconds / (p.step_ms / 1000.0));
    }
    nlohmann::ordered_json per_shape = nlohmann::ordered_json::array();
    for (const auto& [shape, t] : best_)
      per_shape.push_back({{"op", aq::str(shape.trans_a ? "T" : "N", shape.trans_b ? "T" : "N")},
                           {"M", shape.M},
                           {"N", shape.N},
                           {"K", shape.K},
                           {"accumulate", shape.accumulate},
                           {"gflops", shape.flops() / t / 1e9}});
    return {{"gemm_shapes", static_cast<int64_t>(best_.size())},
            {"gemm_calls_per_step", calls_per_step_},
            {"gemm_gflop_per_step", passes_.back().gemm_flops / 1e9},
            {"sgemm_ceiling_gflops", median(ceil)},
            {"sgemm_ceiling_min_gflops", *std::min_element(ceil.begin(), ceil.end())},
            {"sgemm_ceiling_max_gflops", *std::max_element(ceil.begin(), ceil.end())},
            {"sgemm_square_gflops", median(square)},
            {"sgemm_square_n", kSquareN},
            {"cpu_mfu", median(mfu)},
            {"cpu_mfu_min", *std::min_element(mfu.begin(), mfu.end())},
            {"cpu_mfu_max", *std::max_element(mfu.begin(), mfu.end())},
            {"gemm_share_at_ceiling", median(share)},
            {"ceiling_passes", static_cast<int64_t>(passes_.size())},
            {"shapes", per_shape}};
  }

 private:
  struct Pass {
    double ceiling_gflops, square_gflops, step_ms, gemm_flops, gemm_seconds;
  };
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  std::map<aq::cpu::GemmShape, double> best_;  // fastest seconds per call seen for each shape
  std::vector<Pass> passes_;
  double calls_per_step_ = 0;
};

// The op family of a profile entry: "gemm" for every matrix product, else the name without its phase.
std::string op_family(const std::string& name) {
  if (name.find("gemm") != std::string::npos) return "gemm";
  for (const char* prefix : {"bwd recompute ", "fwd ", "bwd "})
    if (name.rfind(prefix, 0) == 0) return name.substr(std::string(prefix).size());
  return name;
}

// Per-step milliseconds of every profiled region, "other" (the step minus every region) and the families.
nlohmann::ordered_json profile_json(const aq::OpProfile& p, double step_ms) {
  const double steps = static_cast<double>(std::max<int64_t>(1, p.recorded_steps()));
  std::vector<std::pair<std::string, aq::OpProfile::Entry>> rows(p.entries().begin(), p.entries().end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  nlohmann::ordered_json ops = nlohmann::ordered_json::array(), fam = nlohmann::ordered_json::object();
  double covered = 0;
  for (const auto& [name, e] : rows) {
    const double ms = e.ms / steps;
    covered += ms;
    ops.push_back({{"op", name}, {"ms", ms}, {"pct", 100 * ms / step_ms}, {"calls", e.calls / steps}});
    const std::string f = op_family(name) == "classifier" ? "other" : op_family(name);
    fam[f] = fam.value(f, 0.0) + ms;
  }
  const double other = std::max(0.0, step_ms - covered);
  ops.push_back({{"op", "other (outside every region)"}, {"ms", other}, {"pct", 100 * other / step_ms}, {"calls", 1}});
  fam["other"] = fam.value("other", 0.0) + other;
  std::vector<std::pair<std::string, double>> fams;
  for (const auto& [k, v] : fam.items()) fams.emplace_back(k, v.get<double>());
  std::sort(fams.begin(), fams.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  nlohmann::ordered_json families = nlohmann::ordered_json::array();
  for (const auto& [k, v] : fams) families.push_back({{"family", k}, {"ms", v}, {"pct", 100 * v / step_ms}});
  return {{"step_ms", step_ms}, {"steps", p.recorded_steps()}, {"ops", ops}, {"families", families}};
}

// One measurement on the ranks of ctx. Collective: every rank calls it. Returns the JSON result (meaningful on
// rank 0; device memory and cudaMalloc counts are the maxima over ranks).
nlohmann::ordered_json run_once(aq::ParallelContext& ctx, const BenchConfig& bc, const BenchOptions& o) {
  const int batch = o.batch, steps = o.steps, warmup = o.warmup;
  // Each rank writes the same random shard (same seed) to its own temporary folder.
  char dir[] = "/tmp/aq-bench-XXXXXX";
  AQ_CHECK(::mkdtemp(dir) != nullptr, "cannot create a temporary directory under /tmp");
  const std::string shard = std::string(dir) + "/bench_000.bin";
  {
    aq::Rng rng(1234);
    std::vector<uint16_t> tok(static_cast<size_t>(batch) * bc.seq * ctx.dp() * (steps + warmup) + 1);
    for (auto& t : tok) t = static_cast<uint16_t>(rng.next_u64() % static_cast<uint64_t>(bc.vocab));
    aq::write_shard(shard, tok);
  }
  aq::TrainConfig cfg;
  if (bc.model_config) {
    cfg.model_config = bc.model_config;
  } else if (bc.ffn > 0) {  // a Llama: its Hugging Face config.json beside the shard
    aq::ModelConfig m;
    m.arch = aq::Arch::Llama;
    m.n_layer = bc.layers, m.n_head = bc.heads, m.n_kv_head = bc.kv_heads, m.n_embd = bc.dim, m.ffn_hidden = bc.ffn;
    m.vocab_size = bc.vocab, m.max_seq = bc.max_seq, m.tied_head = false;
    cfg.model_config = std::string(dir) + "/config.json";
    std::ofstream(cfg.model_config) << m.to_hf_config_json();
  } else {
    cfg.layers = bc.layers;
    cfg.heads = bc.heads;
    cfg.dim = bc.dim;
    cfg.vocab = bc.vocab;
    cfg.max_seq = bc.max_seq;
  }
  cfg.seq = bc.seq;
  cfg.batch = batch;
  cfg.steps = steps + warmup;
  cfg.data = shard;
  cfg.threads = o.threads;
  cfg.zero = o.zero;
  cfg.device = o.device;
  cfg.dtype = o.dtype;
  aq::TrainResult r;
  std::map<aq::cpu::GemmShape, int64_t> gemm_calls;  // every float GEMM of every step, by shape
  aq::OpProfile profile(warmup);
  CeilingMeter ceiling;
  double train_peak_rss = 0;  // MiB, before the ceiling's own buffers exist
  cfg.after_step = [&](const aq::StepRecord& rec) {
    // CPU only (a GPU run makes no CPU GEMMs), after the warm-up steps, outside the step's own time.
    if (gemm_calls.empty() || rec.step <= warmup) return;
    if (ceiling.empty()) train_peak_rss = aq::peak_rss_mib();
    aq::cpu::set_gemm_recorder(nullptr);  // the ceiling's own GEMMs are not the step's
    ceiling.pass(gemm_calls, rec.step, rec.ms);
    aq::cpu::set_gemm_recorder(&gemm_calls);
    // Ranks finish their passes at different times: meet before the next step, so no rank's wait for another's
    // ceiling lands in that step's time or exposed communication.
    if (ctx.world_size() > 1) ctx.world().barrier({"after the sgemm ceiling"})->wait();
  };
  aq::cpu::set_gemm_recorder(&gemm_calls);
  if (o.profile) aq::set_active_profile(&profile);
  auto stop_recording = [&] {
    aq::cpu::set_gemm_recorder(nullptr);
    aq::set_active_profile(nullptr);
    ::unlink(shard.c_str());
    if (!cfg.model_config.empty() && !bc.model_config) ::unlink(cfg.model_config.c_str());
    ::rmdir(dir);
  };
  try {
    r = aq::train(cfg, ctx);
  } catch (...) {
    stop_recording();
    throw;
  }
  stop_recording();

  double ms = 0, comm = 0, exposed = 0;
  for (size_t i = static_cast<size_t>(warmup); i < r.steps.size(); ++i) {
    ms += r.steps[i].ms;
    comm += r.steps[i].comm_ms;
    exposed += r.steps[i].exposed_comm_ms;
  }
  const double tokens = static_cast<double>(batch) * bc.seq * ctx.dp() * steps;
  const double tokens_per_s = tokens / (ms / 1000.0);

  // The worst rank's device memory and step-loop cudaMalloc count. Every rank calls this, in the same order.
  double worst[2] = {static_cast<double>(r.device_peak_bytes), static_cast<double>(r.step_loop_device_mallocs)};
  ctx.world().all_reduce_sync(worst, 2, aq::DType::F64,
                              {"aq-bench: device memory and mallocs (max over ranks)", aq::ReduceOp::Max});
  const bool gpu = r.device == "cuda";
  std::string device_name = "cpu";
#ifdef AQ_HAVE_CUDA
  if (gpu) device_name = aq::cuda::select_device(ctx.local_rank(), ctx.local_size()).name;  // the GPU it trained on
#endif

  // Model FLOPs per token (see the top of this file) and the MFU against one device's dense peak.
  const int64_t n_params = r.num_params;  // the model's own count (TrainResult)
  const double attn_flops = 6.0 * bc.layers * bc.dim * bc.seq;
  // An untied input table (a Llama's embed_tokens) is a lookup, not a GEMM: its V·C parameters do no FLOPs. (A tied
  // table is the LM head's GEMM too, so GPT-2 counts it.)
  const double lookup_params = bc.ffn > 0 && !bc.tied ? static_cast<double>(bc.vocab) * bc.dim : 0.0;
  const double flops_per_token = 6.0 * (static_cast<double>(n_params) - lookup_params) + attn_flops;
  const double achieved_tflops = flops_per_token * tokens_per_s / ctx.world_size() / 1e12;  // per device
  const Peak peak = find_peak(gpu, device_name, r.dtype, o.peak_tflops);
  const double mib = 1024.0 * 1024.0;

  nlohmann::ordered_json j = {{"config", bc.name},
                              {"world", ctx.world_size()},
                              {"tp", ctx.tp()},
                              {"dp", ctx.dp()},
                              {"batch_per_rank", batch},
                              {"seq", bc.seq},
                              {"threads", o.threads},
                              {"steps", steps},
                              {"warmup", warmup},
                              {"device", r.device},
                              {"device_name", device_name},
                              {"dtype", r.dtype},
                              {"tokens_per_s", tokens_per_s},
                              {"ms_per_step", ms / steps},
                              {"comm_ms", comm / steps},
                              {"exposed_comm_ms", exposed / steps},
                              {"compute_ms", (ms - exposed) / steps},
                              // Training's peak: the ceiling's GEMM buffers come later and are not counted.
                              {"peak_rss_mb", train_peak_rss > 0 ? train_peak_rss : aq::peak_rss_mib()},
                              {"num_params", n_params},
                              {"flops_formula", bc.ffn > 0 && !bc.tied ? "6*(N - V*C) + 6*L*C*T" : "6*N + 6*L*C*T"},
                              {"flops_per_token", flops_per_token},
                              {"achieved_tflops", achieved_tflops}};
  if (peak.tflops > 0) {
    j["peak_tflops"] = peak.tflops;
    j["mfu"] = achieved_tflops / peak.tflops;
  } else {
    j["peak_tflops"] = nullptr;
    j["mfu"] = nullptr;
  }
  j["peak_source"] = peak.source;
  j["blas"] = aq::blas_kernels_line();
  j["blas_kernels"] = aq::blas_corename();
  j["blas_choice"] = aq::blas_choice_kind();
  nlohmann::ordered_json shapes;
  if (!gpu && !ceiling.empty()) {
    // Model FLOPs of one step on this rank: the per-device share of the FLOPs/token formula's work.
    const double model_flops_per_step =
        flops_per_token * static_cast<double>(batch) * bc.seq * ctx.dp() / ctx.world_size();
    nlohmann::ordered_json c = ceiling.summary(model_flops_per_step);
    shapes = c["shapes"];
    c.erase("shapes");
    for (const auto& [k, v] : c.items()) j[k] = v;
  }
  if (o.profile) {
    j["profile"] = profile_json(profile, ms / steps);
    if (!shapes.is_null()) j["profile"]["gemm_shapes"] = shapes;
  }
  if (gpu) {
    j["device_peak_mib"] = worst[0] / mib;
    j["step_loop_device_mallocs"] = static_cast<int64_t>(worst[1]);
  } else {
    j["device_peak_mib"] = nullptr;
    j["step_loop_device_mallocs"] = nullptr;
  }
  return j;
}

// The human-readable lines of one measurement (rank 0 prints them), then the JSON line.
void report(const BenchConfig& bc, const nlohmann::ordered_json& j) {
  const auto num = [&](const char* k) { return j[k].get<double>(); };
  aq::log_info(bc.name, ": ", num("ms_per_step"), " ms/step, ", num("tokens_per_s"), " tokens/s, peak memory ",
               num("peak_rss_mb"), " MiB on rank 0, comm ", num("comm_ms"), " ms/step (exposed ",
               num("exposed_comm_ms"), ")");
  const bool gpu = j["device"] == "cuda";
  char line[512];
  const std::string where = gpu ? "cuda (" + j["device_name"].get<std::string>() + ")" : "cpu";
  std::snprintf(line, sizeof(line), "device %s | dtype %s | B %d x T %d per rank x dp %d | %.0f tokens/s",
                where.c_str(), j["dtype"].get<std::string>().c_str(), j["batch_per_rank"].get<int>(), bc.seq,
                j["dp"].get<int>(), num("tokens_per_s"));
  aq::log_info(line);
  const std::string lookup = bc.ffn > 0 && !bc.tied ? aq::str(" - ", bc.vocab, "*", bc.dim) : "";
  std::snprintf(line, sizeof(line),
                "FLOPs/token = %s = 6*(%lld%s) + 6*%d*%d*%d = %.0f (%.4g GFLOP; N = parameters, L layers, C width, "
                "T sequence%s)",
                j["flops_formula"].get<std::string>().c_str(), static_cast<long long>(j["num_params"].get<int64_t>()),
                lookup.c_str(), bc.layers, bc.dim, bc.seq, num("flops_per_token"), num("flops_per_token") / 1e9,
                bc.ffn > 0 && !bc.tied ? "; the input table V*C is a lookup" : "");
  aq::log_info(line);
  aq::log_info("blas ", j["blas"].get<std::string>());
  if (j.contains("cpu_mfu")) {
    std::snprintf(line, sizeof(line),
                  "sgemm ceiling %.1f GFLOP/s (median of %lld passes between steps, %.1f-%.1f): the step's %lld GEMM "
                  "shapes (%.0f calls, %.1f GFLOP per step) timed alone, %d threads; square n=%d: %.1f GFLOP/s",
                  num("sgemm_ceiling_gflops"), static_cast<long long>(j["ceiling_passes"].get<int64_t>()),
                  num("sgemm_ceiling_min_gflops"), num("sgemm_ceiling_max_gflops"),
                  static_cast<long long>(j["gemm_shapes"].get<int64_t>()), num("gemm_calls_per_step"),
                  num("gemm_gflop_per_step"), j["threads"].get<int>(), kSquareN, num("sgemm_square_gflops"));
    aq::log_info(line);
    std::snprintf(line, sizeof(line),
                  "CPU MFU vs sgemm ceiling %.1f%% (median over steps of model FLOP/s / the ceiling measured right "
                  "after the step; range %.1f-%.1f%%; %.1f GFLOP/s achieved over the run). The step's GEMMs alone "
                  "at the ceiling would take %.0f%% of it",
                  100 * num("cpu_mfu"), 100 * num("cpu_mfu_min"), 100 * num("cpu_mfu_max"),
                  num("achieved_tflops") * 1e3, 100 * num("gemm_share_at_ceiling"));
    aq::log_info(line);
  }
  if (j.contains("profile")) {
    const auto& p = j["profile"];
    aq::log_info("profile: exclusive wall time per step (mean of ", p["steps"].get<int64_t>(),
                 " measured steps, rank 0)");
    std::snprintf(line, sizeof(line), "  %-34s %10s %7s %7s", "op", "ms/step", "%", "calls");
    aq::log_info(line);
    for (const auto& e : p["ops"]) {
      std::snprintf(line, sizeof(line), "  %-34s %10.1f %6.1f%% %7.0f", e["op"].get<std::string>().c_str(),
                    e["ms"].get<double>(), e["pct"].get<double>(), e["calls"].get<double>());
      aq::log_info(line);
    }
    std::string fams;
    for (const auto& f : p["families"])
      fams += aq::str(fams.empty() ? "" : " | ", f["family"].get<std::string>(), " ",
                      aq::str(static_cast<int>(f["pct"].get<double>() * 10 + 0.5) / 10.0), "%");
    aq::log_info("  by family: ", fams);
    if (p.contains("gemm_shapes")) {
      aq::log_info("  GEMM shapes of the step, each timed alone (op: transposes of A and B; +C: accumulates):");
      for (const auto& g : p["gemm_shapes"]) {
        std::snprintf(line, sizeof(line), "    %s%s M %6lld N %6lld K %6lld  %6.1f GFLOP/s (best pass)",
                      g["op"].get<std::string>().c_str(), g["accumulate"].get<bool>() ? "+C" : "  ",
                      static_cast<long long>(g["M"].get<int64_t>()), static_cast<long long>(g["N"].get<int64_t>()),
                      static_cast<long long>(g["K"].get<int64_t>()), g["gflops"].get<double>());
        aq::log_info(line);
      }
    }
  }
  if (!j["mfu"].is_null()) {
    std::snprintf(line, sizeof(line), "MFU %.1f%% = %.4g TFLOPS achieved per device / peak %.4g TFLOPS (%s)",
                  100 * num("mfu"), num("achieved_tflops"), num("peak_tflops"),
                  j["peak_source"].get<std::string>().c_str());
    aq::log_info(line);
  } else if (gpu) {
    std::snprintf(line, sizeof(line), "MFU n/a (%.4g TFLOPS achieved per device): %s", num("achieved_tflops"),
                  j["peak_source"].get<std::string>().c_str());
    aq::log_info(line);
  }
  if (gpu) {
    std::snprintf(line, sizeof(line),
                  "device memory: peak %.0f MiB (caching allocator, max over ranks) | cudaMalloc calls after the "
                  "first step: %lld%s",
                  num("device_peak_mib"), static_cast<long long>(j["step_loop_device_mallocs"].get<int64_t>()),
                  j["step_loop_device_mallocs"].get<int64_t>() == 0 ? " (expected 0)" : " (expected 0: NOT MET)");
    aq::log_info(line);
  }
  aq::log_info(j.dump());
}

std::vector<int> parse_list(const std::string& s, const char* what) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoi(item));
    } catch (const std::exception&) {
      aq::fail(aq::str(what, " must be a comma-separated list of integers (got \"", s, "\")"));
    }
    AQ_CHECK(out.back() >= 1, what, " entries must be >= 1 (got ", out.back(), ")");
  }
  AQ_CHECK(!out.empty(), what, " is empty");
  return out;
}

// Runs a command and returns the last line of its standard output that parses as a JSON object.
nlohmann::json run_json(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  AQ_CHECK(p != nullptr, "cannot run: ", cmd);
  std::string line, all;
  nlohmann::json last;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), p)) {
    line = buf;
    all += line;
    if (!line.empty() && line[0] == '{') try {
        last = nlohmann::json::parse(line);
      } catch (const std::exception&) {
      }
  }
  const int rc = ::pclose(p);
  AQ_CHECK(rc == 0 && last.is_object(), "benchmark run failed (exit ", rc, "): ", cmd, "\n", all);
  return last;
}

struct ScalingOptions {
  std::string config = "tiny", worlds = "1,2", tps = "1,2", modes = "weak,strong", out = "out/scaling";
  std::string mpirun = "mpirun";
  int steps = 10, warmup = 2, threads = 1;
};

void scaling(const ScalingOptions& o, const std::string& self) {
  const BenchConfig& bc = find_config(o.config);
  const std::vector<int> worlds = parse_list(o.worlds, "--worlds"), tps = parse_list(o.tps, "--tp");
  std::vector<std::string> modes;
  for (const char* m : {"weak", "strong"})
    if (o.modes.find(m) != std::string::npos) modes.push_back(m);
  AQ_CHECK(!modes.empty(), "--modes must contain weak and/or strong (got \"", o.modes, "\")");
  aq::check_writable(o.out + ".csv", "scaling table");

  std::vector<nlohmann::json> rows;
  for (const std::string& mode : modes) {
    double base = 0;  // tokens/s of one rank
    for (int w : worlds)
      for (int tp : tps) {
        if (w % tp || bc.heads % tp || (bc.kv_heads > 0 && bc.kv_heads % tp)) continue;
        const int dp = w / tp;
        // weak: fixed per-rank batch; strong: fixed global batch (the config's B) split over DP ranks.
        const int batch = mode == "weak" ? bc.batch : bc.batch / dp;
        if (batch < 1 || (mode == "strong" && bc.batch % dp)) continue;
        const std::string cmd = aq::str(
            w > 1 ? o.mpirun + " --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(w) + " "
                  : "",
            self, " --config ", bc.name, " --tp ", tp, " --batch ", batch, " --threads ", o.threads, " --steps ",
            o.steps, " --warmup ", o.warmup);
        std::fprintf(stderr, "[scaling] %s\n", cmd.c_str());
        nlohmann::json r = run_json(cmd);
        r["mode"] = mode;
        if (w == 1 && tp == 1) base = r["tokens_per_s"].get<double>();
        rows.push_back(r);
      }
    for (auto& r : rows)
      if (r["mode"] == mode && base > 0) {
        r["speedup"] = r["tokens_per_s"].get<double>() / base;
        r["efficiency"] = r["speedup"].get<double>() / r["world"].get<int>();
      }
  }

  std::printf("\nscaling: config %s, %d thread(s) per rank, %d measured steps\n", bc.name, o.threads, o.steps);
  std::printf("%-6s %5s %3s %3s %6s %11s %8s %10s %11s %9s %11s %9s\n", "mode", "world", "tp", "dp", "B/rank",
              "tokens/s", "speedup", "efficiency", "compute ms", "comm ms", "exposed ms", "exposed%");
  std::ofstream csv(o.out + ".csv");
  csv << "mode,world,tp,dp,batch_per_rank,tokens_per_s,speedup,efficiency,ms_per_step,compute_ms,comm_ms,"
         "exposed_comm_ms,exposed_pct\n";
  for (const auto& r : rows) {
    const double speedup = r.value("speedup", 0.0), eff = r.value("efficiency", 0.0);
    const double step = r["ms_per_step"].get<double>(), exposed = r["exposed_comm_ms"].get<double>();
    std::printf("%-6s %5d %3d %3d %6d %11.0f %7.2fx %9.1f%% %11.1f %9.2f %11.2f %8.1f%%\n",
                r["mode"].get<std::string>().c_str(), r["world"].get<int>(), r["tp"].get<int>(), r["dp"].get<int>(),
                r["batch_per_rank"].get<int>(), r["tokens_per_s"].get<double>(), speedup, 100 * eff,
                r["compute_ms"].get<double>(), r["comm_ms"].get<double>(), exposed, 100 * exposed / step);
    csv << r["mode"].get<std::string>() << ',' << r["world"] << ',' << r["tp"] << ',' << r["dp"] << ','
        << r["batch_per_rank"] << ',' << r["tokens_per_s"] << ',' << speedup << ',' << eff << ',' << step << ','
        << r["compute_ms"] << ',' << r["comm_ms"] << ',' << exposed << ',' << 100 * exposed / step << '\n';
  }
  csv.close();
  std::printf("wrote %s.csv\n", o.out.c_str());
  const std::string plot =
      aq::str("/usr/bin/python3 ", AQ_SOURCE_DIR, "/scripts/plot_scaling.py ", o.out, ".csv ", o.out, ".png");
  if (std::system(plot.c_str()) == 0)
    std::printf("wrote %s.png\n", o.out.c_str());
  else
    std::printf("no plot: %s failed (apt-get install python3-matplotlib)\n", plot.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  aq::ensure_blas_kernels(argv);  // first: may re-execute this program with the right OpenBLAS kernels
  // Communication across centres and the cost model (examples/bench/).
  if (argc > 1) {
    const std::string sub = argv[1];
    if (sub == "collectives") return aq::bench::collectives_main(argc - 1, argv + 1);
    if (sub == "calibrate") return aq::bench::calibrate_main(argc - 1, argv + 1);
    if (sub == "predict") return aq::bench::predict_main(argc - 1, argv + 1);
    if (sub == "wan") return aq::bench::wan_main(argc - 1, argv + 1);
    if (sub == "wan-worker") return aq::bench::wan_worker_main(argc - 1, argv + 1);
  }
  if (argc > 1 && std::string(argv[1]) == "scaling") {
    ScalingOptions o;
    CLI::App app{"aq-bench scaling: weak and strong scaling over world sizes and tensor-parallel layouts"};
    app.add_option("--config", o.config, config_help())->capture_default_str();
    app.add_option("--worlds", o.worlds, "World sizes (ranks)")->capture_default_str();
    app.add_option("--tp", o.tps, "Tensor-parallel sizes to try at each world size")->capture_default_str();
    app.add_option("--modes", o.modes, "weak (fixed per-rank batch), strong (fixed global batch)")
        ->capture_default_str();
    app.add_option("--steps", o.steps, "Measured steps per layout")->capture_default_str();
    app.add_option("--warmup", o.warmup, "Unmeasured steps first")->capture_default_str();
    app.add_option("--threads", o.threads, "CPU threads per rank")->capture_default_str();
    app.add_option("--out", o.out, "Output prefix: PREFIX.csv and PREFIX.png")->capture_default_str();
    app.add_option("--mpirun", o.mpirun, "MPI launcher")->capture_default_str();
    char self[4096] = {0};
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    const std::string exe = n > 0 ? std::string(self, static_cast<size_t>(n)) : argv[0];
    return aq::run_main("aq-bench scaling", app, argc - 1, argv + 1, [&] { scaling(o, exe); });
  }

  std::string name = "tiny", model_config;
  BenchOptions o;
  int tp = 1, seq = 0;
  CLI::App app{"aq-bench: training tokens/s, MFU, peak memory and communication of named GPT-2 configurations"};
  app.add_option("--config", name, config_help())->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads per rank (0 = all cores)")->capture_default_str();
  app.add_option("--steps", o.steps, "Measured steps")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Unmeasured steps first")->capture_default_str();
  app.add_option(
      "--model-config", model_config,
      "A Hugging Face config.json (model_type gpt2 or llama): its model instead of --config's, at --config's "
      "T and B unless --seq / --batch say otherwise");
  app.add_option("--seq", seq, "Sequence length T (default: the config's)");
  app.add_option("--tp", tp, "Tensor-parallel size (under mpirun)")->capture_default_str();
  app.add_option("--batch", o.batch, "Per-rank batch (default: the config's B)");
  app.add_option("--zero", o.zero, "1: ZeRO-1")->capture_default_str();
  app.add_option("--device", o.device, "cpu | cuda | auto")->capture_default_str();
  app.add_option("--dtype", o.dtype, "fp32 | bf16 | auto (bf16 on a GPU, fp32 on the CPU)")->capture_default_str();
  app.add_flag("--profile", o.profile,
               "Print where a step's time goes: exclusive wall time per op (forward/backward GEMMs by layer, "
               "layernorm, attention, gelu, softmax-xent, embedding, adamw, grad norm, other); CPU only");
  app.add_option("--peak-tflops", o.peak_tflops,
                 "Dense peak TFLOPS of one device for the MFU (default: NVIDIA's figure for a known GPU and "
                 "--dtype; none for CPUs)");
  std::string trace_path, trace_steps = "2:4";
  app.add_option("--trace", trace_path,
                 "Write a timeline of every rank to FILE.json (Chrome trace; open in https://ui.perfetto.dev)");
  app.add_option("--trace-steps", trace_steps, "Steps --trace records: A:B, 1-based and inclusive")
      ->capture_default_str();
  aq::ParallelContext& ctx = aq::ParallelContext::init(&argc, &argv);
  return aq::run_main("aq-bench", app, argc, argv, ctx, [&] {
    BenchConfig bc = find_config(name);
    if (!model_config.empty()) {
      const aq::ModelConfig m = aq::read_hf_config(model_config);
      AQ_CHECK(m.mlp_activation.empty(), "--model-config ", model_config, ": the MLP activation ", m.mlp_activation,
               " replaces the family's own, and aq-bench builds only those (and loads no plugins); benchmark it ",
               "with aq-train");
      AQ_CHECK(m.norm_op.empty(), "--model-config ", model_config, ": norm_op ", m.norm_op, " replaces the family's ",
               "own norm, and aq-bench builds only those; benchmark it with aq-train");
      bc = BenchConfig{model_config.c_str(),
                       m.n_layer,
                       m.n_head,
                       m.n_embd,
                       m.vocab_size,
                       m.max_seq,
                       bc.seq,
                       bc.batch,
                       m.llama() ? m.kv_heads() : 0,
                       m.llama() ? m.ffn() : 0,
                       m.llama() && m.tied_head,
                       model_config.c_str()};
    }
    if (seq > 0) bc.seq = seq;
    AQ_CHECK(bc.seq >= 1 && bc.seq <= bc.max_seq, "--seq ", bc.seq, " must be in [1, ", bc.max_seq,
             "] (the model's context)");
    AQ_CHECK(o.steps >= 1 && o.warmup >= 0, "--steps must be >= 1 and --warmup >= 0 (got ", o.steps, " and ", o.warmup,
             ")");
    AQ_CHECK(o.peak_tflops >= 0, "--peak-tflops must be >= 0 TFLOPS (0: the GPU peak table; got ", o.peak_tflops, ")");
    AQ_CHECK(!o.profile || o.device == "cpu", "--profile times CPU kernels, which run synchronously; with --device ",
             o.device,
             " the launches are asynchronous (use Nsight Systems there) — drop --profile or use --device cpu");
    const aq::trace::StepWindow trace_window = aq::trace::parse_step_window(trace_steps);
    ctx.configure(tp, 300);
    aq::TraceSession trace(ctx, trace_path, trace_window, "aq-bench");
    if (o.threads == 0) o.threads = aq::configure_threads(0, ctx.local_size());  // the node's cores, shared
    if (o.batch <= 0) o.batch = bc.batch;
    const nlohmann::ordered_json result = run_once(ctx, bc, o);
    trace.write();
    report(bc, result);
  });
}
