// fuzz_cli_numbers.cpp — the numeric values of the command line.
//
// aq-train, aq-prepare and aq-generate take their numbers through CLI11 typed options (int, int64_t, uint64_t,
// size_t, double; a repeated flag takes its last value), and two values by hand: --balance K0,K1,…
// (aq::parse_balance_list, runtime/cli_parse.cpp; micro-batches in [1, 100000] or
// DiLoCo inner steps in [1, H]) and --centres auto|N (aq::Topology::names_for). Input: lines,
// each one value; every value is given to each typed option of an App built as aq-train builds its own, and to
// both hand parsers. Parse errors (CLI::ParseError, aq::Error) are the expected refusals; anything else
// (another exception, UB, an out-of-range value accepted) is a finding.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/topology.h"
#include "runtime/cli_parse.h"
#include "runtime/error.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

struct Values {
  int i = 0;
  int64_t l = 0;
  uint64_t u = 0;
  size_t z = 0;
  double d = 0;
  float f = 0;
};

CLI::App& app(Values& v) {
  static CLI::App* a = [&] {
    auto* p = new CLI::App("fuzz");
    p->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    p->add_option("--int", v.i);
    p->add_option("--int64", v.l);
    p->add_option("--uint64", v.u);
    p->add_option("--size", v.z);
    p->add_option("--double", v.d);
    p->add_option("--float", v.f);
    return p;
  }();
  return *a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Values v;
  CLI::App& cli = app(v);
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> values;
  for (size_t start = 0; start <= text.size() && values.size() < 8;) {
    const size_t nl = text.find('\n', start);
    values.push_back(text.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  for (const std::string& value : values) {
    if (value.find('\0') != std::string::npos) continue;  // argv cannot carry a NUL
    for (const char* flag : {"--int", "--int64", "--uint64", "--size", "--double", "--float"}) {
      std::vector<std::string> args = {value, flag};  // CLI11 takes the arguments reversed
      try {
        cli.parse(args);
      } catch (const CLI::ParseError&) {
      }
    }
    // The two lists aq-train parses: micro-batches per rank, and DiLoCo's inner steps per window of H = 50.
    for (const auto& [lo, hi] : {std::pair{1, 100000}, std::pair{1, 50}}) {
      try {
        for (int k : aq::parse_balance_list(value, "values", lo, hi, "3,1"))
          if (k < lo || k > hi) aq::fuzz::property_failed("parse_balance_list accepted a value outside [lo, hi]");
      } catch (const aq::Error&) {
      }
    }
    for (int world : {1, 4, 6}) {
      try {
        const auto names = aq::Topology::names_for(value, world, {});
        if (static_cast<int>(names.size()) != world) aq::fuzz::property_failed("names_for: wrong rank count");
      } catch (const aq::Error&) {
      }
    }
  }
  return 0;
}
