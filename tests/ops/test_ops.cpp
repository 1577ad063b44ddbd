// test_ops.cpp — every operator against an independent naive reference (forward) and against central finite
// differences in double precision (backward), at odd sizes; float kernels against the double reference.
// Adding an operator family to ops/register_builtin.cpp without a case here leaves RegistryCoverage failing.
#include <omp.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <set>
#include <thread>

#include "ops/adamw/adamw.h"
#include "ops/attention/attention.h"
#include "ops/embedding/embedding.h"
#include "ops/gelu/gelu.h"
#include "ops/glu/glu.h"
#include "ops/layernorm/layernorm.h"
#include "ops/matmul/matmul.h"
#include "ops/residual/residual.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rope/rope.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "ops/swiglu/swiglu.h"
#include "tests/test_util.h"

namespace aq {
namespace {

using test::expect_gradient;
using test::kernel;
using test::project;
using test::random_tokens;
using test::randn;
using test::rel_err;
using V = std::vector<double>;

template <typename T>
std::vector<T> cast(const V& v) {
  return std::vector<T>(v.begin(), v.end());
}

// ---- naive references (double) ----------------------------------------------------------------------------

V ref_layernorm(const V& x, const V& w, const V& b, int N, int C) {
  V out(x.size());
  for (int i = 0; i < N; ++i) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[i * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    v /= C;
    for (int c = 0; c < C; ++c) out[i * C + c] = (x[i * C + c] - m) / std::sqrt(v + 1e-5) * w[c] + b[c];
  }
  return out;
}

V ref_matmul(const V& x, const V& w, const V* bias, int N, int IC, int OC) {
  V out(static_cast<size_t>(N) * OC);
  for (int i = 0; i < N; ++i)
    for (int o = 0; o < OC; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int k = 0; k < IC; ++k) s += x[i * IC + k] * w[k * OC + o];
      out[i * OC + o] = s;
    }
  return out;
}

V ref_attention(const V& qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  V out(static_cast<size_t>(B) * T * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        V s(T, -INFINITY);
        double mx = -INFINITY;
        for (int u = 0; u <= t; ++u) {
          double d = 0;
          for (int i = 0; i < hs; ++i)
            d += qkv[(b * T + t) * 3 * C + h * hs + i] * qkv[(b * T + u) * 3 * C + C + h * hs + i];
          s[u] = d / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (int u = 0; u <= t; ++u) z += std::exp(s[u] - mx);
        for (int u = 0; u <= t; ++u)
          for (int i = 0; i < hs; ++i)
            out[(b * T + t) * C + h * hs + i] += std::exp(s[u] - mx) / z * qkv[(b * T + u) * 3 * C + 2 * C + h * hs + i];
      }
  return out;
}

double ref_gelu(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

V ref_xent(const V& logits, const std::vector<int32_t>& tgt, int N, int Vn) {
  V loss(N);
  for (int i = 0; i < N; ++i) {
    double mx = -INFINITY, z = 0;
    for (int j = 0; j < Vn; ++j) mx = std::max(mx, logits[i * Vn + j]);
    for (int j = 0; j < Vn; ++j) z += std::exp(logits[i * Vn + j] - mx);
    loss[i] = std::log(z) + mx - logits[i * Vn + tgt[i]];
  }
  return loss;
}

double mean(const V& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

// ---- embedding --------------------------------------------------------------------------------------------

TEST(Embedding, ForwardMatchesLookupAndBackwardMatchesFiniteDifferences) {
  const int B = 2, T = 5, C = 7, Vn = 11, maxT = 6;
  auto fwd = kernel<ops::Embedding<double>::Forward>("embedding_forward", DType::F64);
  auto bwd = kernel<ops::Embedding<double>::Backward>("embedding_backward", DType::F64);
  V wte = randn<double>(Vn * C, 1), wpe = randn<double>(maxT * C, 2), proj = randn<double>(B * T * C, 3);
  std::vector<int32_t> inp = random_tokens(B * T, Vn, 4);
  inp[3] = inp[7];  // a repeated token must accumulate
  V out(B * T * C, NAN);
  fwd(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C, 0, Vn);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c)
        EXPECT_EQ(out[(b * T + t) * C + c], wte[inp[b * T + t] * C + c] + wpe[t * C + c]);
  V dwte(wte.size(), 0.0), dwpe(wpe.size(), 0.0);
  bwd(dwte.data(), dwpe.data(), proj.data(), inp.data(), B, T, C, 0, Vn);
  auto loss = [&] {
    fwd(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C, 0, Vn);
    return project(out, proj);
  };
  expect_gradient(wte, dwte, loss, "wte");
  expect_gradient(wpe, dwpe, loss, "wpe");
}

TEST(Embedding, VocabularyParallelShardsSumToTheWholeTable) {
  const int B = 3, T = 4, C = 5, Vn = 11, maxT = 4, Vl = 4;  // three shards: rows 0-3, 4-7, 8-10 (+1 padding)
  auto fwd = kernel<ops::Embedding<double>::Forward>("embedding_forward", DType::F64);
  auto bwd = kernel<ops::Embedding<double>::Backward>("embedding_backward", DType::F64);
  V wte = randn<double>(12 * C, 50), wpe = randn<double>(maxT * C, 51), dout = randn<double>(B * T * C, 52);
  auto inp = random_tokens(B * T, Vn, 53);
  V full(B * T * C), sum(B * T * C, 0.0), part(B * T * C), dwte_full(wte.size(), 0.0), dwte_parts(wte.size(), 0.0);
  fwd(full.data(), inp.data(), wte.data(), wpe.data(), B, T, C, 0, 12);
  bwd(dwte_full.data(), nullptr, dout.data(), inp.data(), B, T, C, 0, 12);
  for (int r = 0; r < 3; ++r) {
    fwd(part.data(), inp.data(), wte.data() + r * Vl * C, r == 0 ? wpe.data() : nullptr, B, T, C, r * Vl, Vl);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
    bwd(dwte_parts.data() + r * Vl * C, nullptr, dout.data(), inp.data(), B, T, C, r * Vl, Vl);
  }
  EXPECT_EQ(sum, full);
  EXPECT_EQ(dwte_parts, dwte_full);
}

// ---- layernorm --------------------------------------------------------------------------------------------

TEST(LayerNorm, ForwardMatchesNaiveInDoubleAndFloat) {
  const int N = 9, C = 13;
  V x = randn<double>(N * C, 5, 2.0), w = randn<double>(C, 6), b = randn<double>(C, 7);
  for (auto& v : x) v += 3.0;  // a large mean tests the two-pass variance
  V expect = ref_layernorm(x, w, b, N, C);
  V out(N * C, NAN), mu(N), rs(N);
  kernel<ops::LayerNorm<double>::Forward>("layernorm_forward", DType::F64)(out.data(), mu.data(), rs.data(), x.data(),
                                                                          w.data(), b.data(), N, C);
  EXPECT_LT(rel_err(out, expect), 1e-13);
  auto xf = cast<float>(x), wf = cast<float>(w), bf = cast<float>(b);
  std::vector<float> outf(N * C, NAN), muf(N), rsf(N);
  kernel<ops::LayerNorm<float>::Forward>("layernorm_forward", DType::F32)(outf.data(), muf.data(), rsf.data(),
                                                                         xf.data(), wf.data(), bf.data(), N, C);
  EXPECT_LT(rel_err(outf, expect), 1e-5);
}

TEST(LayerNorm, ResidualForwardIsAddThenNormalize) {
  const int N = 5, C = 11;
  V a = randn<double>(N * C, 8), bin = randn<double>(N * C, 9), w = randn<double>(C, 10), b = randn<double>(C, 11);
  V res(N * C, NAN), out(N * C, NAN), mu(N), rs(N), sum(N * C);
  for (int i = 0; i < N * C; ++i) sum[i] = a[i] + bin[i];
  kernel<ops::LayerNorm<double>::ResidualForward>("residual_layernorm_forward", DType::F64)(
      res.data(), out.data(), mu.data(), rs.data(), a.data(), bin.data(), w.data(), b.data(), N, C);
  EXPECT_EQ(res, sum);
  EXPECT_LT(rel_err(out, ref_layernorm(sum, w, b, N, C)), 1e-13);
}

TEST(LayerNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int N = 7, C = 9;
  auto fwd = kernel<ops::LayerNorm<double>::Forward>("layernorm_forward", DType::F64);
  auto bwd = kernel<ops::LayerNorm<double>::Backward>("layernorm_backward", DType::F64);
  V x = randn<double>(N * C, 12), w = randn<double>(C, 13), b = randn<double>(C, 14), proj = randn<double>(N * C, 15);
  V out(N * C), mu(N), rs(N);
  fwd(out.data(), mu.data(), rs.data(), x.data(), w.data(), b.data(), N, C);
  V dx0 = randn<double>(N * C, 16), dx = dx0, dw0 = randn<double>(C, 17), dw = dw0, db0 = randn<double>(C, 18), db = db0;
  bwd(dx.data(), dw.data(), db.data(), proj.data(), x.data(), w.data(), mu.data(), rs.data(), N, C);
  for (int i = 0; i < N * C; ++i) dx[i] -= dx0[i];  // backward accumulates: subtract what was there
  for (int c = 0; c < C; ++c) {
    dw[c] -= dw0[c];
    db[c] -= db0[c];
  }
  auto loss = [&] { return project(ref_layernorm(x, w, b, N, C), proj); };
  expect_gradient(x, dx, loss, "layernorm input");
  expect_gradient(w, dw, loss, "layernorm weight");
  expect_gradient(b, db, loss, "layernorm bias");
}

// ---- matmul -----------------------------------------------------------------------------------------------

TEST(Matmul, ForwardMatchesNaiveWithAndWithoutBias) {
  const int N = 7, IC = 13, OC = 5;
  V x = randn<double>(N * IC, 19), w = randn<double>(IC * OC, 20), bias = randn<double>(OC, 21);
  auto fwd = kernel<ops::Matmul<double>::Forward>("matmul_forward", DType::F64);
  V out(N * OC, NAN);
  fwd(out.data(), x.data(), w.data(), bias.data(), N, IC, OC);
  EXPECT_LT(rel_err(out, ref_matmul(x, w, &bias, N, IC, OC)), 1e-14);
  fwd(out.data(), x.data(), w.data(), nullptr, N, IC, OC);
  EXPECT_LT(rel_err(out, ref_matmul(x, w, nullptr, N, IC, OC)), 1e-14);
  auto xf = cast<float>(x), wf = cast<float>(w), bf = cast<float>(bias);
  std::vector<float> outf(N * OC, NAN);
  kernel<ops::Matmul<float>::Forward>("matmul_forward", DType::F32)(outf.data(), xf.data(), wf.data(), bf.data(), N,
                                                                   IC, OC);
  EXPECT_LT(rel_err(outf, ref_matmul(x, w, &bias, N, IC, OC)), 1e-6);
}

TEST(Matmul, BackwardMatchesFiniteDifferences) {
  const int N = 6, IC = 7, OC = 9;
  V x = randn<double>(N * IC, 22), w = randn<double>(IC * OC, 23), bias = randn<double>(OC, 24);
  V proj = randn<double>(N * OC, 25);
  V dx(N * IC, NAN), dw(IC * OC, 0.0), db(OC, 0.0);
  kernel<ops::Matmul<double>::Backward>("matmul_backward", DType::F64)(dx.data(), dw.data(), db.data(), proj.data(),
                                                                      x.data(), w.data(), N, IC, OC);
  auto loss = [&] { return project(ref_matmul(x, w, &bias, N, IC, OC), proj); };
  expect_gradient(x, dx, loss, "matmul input");
  expect_gradient(w, dw, loss, "matmul weight");
  expect_gradient(bias, db, loss, "matmul bias");
}

TEST(Matmul, BackwardInputMayAliasForwardInput) {
  // The model reuses one buffer for a layer's input and its input gradient (IC == OC keeps shapes equal).
  const int N = 5, IC = 6, OC = 6;
  V x = randn<double>(N * IC, 26), w = randn<double>(IC * OC, 27), proj = randn<double>(N * OC, 28);
  V dx(N * IC), dw(IC * OC, 0.0), alias = x, dw2(IC * OC, 0.0);
  auto bwd = kernel<ops::Matmul<double>::Backward>("matmul_backward", DType::F64);
  bwd(dx.data(), dw.data(), nullptr, proj.data(), x.data(), w.data(), N, IC, OC);
  bwd(alias.data(), dw2.data(), nullptr, proj.data(), alias.data(), w.data(), N, IC, OC);
  EXPECT_EQ(alias, dx);
  EXPECT_EQ(dw2, dw);
}

TEST(MatmulGelu, ForwardIsMatmulThenGelu) {
  const int N = 7, IC = 11, OC = 13;
  V x = randn<double>(N * IC, 60), w = randn<double>(IC * OC, 61, 0.5), bias = randn<double>(OC, 62);
  V out(N * OC, NAN), pre(N * OC, NAN);
  kernel<ops::Matmul<double>::GeluForward>("matmul_gelu_forward", DType::F64)(out.data(), pre.data(), x.data(),
                                                                              w.data(), bias.data(), N, IC, OC);
  const V ref_pre = ref_matmul(x, w, &bias, N, IC, OC);
  V ref_out(ref_pre.size());
  for (size_t i = 0; i < ref_pre.size(); ++i) ref_out[i] = ref_gelu(ref_pre[i]);
  EXPECT_LT(rel_err(pre, ref_pre), 1e-14);
  EXPECT_LT(rel_err(out, ref_out), 1e-14);
}

TEST(MatmulGelu, DgeluBackwardMatchesFiniteDifferencesAndMayAliasItsInput) {
  // The layer after a GELU: y = gelu(pre) @ w + bias. The kernel returns d(pre), dw and dbias.
  const int N = 5, IC = 9, OC = 7;
  V pre = randn<double>(N * IC, 63), w = randn<double>(IC * OC, 64), bias = randn<double>(OC, 65);
  V proj = randn<double>(N * OC, 66);
  auto gelu_of = [](const V& p) {
    V g(p.size());
    for (size_t i = 0; i < p.size(); ++i) g[i] = ref_gelu(p[i]);
    return g;
  };
  V inp = gelu_of(pre), dpre(N * IC, NAN), dw(IC * OC, 0.0), db(OC, 0.0);
  auto bwd = kernel<ops::Matmul<double>::DgeluBackward>("matmul_backward_dgelu", DType::F64);
  bwd(dpre.data(), dw.data(), db.data(), proj.data(), inp.data(), w.data(), pre.data(), N, IC, OC);
  auto loss = [&] { return project(ref_matmul(gelu_of(pre), w, &bias, N, IC, OC), proj); };
  expect_gradient(pre, dpre, loss, "dgelu pre-activation");
  expect_gradient(w, dw, loss, "dgelu weight");
  expect_gradient(bias, db, loss, "dgelu bias");
  V alias = inp, dw2(IC * OC, 0.0);
  bwd(alias.data(), dw2.data(), nullptr, proj.data(), alias.data(), w.data(), pre.data(), N, IC, OC);
  EXPECT_EQ(alias, dpre);
  EXPECT_EQ(dw2, dw);
}

// ---- attention --------------------------------------------------------------------------------------------

TEST(Attention, ForwardMatchesNaiveCausalSoftmax) {
  const int B = 2, T = 7, C = 9, NH = 3;
  V qkv = randn<double>(B * T * 3 * C, 29);
  V out(B * T * C, NAN), lse(B * NH * T, NAN);
  kernel<ops::Attention<double>::Forward>("attention_forward", DType::F64)(out.data(), lse.data(), qkv.data(), B, T,
                                                                          C, NH);
  V expect = ref_attention(qkv, B, T, C, NH);
  EXPECT_LT(rel_err(out, expect), 1e-13);
  auto qf = cast<float>(qkv);
  std::vector<float> outf(B * T * C, NAN), lsef(B * NH * T);
  kernel<ops::Attention<float>::Forward>("attention_forward", DType::F32)(outf.data(), lsef.data(), qf.data(), B, T,
                                                                         C, NH);
  EXPECT_LT(rel_err(outf, expect), 1e-5);
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  const int B = 2, T = 5, C = 6, NH = 2;
  auto fwd = kernel<ops::Attention<double>::Forward>("attention_forward", DType::F64);
  V qkv = randn<double>(B * T * 3 * C, 30), proj = randn<double>(B * T * C, 31);
  V out(B * T * C), lse(B * NH * T), dqkv(qkv.size(), NAN);
  fwd(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  kernel<ops::Attention<double>::Backward>("attention_backward", DType::F64)(dqkv.data(), proj.data(), qkv.data(),
                                                                            out.data(), lse.data(), B, T, C, NH);
  auto loss = [&] { return project(ref_attention(qkv, B, T, C, NH), proj); };
  expect_gradient(qkv, dqkv, loss, "attention qkv", 1e-6, 1000);
}

// The CPU kernels work in blocks of 64 queries (GEMMs against the keys each block sees): a sequence that crosses
// two block boundaries at an odd length, forward against the naive softmax, backward against finite differences
// (a sample of elements), and the float kernels against the double ones. Outputs are NaN-poisoned first.
TEST(Attention, QueryBlocksMatchNaiveAtLongOddSequences) {
  const int B = 2, T = 150, C = 12, NH = 2;
  auto fwd = kernel<ops::Attention<double>::Forward>("attention_forward", DType::F64);
  auto bwd = kernel<ops::Attention<double>::Backward>("attention_backward", DType::F64);
  V qkv = randn<double>(B * T * 3 * C, 34), proj = randn<double>(B * T * C, 35);
  V out(B * T * C, NAN), lse(B * NH * T, NAN), dqkv(qkv.size(), NAN);
  fwd(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  EXPECT_LT(rel_err(out, ref_attention(qkv, B, T, C, NH)), 1e-12);
  bwd(dqkv.data(), proj.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  auto loss = [&] { return project(ref_attention(qkv, B, T, C, NH), proj); };
  expect_gradient(qkv, dqkv, loss, "attention qkv (T=150)", 1e-6, 200);

  auto qf = cast<float>(qkv), pf = cast<float>(proj);
  std::vector<float> outf(out.size(), NAN), lsef(lse.size(), NAN), dqkvf(qkv.size(), NAN);
  kernel<ops::Attention<float>::Forward>("attention_forward", DType::F32)(outf.data(), lsef.data(), qf.data(), B, T, C,
                                                                          NH);
  EXPECT_LT(rel_err(outf, out), 1e-5);
  kernel<ops::Attention<float>::Backward>("attention_backward", DType::F32)(dqkvf.data(), pf.data(), qf.data(),
                                                                            outf.data(), lsef.data(), B, T, C, NH);
  EXPECT_LT(rel_err(dqkvf, dqkv), 1e-4);
}

// ---- gelu -------------------------------------------------------------------------------------------------

// Closed form: a_i = i/8 and b_i = 3 - i/4 are exact in float, and so is their sum 3 - i/8 (n odd, small); out
// poisoned with NaN first, so an unwritten element shows. In place (out aliasing a) gives the same.
TEST(Residual, ForwardIsTheElementwiseSumAndMayRunInPlace) {
  for (int64_t n : {1, 7, 1001}) {
    V a(n), b(n), expect(n), out(n, NAN);
    for (int64_t i = 0; i < n; ++i) {
      a[i] = static_cast<double>(i) / 8, b[i] = 3 - static_cast<double>(i) / 4;
      expect[i] = 3 - static_cast<double>(i) / 8;
    }
    kernel<ops::Residual<double>::Forward>("residual_forward", DType::F64)(out.data(), a.data(), b.data(), n);
    EXPECT_EQ(out, expect) << "n=" << n;
    auto af = cast<float>(a), bf = cast<float>(b);
    std::vector<float> outf(n, NAN);
    kernel<ops::Residual<float>::Forward>("residual_forward", DType::F32)(outf.data(), af.data(), bf.data(), n);
    EXPECT_EQ(outf, cast<float>(expect)) << "n=" << n;
    kernel<ops::Residual<float>::Forward>("residual_forward", DType::F32)(af.data(), af.data(), bf.data(), n);
    EXPECT_EQ(af, outf) << "in place, n=" << n;
  }
}

TEST(Gelu, ForwardMatchesClosedFormAndBackwardMatchesFiniteDifferences) {
  const int n = 1001;
  V x = randn<double>(n, 32, 3.0), proj = randn<double>(n, 33), out(n, NAN), dx(n, NAN);
  kernel<ops::Gelu<double>::Forward>("gelu_forward", DType::F64)(out.data(), x.data(), n);
  V expect(n);
  for (int i = 0; i < n; ++i) expect[i] = ref_gelu(x[i]);
  EXPECT_LT(rel_err(out, expect), 1e-13);
  auto xf = cast<float>(x);
  std::vector<float> outf(n);
  kernel<ops::Gelu<float>::Forward>("gelu_forward", DType::F32)(outf.data(), xf.data(), n);
  EXPECT_LT(rel_err(outf, expect), 1e-6);
  kernel<ops::Gelu<double>::Backward>("gelu_backward", DType::F64)(dx.data(), x.data(), proj.data(), n);
  auto loss = [&] {
    double s = 0;
    for (int i = 0; i < n; ++i) s += ref_gelu(x[i]) * proj[i];
    return s;
  };
  expect_gradient(x, dx, loss, "gelu input");
}

// ---- softmax + cross-entropy, classifier ------------------------------------------------------------------

TEST(SoftmaxXent, LossMatchesLogSumExpAndGradientMatchesFiniteDifferences) {
  const int N = 5, Vn = 17;
  V logits = randn<double>(N * Vn, 34, 4.0);
  auto tgt = random_tokens(N, Vn, 35);
  auto k = kernel<ops::SoftmaxXent<double>::Forward>("softmax_xent", DType::F64);
  V buf = logits, losses(N, NAN);
  k(losses.data(), buf.data(), tgt.data(), N, Vn, 1.0 / N, 1);
  EXPECT_LT(rel_err(losses, ref_xent(logits, tgt, N, Vn)), 1e-14);
  auto loss = [&] { return mean(ref_xent(logits, tgt, N, Vn)); };
  expect_gradient(logits, buf, loss, "logits");
}

TEST(Classifier, ChunkedTiedHeadMatchesNaiveForAnyChunk) {
  const int N = 7, C = 5, Vn = 13;
  V x = randn<double>(N * C, 36), wte = randn<double>(Vn * C, 37);
  auto tgt = random_tokens(N, Vn, 38);
  auto k = kernel<ops::Classifier<double>::Forward>("classifier", DType::F64);
  auto naive_loss = [&] {
    V logits(N * Vn);
    for (int i = 0; i < N; ++i)
      for (int v = 0; v < Vn; ++v) {
        double s = 0;
        for (int c = 0; c < C; ++c) s += x[i * C + c] * wte[v * C + c];
        logits[i * Vn + v] = s;
      }
    return mean(ref_xent(logits, tgt, N, Vn));
  };
  for (int chunk : {1, 3, N}) {
    V losses(N, NAN), dx(N * C, NAN), dwte(Vn * C, 0.0), scratch(chunk * Vn);
    k(losses.data(), dx.data(), dwte.data(), scratch.data(), x.data(), wte.data(), tgt.data(), N, C, Vn, 0, Vn, chunk,
      1.0 / N, nullptr);
    EXPECT_NEAR(mean(losses), naive_loss(), 1e-13) << "chunk " << chunk;
    expect_gradient(x, dx, naive_loss, "classifier input");
    expect_gradient(wte, dwte, naive_loss, "classifier wte");
    V eval_losses(N, NAN);  // evaluation path: no gradients
    k(eval_losses.data(), nullptr, nullptr, scratch.data(), x.data(), wte.data(), tgt.data(), N, C, Vn, 0, Vn, chunk,
      1.0 / N, nullptr);
    EXPECT_EQ(eval_losses, losses);
  }
}

// Two "ranks" as threads, each owning half of a padded vocabulary; the hook sums (or maxes) their row
// statistics through shared memory, as the TP all-reduce does. Losses and dx (summed) must match one rank.
TEST(Classifier, VocabularyParallelMatchesSingleRank) {
  const int N = 5, C = 4, Vn = 9, Vl = 5, chunk = 2;  // padded to 10: rank 1 owns rows 5-8 and one padding row
  V x = randn<double>(N * C, 60), wte = randn<double>(Vn * C, 61);
  auto tgt = random_tokens(N, Vn, 62);
  auto k = kernel<ops::Classifier<double>::Forward>("classifier", DType::F64);
  V losses(N), dx(N * C), dwte(Vn * C, 0.0), scratch(chunk * Vn);
  k(losses.data(), dx.data(), dwte.data(), scratch.data(), x.data(), wte.data(), tgt.data(), N, C, Vn, 0, Vn, chunk,
    1.0 / N, nullptr);

  struct Shared {
    std::barrier<> sync{2};
    std::vector<double> slot[2];
  } shared;
  auto hook_fn = [](void* ctx, double* data, int64_t n, int is_max) {
    auto* self = static_cast<std::pair<Shared*, int>*>(ctx);
    Shared& sh = *self->first;
    sh.slot[self->second].assign(data, data + n);
    sh.sync.arrive_and_wait();
    for (int64_t i = 0; i < n; ++i)
      data[i] = is_max ? std::max(sh.slot[0][i], sh.slot[1][i]) : sh.slot[0][i] + sh.slot[1][i];
    sh.sync.arrive_and_wait();
  };
  V wte_pad(2 * Vl * C, 0.0);
  std::copy(wte.begin(), wte.end(), wte_pad.begin());
  V lr[2] = {V(N), V(N)}, dxr[2] = {V(N * C), V(N * C)}, dwr[2] = {V(Vl * C, 0.0), V(Vl * C, 0.0)};
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      std::pair<Shared*, int> ctx{&shared, r};
      const ops::ReduceHook<double> hook{&ctx, hook_fn};
      V sc(chunk * Vl);
      k(lr[r].data(), dxr[r].data(), dwr[r].data(), sc.data(), x.data(), wte_pad.data() + r * Vl * C, tgt.data(), N,
        C, Vl, r * Vl, Vn, chunk, 1.0 / N, &hook);
    });
  for (auto& t : ranks) t.join();
  EXPECT_LT(rel_err(lr[0], losses), 1e-14);
  EXPECT_EQ(lr[0], lr[1]);
  V dx_sum(N * C);
  for (int i = 0; i < N * C; ++i) dx_sum[i] = dxr[0][i] + dxr[1][i];
  EXPECT_LT(rel_err(dx_sum, dx), 1e-13);
  V dw_joined(dwr[0]);
  dw_joined.insert(dw_joined.end(), dwr[1].begin(), dwr[1].begin() + (Vn - Vl) * C);
  EXPECT_LT(rel_err(dw_joined, dwte), 1e-13);
  for (int i = (Vn - Vl) * C; i < Vl * C; ++i) EXPECT_EQ(dwr[1][i], 0.0) << "padding row got a gradient";
}

// ---- AdamW, sum of squares --------------------------------------------------------------------------------

TEST(AdamW, MatchesTorchFormulaOverSeveralSteps) {
  const int n = 37;
  V p = randn<double>(n, 39), m(n, 0.0), v(n, 0.0);
  V rp = p, rm = m, rv = v;
  ops::AdamWParams hp;
  hp.lr = 1e-2;
  hp.beta1 = 0.8;
  hp.beta2 = 0.9;
  hp.eps = 1e-6;
  hp.weight_decay = 0.1;
  hp.grad_scale = 0.5;
  auto k = kernel<ops::AdamW<double>::Update>("adamw_update", DType::F64);
  for (int step = 1; step <= 3; ++step) {
    V g = randn<double>(n, 40 + step);
    hp.step = step;
    k(p.data(), g.data(), m.data(), v.data(), n, hp);
    for (int i = 0; i < n; ++i) {  // torch.optim.AdamW, written out
      const double gi = g[i] * hp.grad_scale;
      rp[i] *= 1 - hp.lr * hp.weight_decay;
      rm[i] = hp.beta1 * rm[i] + (1 - hp.beta1) * gi;
      rv[i] = hp.beta2 * rv[i] + (1 - hp.beta2) * gi * gi;
      const double bc1 = 1 - std::pow(hp.beta1, step), bc2 = 1 - std::pow(hp.beta2, step);
      rp[i] -= hp.lr / bc1 * rm[i] / (std::sqrt(rv[i]) / std::sqrt(bc2) + hp.eps);
    }
  }
  EXPECT_LT(rel_err(p, rp), 1e-14);
  EXPECT_LT(rel_err(m, rm), 1e-14);
  EXPECT_LT(rel_err(v, rv), 1e-14);
}

TEST(SumSquares, MatchesNaiveAndIsIndependentOfThreadCount) {
  const int64_t n = 200003;  // several fixed-size chunks plus a tail
  auto x = randn<float>(static_cast<size_t>(n), 44);
  auto k = kernel<ops::AdamW<float>::SumSquares>("sum_squares", DType::F32);
  long double naive = 0;
  for (float v : x) naive += static_cast<long double>(v) * v;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = k(x.data(), n);
  omp_set_num_threads(2);
  const double two = k(x.data(), n);
  omp_set_num_threads(saved);
  EXPECT_NEAR(one, static_cast<double>(naive), 1e-12 * static_cast<double>(naive));
  EXPECT_EQ(one, two);
}

TEST(MultiAdamW, EqualsPerTensorUpdatesBitForBitAndSumsSquaresByClass) {
  // Three tensors laid out as in a model: one spans several chunks, and decay and norm class differ.
  const std::vector<int64_t> sizes = {1000, 3 * ops::kTensorChunk + 17, 333};
  const std::vector<bool> decay = {false, true, true};
  const std::vector<int> cls = {1, 0, 1};
  std::vector<ops::TensorChunk> chunks;
  int64_t n = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    ops::append_chunks(chunks, n, sizes[t], decay[t], cls[t]);
    n += sizes[t];
  }
  for (const auto& c : chunks) EXPECT_TRUE(c.n >= 1 && c.n <= ops::kTensorChunk);
  auto p = randn<float>(static_cast<size_t>(n), 70), g = randn<float>(static_cast<size_t>(n), 71);
  std::vector<float> m(p.size(), 0.0f), v(p.size(), 0.0f), rp = p, rm = m, rv = v;
  ops::AdamWParams hp;
  hp.lr = 1e-2;
  hp.weight_decay = 0.1;
  hp.grad_scale = 0.7;
  auto multi = kernel<ops::MultiAdamW<float>::Update>("multi_adamw", DType::F32);
  auto single = kernel<ops::AdamW<float>::Update>("adamw_update", DType::F32);
  for (int step = 1; step <= 2; ++step) {
    hp.step = step;
    multi(p.data(), nullptr, g.data(), m.data(), v.data(), chunks.data(), static_cast<int64_t>(chunks.size()), hp);
    int64_t o = 0;
    for (size_t t = 0; t < sizes.size(); ++t) {
      ops::AdamWParams h = hp;
      h.weight_decay = decay[t] ? hp.weight_decay : 0.0;
      single(rp.data() + o, g.data() + o, rm.data() + o, rv.data() + o, sizes[t], h);
      o += sizes[t];
    }
  }
  EXPECT_EQ(p, rp);
  EXPECT_EQ(m, rm);
  EXPECT_EQ(v, rv);

  double sums[2] = {-1, -1};
  kernel<ops::MultiAdamW<float>::SumSquares>("multi_sum_squares", DType::F32)(sums, g.data(), chunks.data(),
                                                                              static_cast<int64_t>(chunks.size()));
  long double naive[2] = {0, 0};
  int64_t o = 0;
  for (size_t t = 0; t < sizes.size(); ++t)
    for (int64_t i = 0; i < sizes[t]; ++i, ++o) naive[cls[t]] += static_cast<long double>(g[o]) * g[o];
  for (int c = 0; c < 2; ++c)
    EXPECT_NEAR(sums[c], static_cast<double>(naive[c]), 1e-12 * static_cast<double>(naive[c])) << "class " << c;
}

// ---- Llama family: RMSNorm, SwiGLU, rotary embeddings, grouped-query attention ----------------------------

V ref_rmsnorm(const V& x, const V& w, int N, int C, double eps, V* rstd = nullptr) {
  V out(x.size());
  for (int i = 0; i < N; ++i) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += x[i * C + c] * x[i * C + c];
    const double r = 1 / std::sqrt(ss / C + eps);
    if (rstd) (*rstd)[i] = r;
    for (int c = 0; c < C; ++c) out[i * C + c] = x[i * C + c] * r * w[c];
  }
  return out;
}

double ref_silu(double g) { return g / (1 + std::exp(-g)); }

// out (N,F) = silu(gate)·up of a packed (N,2F) input
V ref_swiglu(const V& inp, int N, int F) {
  V out(static_cast<size_t>(N) * F);
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < F; ++c) out[i * F + c] = ref_silu(inp[i * 2 * F + c]) * inp[i * 2 * F + F + c];
  return out;
}

// Hugging Face's apply_rotary_pos_emb on the first n_heads heads of each (B·T) row, in double: angle pos·θ_i,
// θ_i = theta^(−2i/hs), x' = x·cos + rotate_half(x)·sin.
V ref_rope(const V& x, int B, int T, int stride, int n_heads, int hs, int pos0, double theta) {
  V out = x;
  const int half = hs / 2;
  for (int r = 0; r < B * T; ++r)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < half; ++i) {
        const double a = (pos0 + r % T) * std::pow(theta, -2.0 * i / hs);
        const size_t p = static_cast<size_t>(r) * stride + h * hs + i;
        out[p] = x[p] * std::cos(a) - x[p + half] * std::sin(a);
        out[p + half] = x[p + half] * std::cos(a) + x[p] * std::sin(a);
      }
  return out;
}

// Causal grouped-query attention in double: query head h reads kv head h / (NH/NKV) of qkv (B,T,(NH+2·NKV)·hs).
V ref_attention_gqa(const V& qkv, int B, int T, int NH, int NKV, int hs) {
  const int ld = (NH + 2 * NKV) * hs, C = NH * hs;
  V out(static_cast<size_t>(B) * T * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const int kc = NH * hs + (h / (NH / NKV)) * hs, vc = kc + NKV * hs;
      for (int t = 0; t < T; ++t) {
        V s(T);
        double mx = -INFINITY, z = 0;
        for (int u = 0; u <= t; ++u) {
          double d = 0;
          for (int i = 0; i < hs; ++i) d += qkv[(b * T + t) * ld + h * hs + i] * qkv[(b * T + u) * ld + kc + i];
          s[u] = d / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, s[u]);
        }
        for (int u = 0; u <= t; ++u) z += std::exp(s[u] - mx);
        for (int u = 0; u <= t; ++u)
          for (int i = 0; i < hs; ++i)
            out[(b * T + t) * C + h * hs + i] += std::exp(s[u] - mx) / z * qkv[(b * T + u) * ld + vc + i];
      }
    }
  return out;
}

TEST(RmsNorm, ForwardMatchesNaiveInDoubleAndFloat) {
  const int B = 3, T = 7, N = B * T, C = 37;
  const double eps = 1e-6;
  V x = randn<double>(N * C, 80, 2.0), w = randn<double>(C, 81);
  for (int c = 0; c < C; ++c) x[4 * C + c] *= 1e-4;  // a row whose mean square is near eps
  V rstd_ref(N), out(N * C, NAN), rstd(N, NAN);
  const V expect = ref_rmsnorm(x, w, N, C, eps, &rstd_ref);
  kernel<ops::RmsNorm<double>::Forward>("rmsnorm_forward", DType::F64)(out.data(), rstd.data(), x.data(), w.data(), N,
                                                                       C, eps);
  EXPECT_LT(rel_err(out, expect), 1e-14);
  EXPECT_LT(rel_err(rstd, rstd_ref), 1e-14);
  auto xf = cast<float>(x), wf = cast<float>(w);
  std::vector<float> outf(N * C, NAN), rstdf(N, NAN);
  kernel<ops::RmsNorm<float>::Forward>("rmsnorm_forward", DType::F32)(outf.data(), rstdf.data(), xf.data(), wf.data(),
                                                                      N, C, eps);
  EXPECT_LT(rel_err(outf, expect), 1e-6);
  EXPECT_LT(rel_err(rstdf, rstd_ref), 1e-6);
  test::expect_error(
      [&] {
        kernel<ops::RmsNorm<double>::Forward>("rmsnorm_forward", DType::F64)(out.data(), rstd.data(), x.data(),
                                                                             w.data(), N, C, -1.0);
      },
      {"rmsnorm", "eps=-1"});
}

TEST(RmsNorm, ResidualForwardIsAddThenNormalize) {
  const int N = 15, C = 19;
  const double eps = 1e-5;
  V a = randn<double>(N * C, 110), bin = randn<double>(N * C, 111), w = randn<double>(C, 112), sum(N * C);
  for (int i = 0; i < N * C; ++i) sum[i] = a[i] + bin[i];
  V res(N * C, NAN), out(N * C, NAN), rs(N, NAN), rs_ref(N);
  kernel<ops::RmsNorm<double>::ResidualForward>("residual_rmsnorm_forward", DType::F64)(
      res.data(), out.data(), rs.data(), a.data(), bin.data(), w.data(), N, C, eps);
  EXPECT_EQ(res, sum);
  EXPECT_LT(rel_err(out, ref_rmsnorm(sum, w, N, C, eps, &rs_ref)), 1e-14);
  EXPECT_LT(rel_err(rs, rs_ref), 1e-14);
}

TEST(RmsNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int B = 3, T = 5, N = B * T, C = 11;
  const double eps = 1e-5;
  auto fwd = kernel<ops::RmsNorm<double>::Forward>("rmsnorm_forward", DType::F64);
  auto bwd = kernel<ops::RmsNorm<double>::Backward>("rmsnorm_backward", DType::F64);
  V x = randn<double>(N * C, 82), w = randn<double>(C, 83), proj = randn<double>(N * C, 84);
  V out(N * C), rs(N);
  fwd(out.data(), rs.data(), x.data(), w.data(), N, C, eps);
  V dx0 = randn<double>(N * C, 85), dx = dx0, dw0 = randn<double>(C, 86), dw = dw0;
  bwd(dx.data(), dw.data(), proj.data(), x.data(), w.data(), rs.data(), N, C);
  for (int i = 0; i < N * C; ++i) dx[i] -= dx0[i];  // backward accumulates: subtract what was there
  for (int c = 0; c < C; ++c) dw[c] -= dw0[c];
  auto loss = [&] { return project(ref_rmsnorm(x, w, N, C, eps), proj); };
  expect_gradient(x, dx, loss, "rmsnorm input");
  expect_gradient(w, dw, loss, "rmsnorm weight");
  // float kernels against the double ones on the same inputs (zero-initialised accumulators)
  auto xf = cast<float>(x), wf = cast<float>(w), pf = cast<float>(proj);
  std::vector<float> of(N * C), rf(N), dxf(N * C, 0.0f), dwf(C, 0.0f);
  V dxd(N * C, 0.0), dwd(C, 0.0);
  bwd(dxd.data(), dwd.data(), proj.data(), x.data(), w.data(), rs.data(), N, C);
  kernel<ops::RmsNorm<float>::Forward>("rmsnorm_forward", DType::F32)(of.data(), rf.data(), xf.data(), wf.data(), N, C,
                                                                      eps);
  kernel<ops::RmsNorm<float>::Backward>("rmsnorm_backward", DType::F32)(dxf.data(), dwf.data(), pf.data(), xf.data(),
                                                                        wf.data(), rf.data(), N, C);
  EXPECT_LT(rel_err(dxf, dxd), 1e-5);
  EXPECT_LT(rel_err(dwf, dwd), 1e-5);
}

TEST(SwiGlu, ForwardMatchesNaiveInDoubleAndFloat) {
  const int B = 3, T = 7, N = B * T, F = 13;
  V inp = randn<double>(N * 2 * F, 87, 3.0);
  inp[0] = -90.0;  // exp(90) overflows float: sigmoid must still come out 0, not NaN
  inp[1] = 90.0;
  const V expect = ref_swiglu(inp, N, F);
  V out(N * F, NAN);
  kernel<ops::SwiGlu<double>::Forward>("swiglu_forward", DType::F64)(out.data(), inp.data(), N, F);
  EXPECT_LT(rel_err(out, expect), 1e-14);
  auto inf = cast<float>(inp);
  std::vector<float> outf(N * F, NAN);
  kernel<ops::SwiGlu<float>::Forward>("swiglu_forward", DType::F32)(outf.data(), inf.data(), N, F);
  EXPECT_LT(rel_err(outf, expect), 1e-6);
}

TEST(SwiGlu, BackwardMatchesFiniteDifferencesAndMayRunInPlace) {
  const int B = 3, T = 5, N = B * T, F = 7;
  V inp = randn<double>(N * 2 * F, 88, 2.0), proj = randn<double>(N * F, 89), dinp(N * 2 * F, NAN);
  auto bwd = kernel<ops::SwiGlu<double>::Backward>("swiglu_backward", DType::F64);
  bwd(dinp.data(), proj.data(), inp.data(), N, F);
  auto loss = [&] { return project(ref_swiglu(inp, N, F), proj); };
  expect_gradient(inp, dinp, loss, "swiglu [gate | up]");
  V alias = inp;
  bwd(alias.data(), proj.data(), alias.data(), N, F);
  EXPECT_EQ(alias, dinp);
  auto inf = cast<float>(inp), pf = cast<float>(proj);
  std::vector<float> dinpf(N * 2 * F, NAN);
  kernel<ops::SwiGlu<float>::Backward>("swiglu_backward", DType::F32)(dinpf.data(), pf.data(), inf.data(), N, F);
  EXPECT_LT(rel_err(dinpf, dinp), 1e-6);
}

// The gated linear unit around any activation on packed [gate | up] rows (N 15, F 7): split and merge move the gate
// half exactly; forward is act ⊙ up against a naive loop; backward against finite differences of Σ proj·out in both
// act and inp (the gate half's gradient is 0: it reaches out only through act), in place over inp, and in float.
TEST(Glu, SplitMergeForwardAndBackwardMatchNaiveAndFiniteDifferences) {
  const int B = 3, T = 5, N = B * T, F = 7;
  V inp = randn<double>(N * 2 * F, 90, 2.0), act = randn<double>(N * F, 91), proj = randn<double>(N * F, 92);
  V gate(N * F, NAN), out(N * F, NAN), expect(N * F);
  kernel<ops::Glu<double>::Split>("glu_split", DType::F64)(gate.data(), inp.data(), N, F);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < F; ++j) {
      EXPECT_EQ(gate[i * F + j], inp[i * 2 * F + j]);
      expect[i * F + j] = act[i * F + j] * inp[i * 2 * F + F + j];
    }
  const auto ref = [&] {
    V o(N * F);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < F; ++j) o[i * F + j] = act[i * F + j] * inp[i * 2 * F + F + j];
    return o;
  };
  auto fwd = kernel<ops::Glu<double>::Forward>("glu_forward", DType::F64);
  fwd(out.data(), act.data(), inp.data(), N, F);
  EXPECT_EQ(out, expect);
  V dinp(N * 2 * F, NAN), dact(N * F, NAN);
  auto bwd = kernel<ops::Glu<double>::Backward>("glu_backward", DType::F64);
  bwd(dinp.data(), dact.data(), proj.data(), act.data(), inp.data(), N, F);
  const auto loss = [&] { return project(ref(), proj); };
  expect_gradient(inp, dinp, loss, "glu d(inp)");
  expect_gradient(act, dact, loss, "glu d(act)");
  V alias = inp, dact2(N * F, NAN);
  bwd(alias.data(), dact2.data(), proj.data(), act.data(), alias.data(), N, F);
  EXPECT_EQ(alias, dinp);
  EXPECT_EQ(dact2, dact);
  V dgate = randn<double>(N * F, 93);
  kernel<ops::Glu<double>::Merge>("glu_merge", DType::F64)(alias.data(), dgate.data(), N, F);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < F; ++j) {
      EXPECT_EQ(alias[i * 2 * F + j], dgate[i * F + j]);
      EXPECT_EQ(alias[i * 2 * F + F + j], dinp[i * 2 * F + F + j]);  // the up half untouched
    }
  auto inf = cast<float>(inp), af = cast<float>(act), pf = cast<float>(proj);
  std::vector<float> outf(N * F, NAN), dinpf(N * 2 * F, NAN), dactf(N * F, NAN);
  kernel<ops::Glu<float>::Forward>("glu_forward", DType::F32)(outf.data(), af.data(), inf.data(), N, F);
  kernel<ops::Glu<float>::Backward>("glu_backward", DType::F32)(dinpf.data(), dactf.data(), pf.data(), af.data(),
                                                                inf.data(), N, F);
  EXPECT_LT(rel_err(outf, expect), 1e-6);
  EXPECT_LT(rel_err(dinpf, dinp), 1e-6);
  EXPECT_LT(rel_err(dactf, dact), 1e-6);
}

// On a packed GQA input (NH=3, NKV=1, hs=10): the q and k heads rotate, v is untouched; every rotated pair keeps
// its norm; position 0 is the identity; the result matches HF's formula in double; an offset continues the
// sequence (rows of pos0=5 equal rows 5… of a longer sequence from 0, bit for bit).
TEST(Rope, ForwardMatchesClosedFormOnQAndKHeads) {
  const int B = 3, T = 7, NH = 3, NKV = 1, hs = 10, half = hs / 2, stride = (NH + 2 * NKV) * hs;
  const int nrot = NH + NKV;
  auto fwd = kernel<ops::Rope<double>::Forward>("rope_forward", DType::F64);
  for (double theta : {10000.0, 500000.0}) {
    const V x = randn<double>(B * T * stride, 90);
    V y = x;
    fwd(y.data(), B, T, stride, nrot, hs, 0, theta);
    EXPECT_LT(rel_err(y, ref_rope(x, B, T, stride, nrot, hs, 0, theta)), 1e-14) << "theta " << theta;
    for (int r = 0; r < B * T; ++r) {
      for (int c = nrot * hs; c < stride; ++c) ASSERT_EQ(y[r * stride + c], x[r * stride + c]) << "v column changed";
      for (int h = 0; h < nrot; ++h)
        for (int i = 0; i < half; ++i) {
          const size_t p = static_cast<size_t>(r) * stride + h * hs + i;
          const double n0 = std::hypot(x[p], x[p + half]), n1 = std::hypot(y[p], y[p + half]);
          EXPECT_NEAR(n1, n0, 1e-14 * n0) << "pair norm, row " << r;
          if (r % T == 0) {
            EXPECT_EQ(y[p], x[p]) << "position 0 must be the identity";
            EXPECT_EQ(y[p + half], x[p + half]) << "position 0 must be the identity";
          }
        }
    }
    // An offset continues the sequence: rows 5 … 5+T−1 of a sequence of T+5 from position 0.
    const int off = 5, TL = T + off;
    V longer = randn<double>(TL * stride, 91), shorter(longer.begin() + off * stride, longer.end());
    fwd(longer.data(), 1, TL, stride, nrot, hs, 0, theta);
    fwd(shorter.data(), 1, T, stride, nrot, hs, off, theta);
    EXPECT_EQ(shorter, V(longer.begin() + off * stride, longer.end()));
    auto xf = cast<float>(x);
    fwd(y.data(), B, T, stride, nrot, hs, 3, theta);
    std::vector<float> yf = xf;
    kernel<ops::Rope<float>::Forward>("rope_forward", DType::F32)(yf.data(), B, T, stride, nrot, hs, 3, theta);
    EXPECT_LT(rel_err(yf, ref_rope(x, B, T, stride, nrot, hs, 3, theta)), 1e-6) << "theta " << theta;
  }
  V x(stride);
  test::expect_error([&] { fwd(x.data(), 1, 1, stride, nrot, 9, 0, 1e4); }, {"rope", "head size 9"});
  test::expect_error([&] { fwd(x.data(), 1, 1, stride, 6, hs, 0, 1e4); }, {"6 heads of size 10", "50 columns"});
}

// Against Hugging Face's float32 evaluation (inv_freq = 1/theta^(2i/hs), angle = pos·inv_freq and cos/sin, all
// in fp32, then x·cos + rotate_half(x)·sin in fp32): within fp32 rounding at short positions; at position ~2000
// HF's fp32 angle drifts from the exact one by up to ~pos·θ_i·2⁻²³, and the float kernel (exact angle, see
// rope.h) stays within 1e-6 of the double reference there while HF's formula is off by that drift.
TEST(Rope, FloatKernelAgainstHuggingFaceFloat32Formula) {
  const int B = 2, T = 9, NH = 2, hs = 16, half = hs / 2, stride = NH * hs;
  const double theta = 10000.0;
  auto hf = [&](const std::vector<float>& x, int pos0) {
    std::vector<float> out = x;
    for (int r = 0; r < B * T; ++r)
      for (int h = 0; h < NH; ++h)
        for (int i = 0; i < half; ++i) {
          const float inv =
              1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(hs));
          const float a = static_cast<float>(pos0 + r % T) * inv, c = std::cos(a), s = std::sin(a);
          const size_t p = static_cast<size_t>(r) * stride + h * hs + i;
          out[p] = x[p] * c + (-x[p + half]) * s;
          out[p + half] = x[p + half] * c + x[p] * s;
        }
    return out;
  };
  const V x = randn<double>(B * T * stride, 92);
  const auto xf = cast<float>(x);
  for (int pos0 : {0, 2000}) {
    std::vector<float> y = xf;
    kernel<ops::Rope<float>::Forward>("rope_forward", DType::F32)(y.data(), B, T, stride, NH, hs, pos0, theta);
    const V exact = ref_rope(V(xf.begin(), xf.end()), B, T, stride, NH, hs, pos0, theta);
    const double ours = rel_err(y, exact), theirs = rel_err(hf(xf, pos0), exact), vs_hf = rel_err(y, hf(xf, pos0));
    EXPECT_LT(ours, 1e-6) << "pos0 " << pos0;
    const double drift = (pos0 + T) * std::ldexp(1.0, -23) * 2;  // |x| ≤ ~4: angle error × a few
    EXPECT_LT(vs_hf, 2e-6 + drift) << "pos0 " << pos0 << " (HF's own error " << theirs << ")";
  }
}

TEST(Rope, BackwardMatchesFiniteDifferencesAndInvertsForward) {
  const int B = 2, T = 5, NH = 2, NKV = 1, hs = 6, stride = (NH + 2 * NKV) * hs, nrot = NH + NKV, pos0 = 4;
  const double theta = 10000.0;
  V x = randn<double>(B * T * stride, 93), proj = randn<double>(B * T * stride, 94);
  V dx = proj;
  kernel<ops::Rope<double>::Backward>("rope_backward", DType::F64)(dx.data(), B, T, stride, nrot, hs, pos0, theta);
  auto loss = [&] { return project(ref_rope(x, B, T, stride, nrot, hs, pos0, theta), proj); };
  expect_gradient(x, dx, loss, "rope input");
  V y = x;
  kernel<ops::Rope<double>::Forward>("rope_forward", DType::F64)(y.data(), B, T, stride, nrot, hs, pos0, theta);
  kernel<ops::Rope<double>::Backward>("rope_backward", DType::F64)(y.data(), B, T, stride, nrot, hs, pos0, theta);
  EXPECT_LT(rel_err(y, x), 1e-15);
}

// Grouped-query attention (NH=6 query heads over NKV=2 or 1 kv heads, and NKV=NH) against the naive softmax in
// double, outputs NaN-poisoned; float against double.
TEST(AttentionGqa, ForwardMatchesNaiveCausalSoftmax) {
  const int B = 3, T = 7, NH = 6, hs = 5;
  for (int NKV : {2, 1, 6}) {
    const int ld = (NH + 2 * NKV) * hs, C = NH * hs;
    V qkv = randn<double>(B * T * ld, 95);
    V out(B * T * C, NAN), lse(B * NH * T, NAN);
    kernel<ops::Attention<double>::ForwardGqa>("attention_gqa_forward", DType::F64)(out.data(), lse.data(), qkv.data(),
                                                                                    B, T, NH, NKV, hs);
    const V expect = ref_attention_gqa(qkv, B, T, NH, NKV, hs);
    EXPECT_LT(rel_err(out, expect), 1e-13) << "NKV " << NKV;
    for (double l : lse) ASSERT_TRUE(std::isfinite(l)) << "lse not written";
    auto qf = cast<float>(qkv);
    std::vector<float> outf(B * T * C, NAN), lsef(B * NH * T, NAN);
    kernel<ops::Attention<float>::ForwardGqa>("attention_gqa_forward", DType::F32)(outf.data(), lsef.data(), qf.data(),
                                                                                   B, T, NH, NKV, hs);
    EXPECT_LT(rel_err(outf, expect), 1e-5) << "NKV " << NKV;
  }
  V x(1);
  test::expect_error(
      [&] {
        kernel<ops::Attention<double>::ForwardGqa>("attention_gqa_forward", DType::F64)(x.data(), x.data(), x.data(), 1,
                                                                                        1, 6, 4, 8);
      },
      {"NH=6", "NKV=4"});
}

TEST(AttentionGqa, BackwardMatchesFiniteDifferences) {
  const int B = 2, T = 5, NH = 6, hs = 4;
  for (int NKV : {2, 1}) {
    const int ld = (NH + 2 * NKV) * hs, C = NH * hs;
    V qkv = randn<double>(B * T * ld, 96), proj = randn<double>(B * T * C, 97);
    V out(B * T * C), lse(B * NH * T), dqkv(qkv.size(), NAN);
    kernel<ops::Attention<double>::ForwardGqa>("attention_gqa_forward", DType::F64)(out.data(), lse.data(), qkv.data(),
                                                                                    B, T, NH, NKV, hs);
    kernel<ops::Attention<double>::BackwardGqa>("attention_gqa_backward", DType::F64)(
        dqkv.data(), proj.data(), qkv.data(), out.data(), lse.data(), B, T, NH, NKV, hs);
    auto loss = [&] { return project(ref_attention_gqa(qkv, B, T, NH, NKV, hs), proj); };
    expect_gradient(qkv, dqkv, loss, NKV == 2 ? "gqa qkv (NKV=2)" : "gqa qkv (NKV=1)", 1e-6, 1000);
  }
}

// Across two query-block boundaries at an odd length (the kv task walks its group's heads block by block):
// forward against the naive softmax, backward against finite differences (a sample), float against double.
TEST(AttentionGqa, QueryBlocksMatchNaiveAtLongOddSequences) {
  const int B = 2, T = 150, NH = 4, NKV = 2, hs = 6, ld = (NH + 2 * NKV) * hs, C = NH * hs;
  V qkv = randn<double>(B * T * ld, 98), proj = randn<double>(B * T * C, 99);
  V out(B * T * C, NAN), lse(B * NH * T, NAN), dqkv(qkv.size(), NAN);
  kernel<ops::Attention<double>::ForwardGqa>("attention_gqa_forward", DType::F64)(out.data(), lse.data(), qkv.data(), B,
                                                                                  T, NH, NKV, hs);
  EXPECT_LT(rel_err(out, ref_attention_gqa(qkv, B, T, NH, NKV, hs)), 1e-12);
  kernel<ops::Attention<double>::BackwardGqa>("attention_gqa_backward", DType::F64)(
      dqkv.data(), proj.data(), qkv.data(), out.data(), lse.data(), B, T, NH, NKV, hs);
  auto loss = [&] { return project(ref_attention_gqa(qkv, B, T, NH, NKV, hs), proj); };
  expect_gradient(qkv, dqkv, loss, "gqa qkv (T=150)", 1e-6, 150);
  auto qf = cast<float>(qkv), pf = cast<float>(proj);
  std::vector<float> outf(out.size(), NAN), lsef(lse.size(), NAN), dqkvf(qkv.size(), NAN);
  kernel<ops::Attention<float>::ForwardGqa>("attention_gqa_forward", DType::F32)(outf.data(), lsef.data(), qf.data(), B,
                                                                                 T, NH, NKV, hs);
  EXPECT_LT(rel_err(outf, out), 1e-5);
  kernel<ops::Attention<float>::BackwardGqa>("attention_gqa_backward", DType::F32)(
      dqkvf.data(), pf.data(), qf.data(), outf.data(), lsef.data(), B, T, NH, NKV, hs);
  EXPECT_LT(rel_err(dqkvf, dqkv), 1e-4);
}

// With NKV = NH the GQA entry points are the GPT-2 kernels: the same bits, forward and backward, float and double.
template <typename T>
void expect_gqa_equals_mha() {
  const int B = 2, Tn = 70, NH = 3, hs = 8, C = NH * hs;
  const auto qkv = randn<T>(static_cast<size_t>(B) * Tn * 3 * C, 100), dout = randn<T>(B * Tn * C, 101);
  std::vector<T> o1(B * Tn * C, NAN), o2 = o1, l1(B * NH * Tn, NAN), l2 = l1, d1(qkv.size(), NAN), d2 = d1;
  const DType dt = dtype_of<T>();
  using A = ops::Attention<T>;
  kernel<typename A::Forward>("attention_forward", dt)(o1.data(), l1.data(), qkv.data(), B, Tn, C, NH);
  kernel<typename A::ForwardGqa>("attention_gqa_forward", dt)(o2.data(), l2.data(), qkv.data(), B, Tn, NH, NH, hs);
  kernel<typename A::Backward>("attention_backward", dt)(d1.data(), dout.data(), qkv.data(), o1.data(), l1.data(), B,
                                                         Tn, C, NH);
  kernel<typename A::BackwardGqa>("attention_gqa_backward", dt)(d2.data(), dout.data(), qkv.data(), o2.data(),
                                                                l2.data(), B, Tn, NH, NH, hs);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(d1, d2);
}

TEST(AttentionGqa, EqualHeadCountsAreTheMultiHeadKernelBitForBit) {
  expect_gqa_equals_mha<double>();
  expect_gqa_equals_mha<float>();
}

// ---- registry ---------------------------------------------------------------------------------------------

TEST(Registry, UnknownOpAndWrongSignatureAreClearErrors) {
  auto& r = ops::Registry::instance();
  try {
    r.find<ops::Gelu<float>::Forward>("no_such_op", Device::CPU, DType::F32);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no kernel for \"no_such_op\""), std::string::npos) << e.what();
  }
  try {
    r.find<ops::Gelu<double>::Forward>("gelu_forward", Device::CPU, DType::F32);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different signature"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.find<ops::Gelu<double>::Forward>("gelu_forward", Device::CUDA, DType::F64), Error);
}

TEST(Registry, EveryRegisteredOpIsCoveredByThisFile) {
  // Keep this list in step with the tests above: a new kernel must come with its test.
  const std::set<std::string> tested = {"embedding_forward", "embedding_backward", "layernorm_forward",
                                        "residual_layernorm_forward", "layernorm_backward", "matmul_forward",
                                        "matmul_backward", "attention_forward", "attention_backward", "gelu_forward",
                                        "gelu_backward", "softmax_xent", "classifier", "adamw_update", "sum_squares",
                                        "matmul_gelu_forward", "matmul_backward_dgelu", "multi_adamw",
                                        "multi_sum_squares", "rmsnorm_forward", "residual_rmsnorm_forward",
                                        "rmsnorm_backward", "swiglu_forward", "swiglu_backward", "rope_forward",
                                        "rope_backward", "attention_gqa_forward", "attention_gqa_backward",
                                        "residual_forward", "glu_split", "glu_forward", "glu_backward", "glu_merge",
                                        "cast_to_working"};  // CUDA only: tests/ops/test_ops_cuda_bf16.cpp
  for (const std::string& k : ops::Registry::instance().list()) {
    const std::string op = k.substr(0, k.find('/'));
    EXPECT_TRUE(tested.count(op)) << "kernel " << k << " has no test in tests/ops/test_ops.cpp";
  }
}

}  // namespace
}  // namespace aq
