// test_util.h — shared helpers for the operator and model tests: random fills, kernel lookup, relative error
// and a central finite-difference gradient check in double precision.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "ops/registry.h"
#include "runtime/rng.h"

namespace aq::test {

template <typename T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(scale * rng.normal());
  return v;
}

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

}  // namespace aq::test
