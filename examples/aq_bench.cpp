// aq-bench — training throughput and peak memory for named model configurations.
//
//   build/bin/aq-bench --config gpt2-124m --threads 2 --steps 5
// Runs the real training path (aq::train: data loader, forward, backward, clipping, AdamW) on a random-token
// shard, skips --warmup steps, and prints tokens/s and the process's peak resident memory. The last line is
// JSON for scripts (scripts/bench_vs_pytorch.py compares it with PyTorch in the same run).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "examples/main_guard.h"
#include "model/trainer.h"
#include "runtime/data.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"

namespace {
struct BenchConfig {
  const char* name;
  int layers, heads, dim, vocab, max_seq, seq, batch;
};
constexpr BenchConfig kConfigs[] = {
    {"tiny", 4, 4, 128, 256, 128, 128, 16},
    {"gpt2-124m", 12, 12, 768, 50257, 1024, 256, 4},
};
}  // namespace

int main(int argc, char** argv) {
  std::string name = "tiny";
  int threads = 0, steps = 5, warmup = 1;
  CLI::App app{"aq-bench: training tokens/s and peak memory of named GPT-2 configurations"};
  app.add_option("--config", name, "tiny (L4 H4 C128 V256 T128 B16) | gpt2-124m (L12 H12 C768 V50257 T256 B4)")
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = all cores)")->capture_default_str();
  app.add_option("--steps", steps, "Measured steps")->capture_default_str();
  app.add_option("--warmup", warmup, "Unmeasured steps first")->capture_default_str();

  return aq::run_main("aq-bench", app, argc, argv, [&] {
    const BenchConfig* bc = nullptr;
    for (const auto& c : kConfigs)
      if (name == c.name) bc = &c;
    AQ_CHECK(bc != nullptr, "unknown --config ", name, " (choose tiny or gpt2-124m)");
    AQ_CHECK(steps >= 1 && warmup >= 0, "--steps must be >= 1 and --warmup >= 0");

    // A random-token shard exactly large enough for the run.
    char dir[] = "/tmp/aq-bench-XXXXXX";
    AQ_CHECK(::mkdtemp(dir) != nullptr, "cannot create a temporary directory under /tmp");
    const std::string shard = std::string(dir) + "/bench_000.bin";
    {
      aq::Rng rng(1234);
      std::vector<uint16_t> tok(static_cast<size_t>(bc->batch) * bc->seq * (steps + warmup) + 1);
      for (auto& t : tok) t = static_cast<uint16_t>(rng.next_u64() % static_cast<uint64_t>(bc->vocab));
      aq::write_shard(shard, tok);
    }
    aq::TrainConfig cfg;
    cfg.layers = bc->layers;
    cfg.heads = bc->heads;
    cfg.dim = bc->dim;
    cfg.vocab = bc->vocab;
    cfg.max_seq = bc->max_seq;
    cfg.seq = bc->seq;
    cfg.batch = bc->batch;
    cfg.steps = steps + warmup;
    cfg.data = shard;
    cfg.threads = threads;
    aq::TrainResult r;
    try {
      r = aq::train(cfg, aq::ParallelContext::local());
    } catch (...) {
      ::unlink(shard.c_str());
      ::rmdir(dir);
      throw;
    }
    ::unlink(shard.c_str());
    ::rmdir(dir);

    double ms = 0;
    for (size_t i = static_cast<size_t>(warmup); i < r.steps.size(); ++i) ms += r.steps[i].ms;
    const double tokens = static_cast<double>(bc->batch) * bc->seq * steps;
    const double tok_s = tokens / (ms / 1000.0);
    const double peak = aq::peak_rss_mib();
    std::printf("%s: %.1f ms/step, %.0f tokens/s, peak memory %.0f MiB (%d measured steps)\n", bc->name, ms / steps,
                tok_s, peak, steps);
    nlohmann::ordered_json j = {{"config", bc->name},     {"tokens_per_s", tok_s}, {"ms_per_step", ms / steps},
                                {"peak_rss_mb", peak},    {"steps", steps},        {"threads", threads}};
    std::printf("%s\n", j.dump().c_str());
  });
}
