// common.cpp — helpers shared by the aq-bench subcommands in this folder: sizes and rates, calibration files,
// the shared training shapes, and running a command.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>

#include "examples/bench/bench.h"
#include "runtime/error.h"
#include "runtime/file_io.h"

namespace aq::bench {

double TrainShape::params() const {
  // wte V·C, wpe max_seq·C (aq-train: max(T, 128)), per block 12C² + 13C (qkv, proj, fc, fc-proj, 2 LayerNorms,
  // biases), final LayerNorm 2C; the LM head is tied to wte.
  const double C = dim, mx = std::max(seq, 128);
  return vocab * C + mx * C + layers * (12 * C * C + 13 * C) + 2 * C;
}

TrainShape shape_for(const std::string& config) {
  TrainShape s;
  if (config == "tiny") return s;  // L4 H4 C128 V256 T64 B8: aq-train's default model
  if (config == "small") {
    s.layers = 6, s.heads = 6, s.dim = 384, s.seq = 64, s.batch = 4;
    return s;
  }
  fail(str("unknown --config ", config, " (choose tiny: L4 H4 C128 V256 T64 B8, or small: L6 H6 C384 V256 T64 B4)"));
}

double rate_bytes_per_s(const std::string& rate) {
  static const std::regex re("^([0-9]+(\\.[0-9]+)?)(bit|kbit|mbit|gbit)$");
  std::smatch m;
  AQ_CHECK(std::regex_match(rate, m, re), "rate '", rate, "' is not like 100mbit, 1gbit or 500kbit");
  const double v = std::stod(m[1].str());
  const std::string u = m[3].str();
  const double mult = u == "bit" ? 1 : u == "kbit" ? 1e3 : u == "mbit" ? 1e6 : 1e9;
  AQ_CHECK(v > 0, "rate '", rate, "' must be above zero");
  return v * mult / 8;
}

std::string format_rate(double bytes_per_s) {
  const double bits = bytes_per_s * 8;
  char b[32];
  if (bits >= 1e9)
    std::snprintf(b, sizeof(b), "%g Gbit/s", bits / 1e9);
  else if (bits >= 1e6)
    std::snprintf(b, sizeof(b), "%g Mbit/s", bits / 1e6);
  else
    std::snprintf(b, sizeof(b), "%g kbit/s", bits / 1e3);
  return b;
}

std::vector<double> parse_sizes(const std::string& s) {
  auto one = [&](std::string t) {
    double mult = 1;
    if (!t.empty() && std::string("KMG").find(static_cast<char>(std::toupper(t.back()))) != std::string::npos) {
      const char u = static_cast<char>(std::toupper(t.back()));
      mult = u == 'K' ? 1024.0 : u == 'M' ? 1048576.0 : 1073741824.0;
      t.pop_back();
    }
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(t, &used);
      AQ_CHECK(used == t.size(), "");
    } catch (const std::exception&) {
      fail(str("--sizes '", s, "': '", t, "' is not a size like 4096, 4K or 64M"));
    }
    AQ_CHECK(v * mult >= 4, "--sizes '", s, "': sizes must be at least 4 bytes (one fp32 value)");
    return v * mult;
  };
  std::vector<double> out;
  const size_t colon = s.find(':');
  if (colon != std::string::npos) {
    const double lo = one(s.substr(0, colon)), hi = one(s.substr(colon + 1));
    AQ_CHECK(lo <= hi, "--sizes '", s, "': the range LO:HI needs LO <= HI");
    for (double v = lo; v <= hi * 1.0001; v *= 4) out.push_back(v);
  } else {
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(one(item));
  }
  AQ_CHECK(!out.empty(), "--sizes '", s, "' lists no size");
  return out;
}

std::string format_bytes(double b) {
  char buf[32];
  if (b >= 1073741824.0 && std::fmod(b, 1073741824.0) == 0)
    std::snprintf(buf, sizeof(buf), "%.0f GiB", b / 1073741824.0);
  else if (b >= 1048576.0 && std::fmod(b, 1048576.0) == 0)
    std::snprintf(buf, sizeof(buf), "%.0f MiB", b / 1048576.0);
  else if (b >= 1024.0 && std::fmod(b, 1024.0) == 0)
    std::snprintf(buf, sizeof(buf), "%.0f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof(buf), "%.0f B", b);
  return buf;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int run_capture(const std::string& cmd, std::string& out) {
  out.clear();
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), p)) out += buf;
  const int rc = ::pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string self_exe(const char* argv0) {
  char self[4096] = {0};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  return n > 0 ? std::string(self, static_cast<size_t>(n)) : argv0;
}

// --- calibration files ---

namespace {
const char* kLinkNames[3] = {"node", "centre", "wan"};
}

nlohmann::ordered_json calibration_to_json(const cost::Calibration& c) {
  nlohmann::ordered_json j;
  j["format"] = "aqueduct-calibration-1";
  j["source"] = c.source;
  const cost::Link* links[3] = {&c.node, &c.centre, &c.wan};
  for (int i = 0; i < 3; ++i)
    j["links"][kLinkNames[i]] = {{"alpha_s", links[i]->alpha_s}, {"bytes_per_s", links[i]->bytes_per_s}};
  for (const auto& [bytes, bps] : c.wan_exchange)
    j["links"]["wan_exchange"].push_back({{"stage_bytes", bytes}, {"bytes_per_s", bps}});
  j["compute_s_per_token"] = c.compute_s_per_token;
  if (!c.centre_compute_s_per_token.empty()) j["centre_compute_s_per_token"] = c.centre_compute_s_per_token;
  j["backward_share"] = c.backward_share;
  for (int k = 0; k < kWanCodecs; ++k)
    j["codec"][wan_codec_name(static_cast<WanCodec>(k))] = {{"encode_bytes_per_s", c.encode_bytes_per_s[k]},
                                                            {"decode_bytes_per_s", c.decode_bytes_per_s[k]}};
  return j;
}

cost::Calibration calibration_from_json(const nlohmann::json& j, const std::string& where) {
  cost::Calibration c;
  try {
    AQ_CHECK(j.value("format", "") == "aqueduct-calibration-1", "not an Aqueduct calibration (\"format\" is not ",
             "aqueduct-calibration-1)");
    c.source = j.value("source", where);
    cost::Link* links[3] = {&c.node, &c.centre, &c.wan};
    for (int i = 0; i < 3; ++i) {
      const auto& l = j.at("links").at(kLinkNames[i]);
      links[i]->alpha_s = l.at("alpha_s").get<double>();
      links[i]->bytes_per_s = l.at("bytes_per_s").get<double>();
      AQ_CHECK(links[i]->alpha_s >= 0 && links[i]->bytes_per_s > 0, "link ", kLinkNames[i],
               " needs alpha_s >= 0 and bytes_per_s > 0");
    }
    if (j.at("links").contains("wan_exchange"))
      for (const auto& e : j["links"]["wan_exchange"])
        c.wan_exchange.emplace_back(e.at("stage_bytes").get<double>(), e.at("bytes_per_s").get<double>());
    std::sort(c.wan_exchange.begin(), c.wan_exchange.end());
    c.compute_s_per_token = j.at("compute_s_per_token").get<double>();
    if (j.contains("centre_compute_s_per_token"))
      c.centre_compute_s_per_token = j["centre_compute_s_per_token"].get<std::vector<double>>();
    for (double v : c.centre_compute_s_per_token) AQ_CHECK(v > 0, "centre_compute_s_per_token values must be > 0");
    c.backward_share = j.value("backward_share", c.backward_share);
    for (int k = 0; k < kWanCodecs; ++k) {
      // A file written before int4 existed lacks its entry: int4 takes int8's rates (the same blocks).
      const bool old = k == static_cast<int>(WanCodec::Int4) && !j.at("codec").contains("int4");
      if (old) c.source += " (int4's codec rates: int8's, the file predates int4)";
      const auto& e = j.at("codec").at(wan_codec_name(old ? WanCodec::Int8 : static_cast<WanCodec>(k)));
      c.encode_bytes_per_s[k] = e.at("encode_bytes_per_s").get<double>();
      c.decode_bytes_per_s[k] = e.at("decode_bytes_per_s").get<double>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail(str(where, ": bad calibration file (", e.what(), "); write one with aq-bench calibrate --save-calibration"));
  } catch (const Error& e) {
    fail(str(where, ": ", e.what(), "; write one with aq-bench calibrate --save-calibration"));
  }
  return c;
}

cost::Calibration load_calibration(const std::string& path) {
  std::ifstream f(path);
  AQ_CHECK(f.good(), "cannot read --calibration ", path, " (write one with aq-bench calibrate --save-calibration ",
           path, ")");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    fail(str(path, " is not JSON (", e.what(), "); write it with aq-bench calibrate --save-calibration"));
  }
  return calibration_from_json(j, path);
}

void save_calibration(const cost::Calibration& c, const std::string& path) {
  check_writable(path, "calibration");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << calibration_to_json(c).dump(2) << "\n";
    AQ_CHECK(f.good(), "cannot write ", tmp);
  }
  AQ_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path);
}

std::string describe_calibration(const cost::Calibration& c) {
  std::string s = str("calibration (", c.source, "):\n");
  const cost::Link* links[3] = {&c.node, &c.centre, &c.wan};
  const char* what[3] = {"inside a node ", "inside a centre", "across centres"};
  char line[256];
  for (int i = 0; i < 3; ++i) {
    std::snprintf(line, sizeof(line), "  %-15s alpha %8.1f us   bandwidth %s (%.1f MB/s)\n", what[i],
                  links[i]->alpha_s * 1e6, format_rate(links[i]->bytes_per_s).c_str(), links[i]->bytes_per_s / 1e6);
    s += line;
  }
  for (const auto& [bytes, bps] : c.wan_exchange) {
    std::snprintf(line, sizeof(line),
                  "  WAN exchange    %s per stage on a centre's link: %s (%.1f MB/s; both ways at once)\n",
                  format_bytes(bytes).c_str(), format_rate(bps).c_str(), bps / 1e6);
    s += line;
  }
  std::snprintf(line, sizeof(line), "  compute         %.3f us per token per rank (backward share %.2f)\n",
                c.compute_s_per_token * 1e6, c.backward_share);
  s += line;
  for (size_t k = 0; k < c.centre_compute_s_per_token.size(); ++k) {
    std::snprintf(line, sizeof(line), "    centre %zu      %.3f us per token per rank (its slowest rank)\n", k,
                  c.centre_compute_s_per_token[k] * 1e6);
    s += line;
  }
  for (int k = 0; k < kWanCodecs; ++k) {
    std::snprintf(line, sizeof(line), "  codec %-9s encode %7.0f MB/s, decode %7.0f MB/s (fp32 bytes)\n",
                  wan_codec_name(static_cast<WanCodec>(k)), c.encode_bytes_per_s[k] / 1e6,
                  c.decode_bytes_per_s[k] / 1e6);
    s += line;
  }
  return s;
}

}  // namespace aq::bench
