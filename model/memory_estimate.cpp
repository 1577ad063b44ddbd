#include "model/memory_estimate.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "runtime/error.h"

namespace aq {

MemoryEstimate estimate_memory(const ModelConfig& cfg, int B, int T, int tp, double optimizer_share, bool bf16,
                               bool diloco) {
  const double C = cfg.n_embd, L = cfg.n_layer, V = cfg.vocab_size, H = cfg.n_head, N = static_cast<double>(B) * T;
  const double hs = cfg.head_size(), qkv = (cfg.n_head + 2.0 * cfg.kv_heads()) * hs, F = cfg.ffn();
  // Parameters of this rank's shard, per block: the attention projections (qkv, out), the MLP's (GPT-2: c_fc and
  // c_proj with biases; Llama: gate, up and down), the norms; then the tables (wte; GPT-2's wpe; an untied head).
  const double mlp = cfg.llama() ? 3.0 * C * F / tp : 2.0 * C * F / tp + F / tp + C;
  const double attn = (C * qkv + C * C) / tp + (cfg.llama() ? 0.0 : qkv / tp + C);
  const double per_block = attn + mlp + (cfg.llama() ? 2.0 : 4.0) * C;
  const double tables = V / tp * C * (cfg.tied_head ? 1 : 2) + (cfg.llama() ? 0.0 : cfg.max_seq * C);
  const double n_params = L * per_block + tables + 2.0 * C;
  MemoryEstimate e;
  e.params = n_params * (bf16 ? 2 + 4 : 4);  // working copy (+ fp32 master)
  e.grads = n_params * 4;
  e.optimizer = n_params * 8 * optimizer_share;
  e.outer = diloco ? n_params * 8 : 0;
  // Activations kept for backward, per block and token: the residual stream and its norms (~4C), q/k/v and the
  // attention output, the MLP's first GEMM output (4C for GPT-2, 2F for a Llama), statistics; plus attention's
  // per-head values.
  const double es = bf16 ? 2 : 4;
  const double fc = cfg.llama() ? 2.0 * F : F;
  const double per_token_block = (4.0 * C + (qkv + C + fc) / tp) * es + (2.0 + 2.0 * H / tp) * 4;
  e.activations = L * N * per_token_block + N * (3.0 * C * es + 8) + 64.0 * V / tp * 4 * 8;
  return e;
}

namespace {

double read_number(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return 0;
  try {
    return std::stod(s);
  } catch (...) {
    return 0;
  }
}

}  // namespace

double available_host_bytes() {
  double avail = 0;
  {
    std::ifstream f("/proc/meminfo");
    std::string key;
    double kb = 0;
    std::string unit;
    while (f >> key >> kb >> unit)
      if (key == "MemAvailable:") avail = kb * 1024;
  }
  // cgroup v2, then v1 (a v1 "no limit" is a huge number, which the min below ignores).
  double limit = read_number("/sys/fs/cgroup/memory.max"), used = read_number("/sys/fs/cgroup/memory.current");
  if (limit <= 0) {
    limit = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    used = read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  }
  if (limit > 0 && limit < 1e18) {
    const double room = limit - used;
    avail = avail > 0 ? std::min(avail, room) : room;
  }
  return avail;
}

std::string gib(double bytes) {
  char buf[32];
  if (bytes < 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof(buf), "%.1f MiB", bytes / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / (1024.0 * 1024 * 1024));
  return buf;
}

}  // namespace aq
