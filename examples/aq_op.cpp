// aq-op — what operators Aqueduct knows, and what a plugin carries.
//
//   build/bin/aq-op list                      every built-in operator (and those of AQ_PLUGIN_PATH's plugins)
//   build/bin/aq-op inspect libmyorg_ops.so   a plugin: its ABI version, operators, kernels, sharding rules,
//                                             and the CUDA architectures it declares
//   build/bin/aq-op check [--plugin lib.so ...] [OP ...]
//                                             every operator (or those named) through ops/op_check.h: kernels,
//                                             shapes against what the kernel writes, backward against float64
//                                             finite differences, determinism, CUDA against CPU, sharding rules;
//                                             exit 1 on any FAIL
// Inspecting loads the plugin exactly as aq-train would (same checks, same refusals), so "aq-op inspect
// works" means "aq-train --plugin will accept it".
#include <CLI/CLI.hpp>
#include <cstdio>
#include <random>

#include "examples/main_guard.h"
#include "ops/op_check.h"
#include "ops/op_def.h"
#include "ops/plugin_loader.h"

namespace {

using aq::str;
using aq::ops::OpDef;

std::string flags_str(uint32_t f) {
  std::string s;
  auto add = [&](const char* w) { s += (s.empty() ? "" : ", ") + std::string(w); };
  if (f & AQ_TENSOR_PARAM) add("parameter");
  if (f & AQ_TENSOR_OPTIONAL) add("optional");
  if (f & AQ_TENSOR_NO_GRAD) add("no grad");
  if (f & AQ_TENSOR_GRAD_ACCUMULATES) add("grad accumulates");
  return s.empty() ? "" : " (" + s + ")";
}

std::string tensor_str(const aq::ops::TensorSpec& t) {
  const std::string rank = t.ndim < 0 ? "any rank" : str(t.ndim, "-d");
  return str(t.name, ": ", aq::ops::spec_dtype_str(t.dtype), " [", t.shape.empty() ? rank : t.shape, "]",
             t.shape.empty() ? "" : str(" ", rank), flags_str(t.flags));
}

void print_op(const OpDef& d) {
  std::printf("op %s v%u\n", d.name.c_str(), d.version);
  if (!d.doc.empty()) std::printf("  doc        %s\n", d.doc.c_str());
  std::printf("  from       %s%s\n", d.origin.c_str(), d.plugin.empty() ? "" : str(" (", d.plugin, ")").c_str());
  for (const auto& t : d.inputs) std::printf("  input      %s\n", tensor_str(t).c_str());
  for (const auto& t : d.outputs) std::printf("  output     %s\n", tensor_str(t).c_str());
  for (const auto& a : d.attrs)
    std::printf("  attribute  %s: %s%s\n", a.name.c_str(), a.type == AQ_ATTR_INT ? "int" : "float",
                a.doc.empty() ? "" : str(" — ", a.doc).c_str());
  if (d.has_backward) {
    std::string saved;
    for (int32_t s : d.saved) saved += (saved.empty() ? "" : ", ") + d.tensor_name(s);
    std::printf("  backward   saves %s; recomputes %s\n", saved.empty() ? "nothing" : saved.c_str(),
                d.recomputed.empty() ? "nothing" : d.recomputed.c_str());
  } else {
    std::printf("  backward   none (not differentiable)\n");
  }
  for (const auto& k : d.kernels) {
    std::string what;
    if (k.typed) {
      what = str("typed: ", d.typed.forward,
                 d.typed.backward.empty() || d.typed.backward == d.typed.forward ? "" : str(", ", d.typed.backward));
      for (const std::string& v : d.typed.variants) what += str(", ", v);
    } else {
      what = k.backward ? "forward, backward" : "forward";
    }
    std::printf("  kernel     %s/%s  %s\n", aq::device_name(k.device), aq::dtype_name(k.dtype), what.c_str());
  }
  if (d.sharding.empty()) std::printf("  sharding   none declared: runs replicated only\n");
  for (const auto& r : d.sharding) {
    std::string in, out, grad;
    for (size_t i = 0; i < r.inputs.size(); ++i) {
      in += str(i ? " " : "", d.inputs[i].name, "=", aq::ops::sbp_str(r.inputs[i]));
      grad += str(i ? " " : "", d.inputs[i].name, "=", aq::ops::sbp_str(r.input_grads[i]));
    }
    for (size_t i = 0; i < r.outputs.size(); ++i)
      out += str(i ? " " : "", d.outputs[i].name, "=", aq::ops::sbp_str(r.outputs[i]));
    std::printf("  sharding   %s: in %s | out %s | grad %s\n", r.name.c_str(), in.empty() ? "-" : in.c_str(),
                out.empty() ? "-" : out.c_str(), grad.empty() ? "-" : grad.c_str());
  }
}

void inspect(const std::string& path) {
  const aq::ops::LoadedPlugin& p = aq::ops::load_plugin(path);
  std::printf("plugin %s\n", p.path.c_str());
  std::printf("  name       %s %s\n", p.name.c_str(), p.version.c_str());
  std::printf("  abi        %d.%d (this Aqueduct speaks %d.%d)\n", p.abi_major, p.abi_minor, AQ_OP_ABI_MAJOR,
              AQ_OP_ABI_MINOR);
  bool has_cuda = false;
  for (const std::string& n : p.ops)
    for (const auto& k : aq::ops::OpRegistry::instance().get(n).kernels) has_cuda |= k.device == aq::Device::CUDA;
  // Declared by the plugin (Builder::cuda_archs / AqPlugin.cuda_archs); the .so's fatbin is not read.
  if (!p.cuda_archs.empty()) {
    std::string archs;
    size_t start = 0;
    while (start < p.cuda_archs.size()) {
      const size_t end = std::min(p.cuda_archs.find(';', start), p.cuda_archs.size());
      archs += str(archs.empty() ? "" : ", ", "sm_", p.cuda_archs.substr(start, end - start));
      start = end + 1;
    }
    std::printf("  cuda       %s (declared by the plugin)\n", archs.c_str());
  } else {
    std::printf("  cuda       %s\n", has_cuda ? "CUDA kernels, architectures not declared" : "none (no CUDA kernels)");
  }
  std::printf("  operators  %zu\n", p.ops.size());
  for (const std::string& n : p.ops) print_op(aq::ops::OpRegistry::instance().get(n));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"aq-op: list Aqueduct's operators and inspect operator plugins"};
  app.require_subcommand(1);
  auto* list = app.add_subcommand("list", "Print every built-in operator (and those of AQ_PLUGIN_PATH's plugins)");
  std::vector<std::string> libs;
  auto* insp = app.add_subcommand("inspect", "Load plugins as aq-train would and print what they declare");
  insp->add_option("plugin", libs, "Plugin shared libraries (.so)")->required();
  auto* chk = app.add_subcommand("check", "Check operators: kernels, shapes, backward, determinism, CUDA, sharding");
  std::vector<std::string> check_plugins, check_ops;
  uint64_t seed = std::random_device{}();
  chk->add_option("--plugin", check_plugins, "Plugin shared library to load and check (repeatable)")
      ->allow_extra_args(false);  // one path per --plugin, so operator names can follow
  chk->add_option("--seed", seed, "Seed of the random inputs (default: fresh; printed, to replay a failure)");
  chk->add_option("ops", check_ops, "Operators to check (default: every declared one)");
  bool failed = false;
  // Under mpirun, `check` also runs every sharding rule with one shard per rank; otherwise a world of one.
  aq::ParallelContext& ctx = aq::ParallelContext::init(&argc, &argv);
  const int rc = aq::run_main("aq-op", app, argc, argv, ctx, [&] {
    if (chk->parsed()) {
      aq::ops::load_plugins(check_plugins);
      aq::ops::CheckOptions opt;
      opt.ops = check_ops;
      aq::ops::RankGroup ranks;
      if (ctx.world_size() > 1) {
        ctx.configure(ctx.world_size(), 120.0);
        // Every rank draws the same inputs: rank 0's seed, as two 32-bit words.
        int32_t words[2] = {static_cast<int32_t>(seed & 0xffffffffu), static_cast<int32_t>(seed >> 32)};
        ctx.world().broadcast(words, 2, aq::DType::I32, 0, {})->wait();
        seed = static_cast<uint32_t>(words[0]) | (static_cast<uint64_t>(static_cast<uint32_t>(words[1])) << 32);
        ranks.rank = ctx.world_rank();
        ranks.size = ctx.world_size();
        ranks.all_reduce = [&ctx](double* data, int64_t n, bool max) {
          aq::CollectiveOptions o;
          o.op = max ? aq::ReduceOp::Max : aq::ReduceOp::Sum;
          ctx.world().all_reduce(data, n, aq::DType::F64, o)->wait();
        };
        opt.ranks = &ranks;
      }
      opt.seed = seed;
      failed = aq::ops::check_ops(opt, stdout).failed > 0;
    }
    if (list->parsed()) {
      aq::ops::load_plugins({});
      const auto ops = aq::ops::OpRegistry::instance().list();
      std::printf("operator ABI %d.%d, %zu operators\n", AQ_OP_ABI_MAJOR, AQ_OP_ABI_MINOR, ops.size());
      for (const OpDef* d : ops) print_op(*d);
    }
    if (insp->parsed())
      for (const std::string& l : libs) inspect(l);
  });
  return rc != 0 ? rc : (failed ? 1 : 0);
}
