// aq-bench — training throughput, memory and communication of named model configurations.
//
//   build/bin/aq-bench --config gpt2-124m --threads 2 --steps 5          one process
//   mpirun -np 2 build/bin/aq-bench --config tiny --tp 1 --threads 1     one layout, several ranks
//   build/bin/aq-bench scaling --config tiny --worlds 1,2 --tp 1,2       weak and strong scaling table
// Runs the real training path (aq::train: data loader, forward, backward, gradient reduction, clipping,
// AdamW) on a random-token shard and skips --warmup steps. It prints tokens/s (all ranks' tokens), peak
// resident memory, and per-step compute, total communication and exposed communication (what overlap did not
// hide). The last line is JSON for scripts (scripts/bench_vs_pytorch.py compares it with PyTorch).
//
// `scaling` launches one mpirun per layout, prints the table, and writes it as CSV plus a PNG plot
// (scripts/plot_scaling.py, Debian's python3-matplotlib).
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "examples/main_guard.h"
#include "model/trainer.h"
#include "runtime/data.h"
#include "runtime/log.h"
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

const BenchConfig& find_config(const std::string& name) {
  for (const auto& c : kConfigs)
    if (name == c.name) return c;
  aq::fail(aq::str("unknown --config ", name, " (choose tiny or gpt2-124m)"));
}

// One measurement on the ranks of ctx. Returns the JSON result (meaningful on rank 0).
nlohmann::ordered_json run_once(aq::ParallelContext& ctx, const BenchConfig& bc, int batch, int threads, int steps,
                                int warmup, int zero, const std::string& device) {
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
  cfg.layers = bc.layers;
  cfg.heads = bc.heads;
  cfg.dim = bc.dim;
  cfg.vocab = bc.vocab;
  cfg.max_seq = bc.max_seq;
  cfg.seq = bc.seq;
  cfg.batch = batch;
  cfg.steps = steps + warmup;
  cfg.data = shard;
  cfg.threads = threads;
  cfg.zero = zero;
  cfg.device = device;
  aq::TrainResult r;
  try {
    r = aq::train(cfg, ctx);
  } catch (...) {
    ::unlink(shard.c_str());
    ::rmdir(dir);
    throw;
  }
  ::unlink(shard.c_str());
  ::rmdir(dir);

  double ms = 0, comm = 0, exposed = 0;
  for (size_t i = static_cast<size_t>(warmup); i < r.steps.size(); ++i) {
    ms += r.steps[i].ms;
    comm += r.steps[i].comm_ms;
    exposed += r.steps[i].exposed_comm_ms;
  }
  const double tokens = static_cast<double>(batch) * bc.seq * ctx.dp() * steps;
  return {{"config", bc.name},
          {"world", ctx.world_size()},
          {"tp", ctx.tp()},
          {"dp", ctx.dp()},
          {"batch_per_rank", batch},
          {"threads", threads},
          {"steps", steps},
          {"tokens_per_s", tokens / (ms / 1000.0)},
          {"ms_per_step", ms / steps},
          {"comm_ms", comm / steps},
          {"exposed_comm_ms", exposed / steps},
          {"compute_ms", (ms - exposed) / steps},
          {"peak_rss_mb", aq::peak_rss_mib()}};
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
        if (w % tp || bc.heads % tp) continue;
        const int dp = w / tp;
        // weak: fixed per-rank batch; strong: fixed global batch (the config's B) split over DP ranks.
        const int batch = mode == "weak" ? bc.batch : bc.batch / dp;
        if (batch < 1 || (mode == "strong" && bc.batch % dp)) continue;
        const std::string cmd =
            aq::str(w > 1 ? o.mpirun + " --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(w) + " "
                          : "",
                    self, " --config ", bc.name, " --tp ", tp, " --batch ", batch, " --threads ", o.threads,
                    " --steps ", o.steps, " --warmup ", o.warmup);
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
  const std::string plot = aq::str("/usr/bin/python3 ", AQ_SOURCE_DIR, "/scripts/plot_scaling.py ", o.out, ".csv ",
                                   o.out, ".png");
  if (std::system(plot.c_str()) == 0)
    std::printf("wrote %s.png\n", o.out.c_str());
  else
    std::printf("no plot: %s failed (apt-get install python3-matplotlib)\n", plot.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "scaling") {
    ScalingOptions o;
    CLI::App app{"aq-bench scaling: weak and strong scaling over world sizes and tensor-parallel layouts"};
    app.add_option("--config", o.config, "tiny | gpt2-124m")->capture_default_str();
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

  std::string name = "tiny";
  int threads = 0, steps = 5, warmup = 1, tp = 1, batch = 0, zero = 0;
  std::string device = "cpu";
  CLI::App app{"aq-bench: training tokens/s, peak memory and communication of named GPT-2 configurations"};
  app.add_option("--config", name, "tiny (L4 H4 C128 V256 T128 B16) | gpt2-124m (L12 H12 C768 V50257 T256 B4)")
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads per rank (0 = all cores)")->capture_default_str();
  app.add_option("--steps", steps, "Measured steps")->capture_default_str();
  app.add_option("--warmup", warmup, "Unmeasured steps first")->capture_default_str();
  app.add_option("--tp", tp, "Tensor-parallel size (under mpirun)")->capture_default_str();
  app.add_option("--batch", batch, "Per-rank batch (default: the config's B)");
  app.add_option("--zero", zero, "1: ZeRO-1")->capture_default_str();
  app.add_option("--device", device, "cpu | cuda | auto")->capture_default_str();
  aq::ParallelContext& ctx = aq::ParallelContext::init(&argc, &argv);
  return aq::run_main("aq-bench", app, argc, argv, ctx, [&] {
    const BenchConfig& bc = find_config(name);
    AQ_CHECK(steps >= 1 && warmup >= 0, "--steps must be >= 1 and --warmup >= 0");
    ctx.configure(tp, 300);
    if (threads == 0) threads = std::max(1, omp_get_num_procs() / ctx.local_size());  // share the node's cores
    const nlohmann::ordered_json j = run_once(ctx, bc, batch > 0 ? batch : bc.batch, threads, steps, warmup, zero, device);
    aq::log_info(bc.name, ": ", j["ms_per_step"].get<double>(), " ms/step, ", j["tokens_per_s"].get<double>(),
                 " tokens/s, peak memory ", j["peak_rss_mb"].get<double>(), " MiB on rank 0, comm ",
                 j["comm_ms"].get<double>(), " ms/step (exposed ", j["exposed_comm_ms"].get<double>(), ")");
    aq::log_info(j.dump());
  });
}
