// test_model.cpp — whole-model checks: the GPT-2 gradient against finite differences of the loss (double), and
// the float model against the double model on the same weights.
#include <cmath>

#include "model/transformer.h"
#include "tests/test_util.h"

namespace aq {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.vocab_size = 11;
  c.max_seq = 7;
  return c;
}

// Random weights everywhere (not just GPT-2 init, whose zero biases and unit LayerNorm weights would hide
// mistakes in their gradients).
template <typename T>
void randomize(Transformer<T>& m, uint64_t seed) {
  Rng rng(seed);
  for (const ParamInfo& p : m.params_info())
    for (int64_t i = 0; i < shape_numel(p.shape); ++i)
      m.params()[p.offset + i] = static_cast<T>((p.name.find("ln_") != std::string::npos &&
                                                         p.name.ends_with("weight")
                                                     ? 1.0
                                                     : 0.0) +
                                                0.3 * rng.normal());
}

TEST(GPT2, WholeModelGradientMatchesFiniteDifferences) {
  const int B = 2, T = 5;
  Transformer<double> model(tiny_config(), B, T);
  randomize(model, 1);
  auto inp = test::random_tokens(B * T, 11, 2), tgt = test::random_tokens(B * T, 11, 3);
  const double loss = model.forward_backward(inp.data(), tgt.data(), B, T);
  EXPECT_NEAR(loss, model.evaluate(inp.data(), tgt.data(), B, T), 1e-14);
  std::vector<double> grads(model.grads(), model.grads() + model.buffer_size());
  for (const ParamInfo& p : model.params_info()) {
    const int64_t n = shape_numel(p.shape);
    double scale = 1e-10, worst = 0;
    for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(grads[p.offset + i]));
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 25)) {
      double& w = model.params()[p.offset + i];
      const double keep = w, h = 1e-5;
      w = keep + h;
      const double lp = model.evaluate(inp.data(), tgt.data(), B, T);
      w = keep - h;
      const double lm = model.evaluate(inp.data(), tgt.data(), B, T);
      w = keep;
      worst = std::max(worst, std::fabs((lp - lm) / (2 * h) - grads[p.offset + i]) / scale);
    }
    EXPECT_LT(worst, 1e-6) << "gradient of " << p.name;
  }
}

TEST(GPT2, FloatModelMatchesDoubleModel) {
  const int B = 3, T = 7;
  Transformer<double> md(tiny_config(), B, T);
  Transformer<float> mf(tiny_config(), B, T);
  randomize(md, 4);
  for (int64_t i = 0; i < md.buffer_size(); ++i) mf.params()[i] = static_cast<float>(md.params()[i]);
  auto inp = test::random_tokens(B * T, 11, 5), tgt = test::random_tokens(B * T, 11, 6);
  const double ld = md.forward_backward(inp.data(), tgt.data(), B, T);
  const double lf = mf.forward_backward(inp.data(), tgt.data(), B, T);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  std::vector<double> gd(md.grads(), md.grads() + md.buffer_size());
  std::vector<float> gf(mf.grads(), mf.grads() + mf.buffer_size());
  EXPECT_LT(test::rel_err(gf, gd), 1e-4);
}

TEST(GPT2, InitialisationFollowsGpt2) {
  ModelConfig c;
  c.n_layer = 3;
  c.n_head = 2;
  c.n_embd = 64;
  c.vocab_size = 300;
  c.max_seq = 16;
  Transformer<float> m(c, 1, 16);
  m.init_random(7);
  for (const ParamInfo& p : m.params_info()) {
    const float* w = m.params() + p.offset;
    const int64_t n = shape_numel(p.shape);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      s += w[i];
      s2 += static_cast<double>(w[i]) * w[i];
    }
    const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
    if (p.name.find("ln_") != std::string::npos) {
      EXPECT_EQ(mean, p.name.ends_with("weight") ? 1.0 : 0.0) << p.name;
    } else if (!p.name.ends_with(".weight")) {
      EXPECT_EQ(s2, 0.0) << p.name;  // biases start at zero
    } else {
      const bool residual = p.name.ends_with("c_proj.weight");
      const double expect = residual ? 0.02 / std::sqrt(2.0 * c.n_layer) : 0.02;
      EXPECT_NEAR(sd, expect, 0.1 * expect) << p.name;
      EXPECT_NEAR(mean, 0.0, 0.1 * expect) << p.name;
    }
  }
}

TEST(ModelConfig, RejectsBadShapesWithTheFix) {
  ModelConfig c = tiny_config();
  c.n_embd = 10;
  c.n_head = 4;
  try {
    c.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the head count"), std::string::npos) << e.what();
  }
  c = tiny_config();
  c.vocab_size = 70000;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(Transformer<float>(tiny_config(), 1, 8), Error);  // seq 8 > max_seq 7
}

TEST(GPT2, BatchAndTensorParallelSplitAreCheckedBeforeAnythingIsSized) {
  test::expect_error([] { Transformer<float>(tiny_config(), 0, 4); }, {"--batch must be >= 1 (got 0)"});
  ModelConfig c = tiny_config();
  c.n_head = 3;
  c.n_embd = 3 * (c.n_embd / 3);
  test::expect_error([&] { Transformer<float>(c, 1, 4, TensorParallel{2, 0, nullptr}); },
                     {"--tp 2 must divide the head count H=3", "divisors of 3"});
}

}  // namespace
}  // namespace aq
