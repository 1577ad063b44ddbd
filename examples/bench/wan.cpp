// wan.cpp — `aq-bench wan`: one training configuration on the WAN testbed (scripts/wan_testbed.sh) under flat
// fp32, hier fp32, hier bf16 and hier int8 + error feedback; what each costs per step, what crossed the link,
// what the loss did, and what the cost model predicted.
//
//   sudo build/bin/aq-bench wan --rate 100mbit --steps 300 --out out/wan
// As root it brings a testbed of its own up (name aqb<pid>; the user's testbeds are not touched), calibrates
// the cost model on it (aq-bench calibrate), runs each configuration with `wan_testbed.sh run` (aq::train on
// aq-prepare'd /usr/share/games/fortunes, the same seed and data order, one thread per rank), reads the rank-0
// JSONL, the link counters before and after, and every rank's WAN figures, and takes the testbed down on any
// exit (atexit and SIGINT/SIGTERM). Without root it prints why and exits 77.
// Per configuration: median step time and exposed communication (rank 0, steps after the first two), wan_bytes
// per step (rank 0's JSONL, and the sum over ranks), the link's bytes per step (every centre's tx; includes
// start-up and the final evaluation, spread over the steps) and its ratio to the ranks' wan_bytes, the link
// utilisation while the cross-centre stage runs (a centre's link bytes per step / the longest median wan_ms of
// its ranks, against the shaped rate), the final training and validation losses, ratios against flat fp32, and
// the predicted step time. Writes PREFIX.csv, PREFIX.png (scripts/plot_wan.py) and PREFIX_<config>.jsonl/.log.
// One configuration's job is `aq-bench wan-worker` (wan_worker.cpp).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "examples/bench/bench.h"
#include "examples/main_guard.h"
#include "train/trainer.h"
#include "parallel/context.h"
#include "runtime/file_io.h"
#include "runtime/log.h"
#include "runtime/sysinfo.h"

namespace aq::bench {
namespace {

// ---------------------------------------------------------------------------------------------------------
// The orchestrator.

struct WanOptions {
  int centres = 2, steps = 300, threads = 1, eval_batches = 32;
  std::string ranks_per_centre, rate = "100mbit", config = "tiny", out = "out/wan",
                                text = "/usr/share/games/fortunes/*.u8";
  std::string configs = "flat,hier,hier-bf16,hier-int8", calibration, save_calibration;
  std::vector<std::string> cpu_quota;  // the testbed's --cpu-quota centreK=CORES: a slower centre
  int grad_accum = 8;                  // micro-batches per rank and step of sync-even and sync-auto
  bool grad_accum_given = false;
  int64_t outer_steps = 50;         // H of diloco, streaming, diloco-even and diloco-auto
  std::string outer_compress = "int8";  // and the codec of their outer exchange
  bool outer_steps_given = false, outer_compress_given = false;
  double lr = 1e-3, what_if_latency_ms = 30;
};

struct RunConfig {
  std::string key, label, algo, compress, ef;
  int64_t H = 0;  // > 0: --outer diloco with H inner steps per sync, F fragments and overlap tau
  int F = 1;
  int64_t tau = 0;
  std::string balance = "";  // non-empty: a configuration of centres of different speed (--balance off|auto)
};
// "alone": DiLoCo that never syncs (H beyond any run), i.e. every centre training by itself on the same
// machine load — the single-centre rate per rank that the low-communication runs are measured against.
constexpr int64_t kNeverSync = int64_t{1} << 40;
constexpr int kLabelWidth = 21;  // the configuration column of the tables (labels such as "stream H50 F4 t1 int8")
const RunConfig kRunConfigs[] = {
    {"flat", "flat fp32", "flat", "none", "off"},
    {"hier", "hier fp32", "hier", "none", "off"},
    {"hier-bf16", "hier bf16", "hier", "bf16", "off"},
    {"hier-int8", "hier int8+EF", "hier", "int8", "on"},
    {"alone", "centres alone", "hier", "int8", "on", kNeverSync},
    {"diloco", "DiLoCo H50 int8", "hier", "int8", "on", 50},
    {"streaming", "stream H50 F4 t1 int8", "hier", "int8", "on", 50, 4, 1},
    // Centres of different speed (run with --cpu-quota): synchronous with --grad-accum micro-batches per rank
    // split evenly or by speed, and DiLoCo with or without time-based inner phases.
    {"sync-even", "sync even split", "hier", "int8", "on", 0, 1, 0, "off"},
    {"sync-auto", "sync --balance", "hier", "int8", "on", 0, 1, 0, "auto"},
    {"diloco-even", "DiLoCo unpaced", "hier", "int8", "on", 50, 1, 0, "off"},
    {"diloco-auto", "DiLoCo --balance", "hier", "int8", "on", 50, 1, 0, "auto"},
};
constexpr const char* kConfigKeys =
    "flat,hier,hier-bf16,hier-int8,alone,diloco,streaming,sync-even,sync-auto,diloco-even,diloco-auto";

std::string g_testbed, g_name;  // for the exit handlers
char g_tmp[64] = "";             // the run's data and calibrations; a fixed buffer, read by the signal handler
void remove_tmp() {
  if (g_tmp[0] == 0) return;
  const std::string cmd = std::string("rm -rf '") + g_tmp + "'";
  g_tmp[0] = 0;
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "aq-bench wan: '%s' failed\n", cmd.c_str());
}
void testbed_down() {
  if (g_name.empty()) return;
  const std::string cmd = g_testbed + " down --name " + g_name + " > /dev/null 2>&1";
  g_name.clear();
  if (std::system(cmd.c_str()) != 0)
    std::fprintf(stderr, "aq-bench wan: '%s' failed; remove the testbed by hand\n", cmd.c_str());
}
void on_signal(int sig) {
  testbed_down();
  remove_tmp();
  std::_Exit(128 + sig);
}

std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs cmd; on failure throws with the tail of its output.
std::string must_run(const std::string& cmd, const char* what) {
  std::string out;
  const int rc = run_capture(cmd + " 2>&1", out);
  if (rc != 0) {
    // One line: the output goes to a log file that the message names.
    char log[] = "/tmp/aq-bench-wan-failed-XXXXXX";
    const int fd = ::mkstemp(log);
    if (fd >= 0) {
      (void)!::write(fd, out.data(), out.size());
      ::close(fd);
    }
    fail(str(what, " failed (exit ", rc, "): ", cmd, "; its output is in ", fd >= 0 ? log : "(could not be saved)"));
  }
  return out;
}

nlohmann::json last_json(const std::string& text, const char* key) {
  nlohmann::json last;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    if (!line.empty() && line[0] == '{') try {
        nlohmann::json j = nlohmann::json::parse(line);
        if (j.contains(key)) last = j;
      } catch (const std::exception&) {
      }
    pos = end + 1;
  }
  return last;
}

std::map<std::string, double> link_tx(const std::string& testbed, const std::string& name) {
  const nlohmann::json j = nlohmann::json::parse(must_run(testbed + " bytes --json --name " + name, "testbed bytes"));
  std::map<std::string, double> m;
  for (auto it = j.begin(); it != j.end(); ++it) m[it.key()] = it.value().at("tx").get<double>();
  return m;
}

struct Measured {
  RunConfig rc;
  double step_ms = 0, exposed_ms = 0, exposed_max_ms = 0, comm_ms = 0, wan_bytes_rank0 = 0, wan_bytes_job = 0,
         link_bytes = 0;
  double link_util = 0, final_loss = 0, val_loss = 0, wall_s = 0;
  double mean_ms = 0, tokens_per_s_rank = 0, tokens_per_step = 0;  // slowest rank's mean; mean over ranks
  double pred_step_ms = 0, pred_exposed_ms = 0, pred_wan_job = 0, pred_compute_ms = 0;
  std::vector<double> util_by_centre;
  // Per rank (world order): its centre, the tokens/s it trained, the share of its time it waited.
  std::vector<int> rank_centre;
  std::vector<double> rank_tokens_per_s, rank_waiting;
  cost::BalancePrediction pred_balance;  // the balance configurations and alone
  std::string split;                     // what --balance chose: micro-batches per rank or inner steps per window
};

// "balance: … by centre speed: centre centre0: 11 (…), centre centre1: 5 (…)" from the job's output → "11,5".
std::string balance_choice(const std::string& out) {
  const size_t at = out.find("by centre speed:");
  if (at == std::string::npos) return "";
  std::stringstream parts(out.substr(at + 16, out.find('\n', at) - at - 16));
  std::string choice;
  for (std::string part; std::getline(parts, part, ',');) {
    const size_t colon = part.rfind(": ", part.find('('));
    if (colon != std::string::npos) choice += str(choice.empty() ? "" : ",", std::atoi(part.c_str() + colon + 2));
  }
  return choice;
}

// Centres of different speed: what each configuration trained against the centres alone, how long each centre
// waited, and the balance rule's prediction beside it.
void print_balance_table(const std::vector<Measured>& res, const WanOptions& o) {
  const Measured* alone = nullptr;
  bool any = false;
  for (const Measured& m : res) {
    if (m.rc.key == "alone") alone = &m;
    any |= !m.rc.balance.empty();
  }
  if (!any) return;
  std::string quota;
  for (const std::string& q : o.cpu_quota) quota += (quota.empty() ? "" : ", ") + q;
  std::printf("\ncentres of different speed (--cpu-quota %s; synchronous: %d micro-batches per rank and step; "
              "DiLoCo: H %lld, %s): tokens/s of the job and of each centre (the sum of its ranks), each centre's "
              "waiting share of its time (mean over its ranks), and the balance rule's prediction\n",
              quota.empty() ? "none" : quota.c_str(), o.grad_accum, static_cast<long long>(o.outer_steps),
              o.outer_compress.c_str());
  std::printf("%-*s %-8s %9s %8s %9s %9s %7s %7s | %-8s %9s %8s %7s %7s\n", kLabelWidth, "config", "split", "tok/s",
              "of alone", "c0 tok/s", "c1 tok/s", "c0 wait", "c1 wait", "p split", "p tok/s", "p alone", "p c0 w",
              "p c1 w");
  for (const Measured& m : res) {
    if (m.rc.balance.empty() && &m != alone) continue;
    std::map<int, double> tok, wait, n;
    double total = 0;
    for (size_t r = 0; r < m.rank_centre.size(); ++r) {
      tok[m.rank_centre[r]] += m.rank_tokens_per_s[r];
      wait[m.rank_centre[r]] += m.rank_waiting[r];
      n[m.rank_centre[r]] += 1;
      total += m.rank_tokens_per_s[r];
    }
    double alone_total = 0;
    if (alone)
      for (double t : alone->rank_tokens_per_s) alone_total += t;
    const cost::BalancePrediction& p = m.pred_balance;
    std::string psplit;
    for (int64_t k : p.share) psplit += str(psplit.empty() ? "" : ",", k);
    const auto pct = [](double v) { return str(static_cast<int>(std::lround(100 * v)), "%"); };
    const std::string of_alone = alone_total > 0 ? pct(total / alone_total) : "-";
    const std::string wait0 = pct(wait[0] / std::max(1.0, n[0])), wait1 = pct(wait[1] / std::max(1.0, n[1]));
    const std::string p_alone = pct(p.tokens_per_s / p.standalone_tokens_per_s);
    const std::string p_wait0 = p.waiting_share.empty() ? "-" : pct(p.waiting_share[0]);
    const std::string p_wait1 = p.waiting_share.size() < 2 ? "-" : pct(p.waiting_share[1]);
    std::printf("%-*s %-8s %9.0f %8s %9.0f %9.0f %7s %7s | %-8s %9.0f %8s %7s %7s\n", kLabelWidth, m.rc.label.c_str(),
                m.split.empty() ? "-" : m.split.c_str(), total, of_alone.c_str(), tok[0], tok[1], wait0.c_str(),
                wait1.c_str(), &m == alone ? "-" : psplit.c_str(), p.tokens_per_s, p_alone.c_str(), p_wait0.c_str(),
                p_wait1.c_str());
  }
  std::printf("(split: micro-batches per rank of each centre, or inner steps per window of 50, as the job chose; "
              "p: predicted from the calibration's per-centre compute; wait: the part of a rank's time spent waiting "
              "for communication, which includes waiting for the other centre; of alone: against the centres "
              "training by themselves in the same run)\n");
}

// The balance rule's view of a configuration (cost::predict_balance_*): each centre's compute from the
// calibration (its slowest rank, measured under the run's --cpu-quota), the exchange after a step's last
// micro-batch from the step model, and the outer exchange of a window from predict_diloco.
cost::BalancePrediction predict_balance(const RunConfig& rc, const cost::StepJob& job, const cost::Calibration& cal,
                                        const std::vector<int>& per, const WanOptions& o) {
  cost::BalanceJob b;
  // Measured per centre just before the run (calibrate --compute-only on this testbed, under its quotas).
  AQ_CHECK(cal.centre_compute_s_per_token.size() == per.size(), "the compute calibration has ",
           cal.centre_compute_s_per_token.size(), " per-centre times for ", per.size(), " centres");
  b.centre_s_per_token = cal.centre_compute_s_per_token;
  b.dp_per_centre = per;
  b.tokens_per_micro = job.tokens_per_rank;
  if (rc.H == 0) {
    int64_t dp = 0;
    for (int v : per) dp += v;
    b.micro_batches = o.grad_accum * dp;
    b.sync_s = cost::predict_step(job, cal).exposed_s;
    return cost::predict_balance_sync(b, rc.balance == "auto");
  }
  cost::DilocoJob dj;
  dj.inner = job;
  dj.inner.layout = {1, job.layout.dp_per_centre, job.layout.ranks_per_node};
  dj.centres = static_cast<int>(per.size()), dj.H = rc.H, dj.F = rc.F, dj.tau = rc.tau, dj.codec = job.codec;
  b.H = rc.H;
  // Centres that never sync each train at their own rate: what pacing over an endless window gives.
  if (rc.H == kNeverSync) return cost::predict_balance_diloco(b, true);
  b.outer_s_per_window = cost::predict_diloco(dj, cal).exposed_s * static_cast<double>(rc.H);
  return cost::predict_balance_diloco(b, rc.balance == "auto");
}

void wan(const WanOptions& o, const std::string& self) {
  if (::geteuid() != 0) {
    std::printf(
        "aq-bench wan: SKIP: the WAN testbed needs root (network namespaces, tc); running as uid %d: run it "
        "with sudo\n",
        static_cast<int>(::geteuid()));
    std::exit(77);
  }
  const TrainShape sh = shape_for(o.config);
  AQ_CHECK(o.centres >= 2, "--centres must be >= 2 (got ", o.centres, ")");
  AQ_CHECK(o.steps >= 1, "--steps must be >= 1 (got ", o.steps, ")");
  std::vector<int> per;
  if (o.ranks_per_centre.empty()) {
    per.assign(static_cast<size_t>(o.centres), 2);
  } else {
    std::stringstream ss(o.ranks_per_centre);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const int v = std::atoi(item.c_str());
      AQ_CHECK(v >= 1, "--ranks-per-centre ", o.ranks_per_centre, ": each count must be >= 1, like 2,2 or 3,1");
      per.push_back(v);
    }
    AQ_CHECK(static_cast<int>(per.size()) == o.centres, "--ranks-per-centre ", o.ranks_per_centre, " lists ",
             per.size(), " centres, --centres is ", o.centres, ": give one count per centre");
  }
  int np = 0;
  std::string split;
  for (int v : per) np += v, split += str(split.empty() ? "" : ",", v);
  std::vector<RunConfig> runs;
  for (const RunConfig& rc : kRunConfigs)
    if (("," + o.configs + ",").find("," + rc.key + ",") != std::string::npos) runs.push_back(rc);
  AQ_CHECK(!runs.empty(), "--configs must list some of ", kConfigKeys, " (got \"", o.configs, "\")");
  bool outer_runs = false, streaming_runs = false;
  for (RunConfig& rc : runs) {
    if (rc.H == 0 || rc.H == kNeverSync) continue;
    outer_runs = true;
    streaming_runs |= rc.tau > 0;
    rc.H = o.outer_steps;
    rc.compress = o.outer_compress;
    rc.ef = o.outer_compress == "none" ? "off" : "on";
    for (const auto& [from, to] : {std::pair<std::string, std::string>{"H50", str("H", o.outer_steps)},
                                   std::pair<std::string, std::string>{"int8", o.outer_compress}}) {
      const size_t at = rc.label.find(from);
      if (at != std::string::npos) rc.label.replace(at, from.size(), to);
    }
  }
  AQ_CHECK(!(o.outer_steps_given || o.outer_compress_given) || outer_runs, "--outer-steps and --outer-compress ",
           "apply to diloco, streaming, diloco-even and diloco-auto only; add one of them to --configs or drop them");
  AQ_CHECK(is_wan_codec_name(o.outer_compress), "--outer-compress must be none, bf16, int8 or int4 (got \"",
           o.outer_compress, "\")");
  AQ_CHECK(o.outer_steps >= 1, "--outer-steps must be >= 1 inner steps between outer syncs (got ", o.outer_steps, ")");
  AQ_CHECK(o.outer_steps >= 2 || !streaming_runs,
           "streaming overlaps its exchange with 1 inner step, so it needs --outer-steps >= 2 (got ", o.outer_steps,
           ")");
  AQ_CHECK(o.grad_accum >= 1, "--grad-accum must be >= 1 (got ", o.grad_accum, ")");
  bool balance_runs = false, sync_balance_runs = false;
  for (const RunConfig& rc : runs) {
    balance_runs |= !rc.balance.empty();
    sync_balance_runs |= !rc.balance.empty() && rc.H == 0;
  }
  AQ_CHECK(!o.grad_accum_given || sync_balance_runs, "--grad-accum applies to sync-even and sync-auto only; add one ",
           "of them to --configs or drop --grad-accum");
  AQ_CHECK(!balance_runs || o.centres == 2, "the balance configurations (sync-even, sync-auto, diloco-even, ",
           "diloco-auto) compare 2 centres, a fast and a slow one; use --centres 2 (got ", o.centres, ")");
  for (const std::string& q : o.cpu_quota) {
    const size_t eq = q.find('=');
    const int k = q.rfind("centre", 0) == 0 && eq != std::string::npos ? std::atoi(q.c_str() + 6) : -1;
    const double cores = eq != std::string::npos ? std::atof(q.c_str() + eq + 1) : 0;
    AQ_CHECK(k >= 0 && k < o.centres && cores >= 0.01, "--cpu-quota ", q, " must be centreK=CORES with K < ",
             o.centres, " and CORES >= 0.01, e.g. centre1=0.5");
  }
  if (!o.cpu_quota.empty() && !std::ifstream("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").good()) {
    std::printf("aq-bench wan: SKIP: --cpu-quota needs the cgroup v1 cpu controller at /sys/fs/cgroup/cpu, which "
                "this machine lacks\n");
    std::exit(77);
  }
  rate_bytes_per_s(o.rate);
  const std::string bin = self.substr(0, self.rfind('/'));
  g_testbed = std::string(AQ_SOURCE_DIR) + "/scripts/wan_testbed.sh";
  const std::string out_dir = o.out.find('/') != std::string::npos ? o.out.substr(0, o.out.rfind('/')) : ".";
  must_run("mkdir -p " + sh_quote(out_dir), "mkdir");
  check_writable(o.out + ".csv", "benchmark table");

  char tmpl[] = "/tmp/aq-bench-wan-XXXXXX";
  AQ_CHECK(::mkdtemp(tmpl) != nullptr, "cannot create a temporary directory under /tmp");
  const std::string tmp = tmpl;
  // The temporary directory and (once up) the testbed are removed on every exit from here on: errors return
  // through run_main to exit(), which runs these; signals through on_signal (testbed_down does nothing until
  // g_name is set).
  std::snprintf(g_tmp, sizeof(g_tmp), "%s", tmp.c_str());
  std::atexit(remove_tmp);
  std::atexit(testbed_down);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGHUP, on_signal);
  std::fprintf(stderr, "[wan] preparing data: %s\n", o.text.c_str());
  must_run(bin + "/aq-prepare --out " + tmp + "/data " + o.text + " > /dev/null", "aq-prepare");

  g_name = str("aqb", ::getpid() % 1000000);
  {
    std::string up;
    const int rc =
        run_capture(str(g_testbed, " up --centres ", o.centres, " --rate ", o.rate, " --name ", g_name, " 2>&1"), up);
    if (rc == 77) {
      g_name.clear();
      std::printf("aq-bench wan: SKIP: %s", up.c_str());
      std::exit(77);
    }
    std::string first = up.substr(0, up.find('\n'));
    AQ_CHECK(rc == 0, "wan_testbed.sh up failed (exit ", rc, "): ", first, "; run scripts/wan_testbed.sh up by hand to see all");
  }
  const nlohmann::json status =
      nlohmann::json::parse(must_run(g_testbed + " status --json --name " + g_name, "testbed status"));
  const double rate_Bps = status.at("rate_bits_per_s").get<double>() / 8;
  const std::string tput = must_run(g_testbed + " throughput --seconds 2 --name " + g_name, "testbed throughput");
  std::fprintf(stderr, "[wan] testbed %s up: %d centres at %s; %s", g_name.c_str(), o.centres, o.rate.c_str(),
               tput.c_str());
  std::string quota;
  for (const std::string& q : o.cpu_quota) quota += " --cpu-quota " + sh_quote(q);
  const std::string run_prefix = str(g_testbed, " run ", np, " --name ", g_name, " --ranks-per-centre ", split,
                                     " --env OMP_NUM_THREADS=", o.threads, quota, " -- ");
  const std::string data = sh_quote(tmp + "/data/train_*.bin"), val = sh_quote(tmp + "/data/val_*.bin");

  // Calibration on this testbed (or a saved one).
  std::string cal_path = o.calibration;
  if (cal_path.empty()) {
    cal_path = o.save_calibration.empty() ? tmp + "/calibration.json" : o.save_calibration;
    std::fprintf(stderr, "[wan] calibrating the cost model on the testbed\n");
    must_run(str(run_prefix, self, " calibrate --config ", o.config, " --threads ", o.threads, " --data ", data,
                 " --save-calibration ", sh_quote(cal_path)),
             "calibration");
  }
  const cost::Calibration cal = load_calibration(cal_path);

  std::vector<Measured> res;
  for (const RunConfig& rc : runs) {
    Measured m;
    m.rc = rc;
    const std::string log = o.out + "_" + rc.key + ".jsonl";
    std::remove(log.c_str());
    std::fprintf(stderr, "[wan] %s: %d steps on %d ranks\n", rc.label.c_str(), o.steps, np);
    // Compute is measured again just before each run: the machine's load (shared cores) drifts over minutes.
    const std::string compute_cal = tmp + "/compute_" + rc.key + ".json";
    must_run(str(run_prefix, self, " calibrate --compute-only --config ", o.config, " --threads ", o.threads,
                 " --data ", data, " --save-calibration ", sh_quote(compute_cal)),
             "compute calibration");
    cost::Calibration run_cal = cal;
    const cost::Calibration fresh = load_calibration(compute_cal);
    run_cal.compute_s_per_token = fresh.compute_s_per_token;
    run_cal.centre_compute_s_per_token = fresh.centre_compute_s_per_token;
    // --balance auto times steps after one warm-up step: a synchronous step runs --grad-accum micro-batches, so 3
    // are plenty; a DiLoCo inner step is one micro-batch (~40 ms here), and a cgroup quota throttles in 100 ms
    // periods, so 3 of them can run unthrottled and misjudge the slow centre: it times 20.
    const int balance_steps = rc.H > 0 ? 20 : 3;
    // Steps left out of the figures: 2 of warm-up, and under --balance auto also the timed steps (the split or
    // pace applies from the step after them).
    const int skip = rc.balance == "auto" ? 2 + balance_steps : 2;
    // Micro-batches per step: --grad-accum in the synchronous balance configurations, and in "alone" beside them,
    // so the standalone rates carry the same per-step costs (one optimizer step per --grad-accum micro-batches).
    const bool accum = (!rc.balance.empty() && rc.H == 0) || (rc.key == "alone" && sync_balance_runs);
    const auto before = link_tx(g_testbed, g_name);
    const double t0 = steady_ms();
    std::string out;
    const std::string cmd =
        str("timeout ", 600 + 10 * o.steps, " ", run_prefix, self, " wan-worker --config ", o.config, " --steps ",
            o.steps, " --threads ", o.threads, " --lr ", o.lr, " --eval-batches ", o.eval_batches, " --data ", data,
            " --val-data ", val, " --skip ", skip, " --dp-algo ", rc.algo, " --wan-compress ", rc.compress,
            " --error-feedback ", rc.ef, " --log ", sh_quote(log),
            rc.H > 0 ? str(" --outer diloco --outer-steps ", rc.H, " --outer-fragments ", rc.F, " --outer-overlap ", rc.tau)
                     : std::string(),
            rc.balance.empty() ? std::string() : str(" --balance ", rc.balance, " --balance-steps ", balance_steps),
            accum ? str(" --grad-accum ", o.grad_accum) : std::string());
    const int code = run_capture(cmd + " 2>&1", out);
    m.wall_s = (steady_ms() - t0) / 1e3;
    const auto after = link_tx(g_testbed, g_name);
    std::ofstream(o.out + "_" + rc.key + ".log") << cmd << "\n" << out;
    AQ_CHECK(code == 0, rc.label, " run failed (exit ", code, "); its output is in ", o.out, "_", rc.key, ".log");
    const nlohmann::json w = last_json(out, "ranks");
    AQ_CHECK(w.is_object(), rc.label, ": no result line from the worker; see ", o.out, "_", rc.key, ".log");
    // Rank 0's JSONL: step time, exposed communication, its wan_bytes.
    std::vector<double> ms, exp, wb;
    std::ifstream f(log);
    std::string line;
    while (std::getline(f, line)) {
      const nlohmann::json j = nlohmann::json::parse(line);
      if (j.contains("split")) continue;
      if (j.at("step").get<int>() <= skip && o.steps > skip) continue;
      ms.push_back(j.at("ms").get<double>());
      exp.push_back(j.value("exposed_comm_ms", 0.0));
      wb.push_back(j.value("wan_bytes", 0.0));
    }
    m.step_ms = median(ms), m.exposed_ms = median(exp), m.wan_bytes_rank0 = median(wb);
    m.comm_ms = w["ranks"][0]["comm_ms"].get<double>();
    m.final_loss = w["final_loss"].get<double>();
    m.val_loss = w["val_loss"].get<double>();
    // A run that never syncs evaluates the initial global model: no validation figure to compare ("nan").
    if (rc.H == kNeverSync) m.val_loss = std::nan("");
    double job_total = 0;
    std::map<int, double> centre_wan_ms, centre_bytes;
    m.split = balance_choice(out);
    m.tokens_per_step =
        static_cast<double>(np) * sh.batch * sh.seq * (accum ? o.grad_accum : 1);
    for (const auto& r : w["ranks"]) {
      m.mean_ms = std::max(m.mean_ms, r["mean_ms"].get<double>());
      m.tokens_per_s_rank += r["tokens_per_s"].get<double>() / np;
      m.wan_bytes_job += r["wan_bytes"].get<double>();
      m.exposed_max_ms = std::max(m.exposed_max_ms, r["exposed_ms"].get<double>());
      job_total += r["wan_bytes_total"].get<double>();
      const int c = r["centre"].get<int>();
      centre_wan_ms[c] = std::max(centre_wan_ms[c], r["wan_ms"].get<double>());
      m.rank_centre.push_back(c);
      m.rank_tokens_per_s.push_back(r["tokens_per_s"].get<double>());
      m.rank_waiting.push_back(r["exposed_share"].get<double>());
    }
    for (const auto& [name, tx] : after) {
      const double d = tx - before.at(name);
      m.link_bytes += d / o.steps;
      const int c = std::atoi(name.c_str() + 6);  // "centreK"
      centre_bytes[c] = d / o.steps;
    }
    // Low-communication runs send on a few steps only, so their per-step figure is the run's total spread over
    // the steps, not a median (which would be 0).
    if (rc.H > 0) m.wan_bytes_job = job_total / o.steps;
    for (const auto& [c, bytes] : centre_bytes)
      if (centre_wan_ms[c] > 0) m.util_by_centre.push_back(bytes / (centre_wan_ms[c] / 1e3) / rate_Bps);
    m.link_util = m.util_by_centre.empty() ? 0 : median(m.util_by_centre);
    // The model's view of the same job.
    cost::StepJob job;
    job.params = sh.params();
    job.tokens_per_rank = static_cast<double>(sh.batch) * sh.seq;
    job.layout = {o.centres, *std::min_element(per.begin(), per.end()), *std::min_element(per.begin(), per.end())};
    job.algo = rc.algo == "flat" ? cost::Algo::FlatBinomial : cost::Algo::Hier;
    job.codec = wan_codec_from_name(rc.compress);
    if (rc.H > 0) {
      // Low-communication runs: the model's mean step over a window of H steps, against the measured mean.
      cost::DilocoJob dj;
      dj.inner = job;
      dj.inner.layout = {1, job.layout.dp_per_centre, job.layout.ranks_per_node};
      dj.centres = o.centres, dj.H = rc.H, dj.F = rc.F, dj.tau = rc.tau, dj.codec = job.codec;
      const cost::DilocoPrediction p = cost::predict_diloco(dj, run_cal);
      m.pred_step_ms = p.step_s * 1e3, m.pred_exposed_ms = p.exposed_s * 1e3;
      m.pred_compute_ms = p.utilisation * p.step_s * 1e3;
      m.pred_wan_job = p.wan_bytes_per_step * o.centres;
    } else {
      const cost::Prediction p = cost::predict_step(job, run_cal);
      m.pred_compute_ms = p.compute_s * 1e3;
      m.pred_step_ms = p.step_s * 1e3, m.pred_exposed_ms = p.exposed_s * 1e3, m.pred_wan_job = p.wan_bytes_job;
    }
    if (!rc.balance.empty() || rc.key == "alone") {
      m.pred_balance = predict_balance(rc, job, run_cal, per, o);
      // The step with its micro-batches, or a DiLoCo window's mean step: the slowest centre's compute, and what
      // the step (window) adds after it.
      if (!rc.balance.empty()) {
        const double per = 1e3 / static_cast<double>(rc.H > 0 ? rc.H : 1);
        m.pred_step_ms = m.pred_balance.period_s * per;
        m.pred_compute_ms = m.pred_balance.compute_s * per;
        m.pred_exposed_ms = m.pred_step_ms - m.pred_compute_ms;
      }
    }
    std::fprintf(stderr, "[wan] %s: %.1f ms/step, exposed %.1f ms (rank 0), %.1f ms (slowest rank), %.0f s\n",
                 rc.label.c_str(), m.step_ms, m.exposed_ms, m.exposed_max_ms, m.wall_s);
    res.push_back(m);
  }
  testbed_down();

  // Tables.
  const Measured& base = res.front();
  std::printf(
      "\naq-bench wan: %s (%.0f parameters, B%d T%d per rank), %d centres x %s ranks at %s (tbf, no latency "
      "emulated), %d thread(s) per rank, %d steps, lr %g constant, seed 1337; medians over steps 3..%d of rank "
      "0\n",
      o.config.c_str(), sh.params(), sh.batch, sh.seq, o.centres, split.c_str(), o.rate.c_str(), o.threads, o.steps,
      o.lr, o.steps);
  std::printf("testbed throughput check: %s", tput.c_str());
  std::printf("%-*s %8s %8s %8s %12s %12s %12s %6s %5s %8s %8s | %6s %7s %7s %7s\n", kLabelWidth, "config", "step",
              "exposed", "exposed", "wan B rank0", "wan B ranks", "link B", "link/", "util", "loss", "val", "step",
              "exposed", "bytes", "val");
  std::printf("%-*s %8s %8s %8s %12s %12s %12s %6s %5s %8s %8s | %6s %7s %7s %7s\n", kLabelWidth, "", "ms", "rank 0",
              "max", "/step", "/step", "/step", "ranks", "", "final", "loss", "x", "x", "x", "diff");
  std::ofstream csv(o.out + ".csv");
  csv << "config,algo,compress,error_feedback,rate,steps,step_ms,exposed_ms,exposed_max_ms,comm_ms,wan_bytes_rank0,wan_"
         "bytes_ranks,"
         "link_bytes,link_over_wan,link_util,final_loss,val_loss,step_speedup,exposed_ratio,wan_bytes_ratio,"
         "val_rel_diff,pred_step_ms,pred_exposed_ms,pred_err_pct,pred_wan_bytes,pred_compute_ms\n";
  for (const Measured& m : res) {
    const double step = m.rc.H > 0 ? m.mean_ms : m.step_ms, base_step = base.rc.H > 0 ? base.mean_ms : base.step_ms;
    const double sp = base_step / step, er = base.exposed_max_ms / std::max(1e-9, m.exposed_max_ms);
    const double br = base.link_bytes / std::max(1.0, m.link_bytes), vd = (m.val_loss - base.val_loss) / base.val_loss;
    const double lw = m.link_bytes / std::max(1.0, m.wan_bytes_job);
    // flat's wan_ms is the in-flight time of the ranks a ring would cross with, not a cross-centre stage: no util.
    // Nor for the low-communication runs, whose cross-centre stage runs behind the inner steps.
    const bool no_util = m.rc.algo == "flat" || m.rc.H > 0;
    const std::string util = no_util ? "n/a" : str(static_cast<int>(std::lround(100 * m.link_util)), "%");
    std::printf("%-*s %8.1f %8.1f %8.1f %12.0f %12.0f %12.0f %6.2f %5s %8.4f %8.4f | %5.2fx %6.2fx %6.2fx %+6.2f%%\n",
                kLabelWidth, m.rc.label.c_str(), m.step_ms, m.exposed_ms, m.exposed_max_ms, m.wan_bytes_rank0,
                m.wan_bytes_job, m.link_bytes, lw, util.c_str(), m.final_loss, m.val_loss, sp, er, br, 100 * vd);
    csv << m.rc.key << ',' << m.rc.algo << ',' << m.rc.compress << ',' << m.rc.ef << ',' << o.rate << ',' << o.steps
        << ',' << m.step_ms << ',' << m.exposed_ms << ',' << m.exposed_max_ms << ',' << m.comm_ms << ','
        << m.wan_bytes_rank0 << ',' << m.wan_bytes_job << ',' << m.link_bytes << ',' << lw << ','
        << (no_util ? std::string() : std::to_string(m.link_util)) << ',' << m.final_loss << ',' << m.val_loss << ','
        << sp << ',' << er << ',' << br << ',' << vd << ',' << m.pred_step_ms << ',' << m.pred_exposed_ms << ','
        << 100 * (m.pred_step_ms - m.step_ms) / m.step_ms << ',' << m.pred_wan_job << ',' << m.pred_compute_ms << '\n';
  }
  csv.close();
  std::printf(
      "(exposed: communication the step waited for, median over steps, on rank 0 (its JSONL) and on the "
      "slowest rank (max over ranks; in flat, rank 0 is the tree's root, whose sends end when the kernel has "
      "buffered them, so it waits least); link B: what all centres' links sent per step "
      "(start-up and evaluation included); link/ranks: link bytes over the ranks' wan_bytes; util: a centre's "
      "link bytes over the longest cross-stage time (wan_ms) of its ranks, against the shaped rate (median of "
      "centres); x: flat fp32 over this (exposed: slowest rank; bytes: link bytes); val diff: against flat "
      "fp32; centres alone never syncs, so it has no validation loss)\n");

  // Per token: what each configuration sent and how fast each rank trained, against the centres training alone
  // (when measured) and flat fp32 (when measured).
  const Measured* alone = nullptr;
  const Measured* flat = nullptr;
  for (const Measured& m : res) {
    if (m.rc.key == "alone") alone = &m;
    if (m.rc.key == "flat") flat = &m;
  }
  std::printf("\nper token: %s\n", "mean step of the slowest rank, tokens/s each rank trained (mean over ranks), bytes per "
              "token trained (the ranks' wan_bytes and the links' counters)");
  std::printf("%-*s %9s %10s %9s %12s %12s %11s %9s %9s\n", kLabelWidth, "config", "mean ms", "tok/s/rank", "vs alone",
              "wan B/token", "link B/token", "vs flat", "pred ms", "pred err");
  for (const Measured& m : res) {
    const double tokens = m.tokens_per_step * o.steps;
    const double link_per_token = m.link_bytes * o.steps / tokens;
    std::printf(
        "%-*s %9.1f %10.1f %9s %12.2f %12.2f %11s %9.1f %+8.1f%%\n", kLabelWidth, m.rc.label.c_str(), m.mean_ms,
        m.tokens_per_s_rank,
        alone ? str(static_cast<int>(std::lround(100 * m.tokens_per_s_rank / alone->tokens_per_s_rank)), "%").c_str()
              : "-",
        m.wan_bytes_job / m.tokens_per_step, link_per_token,
        flat && m.link_bytes > 0
            ? str(static_cast<int>(std::lround(flat->link_bytes / m.link_bytes)), "x fewer").c_str()
            : "-",
        m.pred_step_ms, 100 * (m.pred_step_ms - m.mean_ms) / m.mean_ms);
  }
  std::printf("(wan B/token: median wan_bytes per step summed over ranks, per token of the step; link B/token: every "
              "centre's tx over the run, start-up and evaluation included, per token trained; vs flat: flat fp32's "
              "link bytes over this one's; pred: the cost model's mean step (predict_diloco for the DiLoCo runs))\n");

  print_balance_table(res, o);

  // Predicted vs measured.
  std::printf("\ncost model vs measurement (%s)\n", cal.source.c_str());
  std::printf("%s", describe_calibration(cal).c_str());
  std::printf("(compute: measured on the testbed's ranks just before each configuration ran; links: once, above)\n");
  std::printf("%-*s %12s %12s %8s %12s %13s %13s %14s %14s\n", kLabelWidth, "config", "measured ms", "predicted ms",
              "error", "pred compute", "exposed max", "pred exposed", "link B/step", "pred B/step");
  int within = 0;
  // Synchronous runs: the median step; low-communication ones: the mean (their outer syncs fall on few steps).
  const auto measured_ms = [](const Measured& m) { return m.rc.H > 0 ? m.mean_ms : m.step_ms; };
  for (const Measured& m : res) {
    const double err = 100 * (m.pred_step_ms - measured_ms(m)) / measured_ms(m);
    within += std::fabs(err) <= 15;
    std::printf("%-*s %12.1f %12.1f %+7.1f%% %12.1f %13.1f %13.1f %14.0f %14.0f\n", kLabelWidth, m.rc.label.c_str(),
                measured_ms(m), m.pred_step_ms, err, m.pred_compute_ms, m.exposed_max_ms, m.pred_exposed_ms,
                m.link_bytes, m.pred_wan_job);
  }
  std::vector<size_t> by_meas(res.size()), by_pred(res.size());
  for (size_t i = 0; i < res.size(); ++i) by_meas[i] = by_pred[i] = i;
  std::sort(by_meas.begin(), by_meas.end(),
            [&](size_t a, size_t b) { return measured_ms(res[a]) < measured_ms(res[b]); });
  std::sort(by_pred.begin(), by_pred.end(),
            [&](size_t a, size_t b) { return res[a].pred_step_ms < res[b].pred_step_ms; });
  std::string order_m, order_p;
  for (size_t i = 0; i < res.size(); ++i) {
    order_m += str(i ? " < " : "", res[by_meas[i]].rc.label);
    order_p += str(i ? " < " : "", res[by_pred[i]].rc.label);
  }
  std::printf("within 15%%: %d of %zu (target: all); ordering %s (measured: %s; predicted: %s)\n", within, res.size(),
              by_meas == by_pred ? "matches" : "DIFFERS", order_m.c_str(), order_p.c_str());

  print_what_if(o.what_if_latency_ms / 1e3);

  std::string plot = str("/usr/bin/python3 ", AQ_SOURCE_DIR, "/scripts/plot_wan.py ", sh_quote(o.out + ".csv"), " ",
                         sh_quote(o.out + ".png"));
  for (const Measured& m : res) plot += " " + sh_quote(m.rc.label + "=" + o.out + "_" + m.rc.key + ".jsonl");
  std::string plot_out;
  if (run_capture(plot + " 2>&1", plot_out) == 0)
    std::printf("\nwrote %s.csv and %s.png\n", o.out.c_str(), o.out.c_str());
  else
    std::printf("\nwrote %s.csv; no plot (%s)\n", o.out.c_str(), plot_out.c_str());
  remove_tmp();
}

}  // namespace

int wan_main(int argc, char** argv) {
  WanOptions o;
  CLI::App app{"aq-bench wan: flat/hier/bf16/int8 training on the WAN testbed, measured and predicted (needs root)"};
  app.add_option("--centres", o.centres, "Emulated centres")->capture_default_str();
  app.add_option("--ranks-per-centre", o.ranks_per_centre, "Ranks of each centre, e.g. 2,2 (default 2 each)");
  app.add_option("--rate", o.rate, "Each centre's link rate, up and down (tc units)")->capture_default_str();
  app.add_option("--steps", o.steps, "Training steps per configuration")->capture_default_str();
  app.add_option("--config", o.config, "tiny (L4 H4 C128 V256 T64 B8) | small (L6 H6 C384 T64 B4)")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads per rank")->capture_default_str();
  app.add_option("--lr", o.lr, "Learning rate (constant)")->capture_default_str();
  app.add_option("--eval-batches", o.eval_batches, "Validation batches at the end")->capture_default_str();
  app.add_option("--configs", o.configs,
                 "Subset of flat,hier,hier-bf16,hier-int8 (synchronous) and alone,diloco,streaming (DiLoCo, H and "
                 "codec per --outer-steps and --outer-compress; streaming adds F 4, tau 1; alone never syncs: the "
                 "single-centre rate); for centres of different speed (with --cpu-quota): sync-even, sync-auto "
                 "(--balance auto, --grad-accum micro-batches per rank), diloco-even, diloco-auto (--balance auto)")
      ->capture_default_str();
  app.add_option("--cpu-quota", o.cpu_quota,
                 "centreK=CORES: hold a centre's ranks to that many cores (the testbed's cgroup quota) in every run "
                 "and calibration, repeatable; the balance configurations compare such centres");
  CLI::Option* accum = app.add_option("--grad-accum", o.grad_accum,
                                      "Micro-batches per rank and step of sync-even and sync-auto")
                           ->capture_default_str();
  CLI::Option* outer = app.add_option("--outer-steps", o.outer_steps,
                                      "H of diloco, streaming, diloco-even and diloco-auto (inner steps per sync)")
                           ->capture_default_str();
  CLI::Option* outer_compress =
      app.add_option("--outer-compress", o.outer_compress,
                     "Codec of the outer exchange of diloco, streaming, diloco-even and diloco-auto: none | bf16 | "
                     "int8 | int4 (with error feedback unless none)")
          ->capture_default_str();
  app.add_option("--text", o.text, "Text files for aq-prepare (shell glob)")->capture_default_str();
  app.add_option("--calibration", o.calibration, "Use this calibration instead of calibrating on the testbed");
  app.add_option("--save-calibration", o.save_calibration, "Keep the testbed's calibration here");
  app.add_option("--what-if-latency-ms", o.what_if_latency_ms, "WAN latency of the what-if tables")
      ->capture_default_str();
  app.add_option("--out", o.out, "Output prefix: PREFIX.csv, PREFIX.png, PREFIX_<config>.jsonl/.log")
      ->capture_default_str();
  const std::string self = self_exe(argv[0]);
  return run_main("aq-bench wan", app, argc, argv, [&] {
    o.grad_accum_given = accum->count() > 0;
    o.outer_steps_given = outer->count() > 0;
    o.outer_compress_given = outer_compress->count() > 0;
    wan(o, self);
  });
}

}  // namespace aq::bench
