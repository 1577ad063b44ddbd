// test_util.h — shared test helpers: random fills and tokens, kernel lookup, relative error, a central
// finite-difference gradient check in double precision, error-message checks and a per-test temporary folder.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ops/registry.h"
#include "runtime/checkpoint_dir.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "runtime/safetensors.h"
#include "train/trainer.h"

namespace aq::test {

template <typename T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(scale * rng.normal());
  return v;
}

inline std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  return t;
}

// Runs fn, which must throw aq::Error with a one-line message containing every string in `parts`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "\"" << p << "\" not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message spans several lines: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected aq::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected aq::Error, nothing was thrown";
}

// A fixture with a fresh temporary folder per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/aq-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
};

template <typename Fn>
Fn* kernel(const std::string& op, DType dt) {
  return ops::Registry::instance().find<Fn>(op, Device::CPU, dt);
}

// max_i |a_i - b_i| / (max_i |b_i| + tiny): one scale for the whole tensor, so near-zero entries do not dominate.
template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    // A NaN where the reference has none (an unwritten, poisoned element) is an infinite error.
    if (std::isnan(static_cast<double>(a[i])) != std::isnan(static_cast<double>(b[i]))) return INFINITY;
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / (den + 1e-300);
}

// Central differences of loss() with respect to x, compared with `analytic`: at most max_checks entries spread
// over x. The loss must be computed in double from the current contents of x.
inline void expect_gradient(std::vector<double>& x, const std::vector<double>& analytic,
                            const std::function<double()>& loss, const char* what, double tol = 1e-6,
                            size_t max_checks = 300) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const size_t stride = std::max<size_t>(1, x.size() / max_checks);
  double worst = 0, scale = 1e-12;
  for (double g : analytic) scale = std::max(scale, std::fabs(g));
  for (size_t i = 0; i < x.size(); i += stride) {
    const double keep = x[i], h = 1e-5 * std::max(1.0, std::fabs(keep));
    x[i] = keep + h;
    const double lp = loss();
    x[i] = keep - h;
    const double lm = loss();
    x[i] = keep;
    const double numeric = (lp - lm) / (2 * h);
    worst = std::max(worst, std::fabs(numeric - analytic[i]) / scale);
  }
  EXPECT_LT(worst, tol) << "gradient of " << what << " disagrees with finite differences";
}

// Σ proj_i · out_i: a random linear functional turns any output tensor into a scalar loss.
inline double project(const std::vector<double>& out, const std::vector<double>& proj) {
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * proj[i];
  return s;
}

// A config whose model shape comes from elsewhere (--model-config, or the checkpoint it resumes): the flags
// of a fresh model's shape cleared, as if not given.
inline TrainConfig without_shape_flags(TrainConfig c) {
  c.layers.reset();
  c.heads.reset();
  c.dim.reset();
  c.vocab.reset();
  c.max_seq.reset();
  return c;
}

// The model and state files of the newest intact save in a --save directory (or of a save, or a file).
inline std::string saved_model(const std::string& path) { return resolve_checkpoint(path, "test").model; }
inline std::string saved_state(const std::string& path) { return resolve_checkpoint(path, "test").state; }

// Per tensor of `want`, the relative L2 distance ‖got − want‖ / ‖want‖ of two safetensors checkpoints (files, saves
// or --save directories; read in double). Layout and accumulation-order tests hold it to a bound.
inline std::map<std::string, double> checkpoint_rel_errors(const std::string& got, const std::string& want) {
  SafeTensorsReader a(saved_model(got)), b(saved_model(want));
  std::map<std::string, double> out;
  for (const auto& [name, e] : b.entries()) {
    std::vector<double> x(static_cast<size_t>(shape_numel(e.shape))), y(x.size());
    a.read<double>(name, e.shape, x.data());
    b.read<double>(name, e.shape, y.data());
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      num += (x[i] - y[i]) * (x[i] - y[i]);
      den += y[i] * y[i];
    }
    out[name] = std::sqrt(num / std::max(den, 1e-30));
  }
  return out;
}

}  // namespace aq::test
