// test_ops_cuda.cpp — every CUDA kernel against its CPU twin on random inputs at odd sizes, forward and
// backward (fp32, relative error < 1e-5; the bf16 and fused kernels are in test_ops_cuda_bf16.cpp). Without a
// visible GPU each test skips with that reason, so a CPU-only machine reports them as skipped rather than passed.
// Built only with the CUDA toolkit.
#include <cuda_runtime.h>
#include <unistd.h>

#include <barrier>
#include <filesystem>
#include <fstream>
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
#include "runtime/cuda/device.h"
#include "runtime/data.h"
#include "tests/ops/cuda_test_util.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace aq {
namespace {

using test::randn;
using test::rel_err;
using F = std::vector<float>;

using test::Dev;

template <typename Fn>
Fn* cpu(const char* op) {
  return ops::Registry::instance().find<Fn>(op, Device::CPU, DType::F32);
}
template <typename Fn>
Fn* gpu(const char* op) {
  return ops::Registry::instance().find<Fn>(op, Device::CUDA, DType::F32);
}

TEST(CudaOps, Gelu) {
  AQ_REQUIRE_GPU();
  for (int64_t n : {1, 3, 1001, 4099}) {
    F x = randn<float>(n, 1, 3.0), d = randn<float>(n, 2), out(n), dx(n);
    cpu<ops::Gelu<float>::Forward>("gelu_forward")(out.data(), x.data(), n);
    cpu<ops::Gelu<float>::Backward>("gelu_backward")(dx.data(), x.data(), d.data(), n);
    Dev<float> gx(x), gd(d), gout(F(n, NAN)), gdx(F(n, NAN));
    gpu<ops::Gelu<float>::Forward>("gelu_forward")(gout.get(), gx.get(), n);
    gpu<ops::Gelu<float>::Backward>("gelu_backward")(gdx.get(), gx.get(), gd.get(), n);
    EXPECT_LT(rel_err(gout.read(), out), 1e-5) << "n=" << n;
    EXPECT_LT(rel_err(gdx.read(), dx), 1e-5) << "n=" << n;
  }
}

TEST(CudaOps, LayerNormForwardResidualAndBackward) {
  AQ_REQUIRE_GPU();
  const int N = 37, C = 75;
  F a = randn<float>(N * C, 3), b_in = randn<float>(N * C, 4), w = randn<float>(C, 5), b = randn<float>(C, 6);
  F dout = randn<float>(N * C, 7), res(N * C), out(N * C), mu(N), rs(N), dx = randn<float>(N * C, 8), dw(C, 0.5f),
    db(C, -0.5f);
  F dx0 = dx, dw0 = dw, db0 = db;
  cpu<ops::LayerNorm<float>::ResidualForward>("residual_layernorm_forward")(
      res.data(), out.data(), mu.data(), rs.data(), a.data(), b_in.data(), w.data(), b.data(), N, C);
  cpu<ops::LayerNorm<float>::Backward>("layernorm_backward")(dx.data(), dw.data(), db.data(), dout.data(), res.data(),
                                                             w.data(), mu.data(), rs.data(), N, C);
  Dev<float> ga(a), gb_in(b_in), gw(w), gb(b), gres(F(N * C, NAN)), gout(F(N * C, NAN)), gmu(F(N, 0.0f)),
      grs(F(N, 0.0f));
  Dev<float> gdout(dout), gdx(dx0), gdw(dw0), gdb(db0);
  gpu<ops::LayerNorm<float>::ResidualForward>("residual_layernorm_forward")(
      gres.get(), gout.get(), gmu.get(), grs.get(), ga.get(), gb_in.get(), gw.get(), gb.get(), N, C);
  EXPECT_LT(rel_err(gres.read(), res), 1e-6);
  EXPECT_LT(rel_err(gout.read(), out), 1e-5);
  gpu<ops::LayerNorm<float>::Backward>("layernorm_backward")(gdx.get(), gdw.get(), gdb.get(), gdout.get(), gres.get(),
                                                             gw.get(), gmu.get(), grs.get(), N, C);
  EXPECT_LT(rel_err(gdx.read(), dx), 1e-5);
  EXPECT_LT(rel_err(gdw.read(), dw), 1e-5);
  EXPECT_LT(rel_err(gdb.read(), db), 1e-5);
  Dev<float> gout2(F(N * C, NAN));  // plain forward
  gpu<ops::LayerNorm<float>::Forward>("layernorm_forward")(gout2.get(), gmu.get(), grs.get(), gres.get(), gw.get(),
                                                           gb.get(), N, C);
  EXPECT_LT(rel_err(gout2.read(), out), 1e-5);
}

TEST(CudaOps, EmbeddingForwardBackwardIncludingVocabularyShard) {
  AQ_REQUIRE_GPU();
  const int B = 3, T = 7, C = 33, Vn = 29, maxT = 9;
  F wte = randn<float>(Vn * C, 9), wpe = randn<float>(maxT * C, 10), dout = randn<float>(B * T * C, 11);
  auto inp = test::random_tokens(B * T, Vn, 12);
  inp[5] = inp[2] = inp[17];  // repeated tokens accumulate
  for (auto [v0, Vl] : {std::pair{0, Vn}, std::pair{10, 10}}) {
    F out(B * T * C), dwte(Vl * C, 0.25f), dwpe(maxT * C, 0.0f);
    const F dwte0 = dwte;
    cpu<ops::Embedding<float>::Forward>("embedding_forward")(out.data(), inp.data(), wte.data() + v0 * C, wpe.data(), B,
                                                             T, C, v0, Vl);
    cpu<ops::Embedding<float>::Backward>("embedding_backward")(dwte.data(), dwpe.data(), dout.data(), inp.data(), B, T,
                                                               C, v0, Vl);
    F wte_shard(wte.begin() + v0 * C, wte.begin() + (v0 + Vl) * C);
    Dev<float> gwte(wte_shard), gwpe(wpe), gdout(dout), gout(F(B * T * C, NAN)), gdwte(dwte0), gdwpe(F(maxT * C, 0));
    Dev<int32_t> ginp(inp);
    gpu<ops::Embedding<float>::Forward>("embedding_forward")(gout.get(), ginp.get(), gwte.get(), gwpe.get(), B, T, C,
                                                             v0, Vl);
    gpu<ops::Embedding<float>::Backward>("embedding_backward")(gdwte.get(), gdwpe.get(), gdout.get(), ginp.get(), B, T,
                                                               C, v0, Vl);
    EXPECT_EQ(gout.read(), out) << "v0=" << v0;
    EXPECT_LT(rel_err(gdwte.read(), dwte), 1e-6) << "v0=" << v0;
    EXPECT_LT(rel_err(gdwpe.read(), dwpe), 1e-6) << "v0=" << v0;
    // Deterministic: a second run gives the same bits.
    Dev<float> gdwte2(dwte0), gdwpe2(F(maxT * C, 0));
    gpu<ops::Embedding<float>::Backward>("embedding_backward")(gdwte2.get(), gdwpe2.get(), gdout.get(), ginp.get(), B,
                                                               T, C, v0, Vl);
    EXPECT_EQ(gdwte2.read(), gdwte.read());
  }
}

TEST(CudaOps, AdamWAndSumSquares) {
  AQ_REQUIRE_GPU();
  const int64_t n = 200003;
  F p = randn<float>(n, 13), g = randn<float>(n, 14), m = randn<float>(n, 15, 0.1), v(n, 0.01f);
  ops::AdamWParams hp;
  hp.lr = 1e-3;
  hp.weight_decay = 0.1;
  hp.step = 3;
  hp.grad_scale = 0.7;
  Dev<float> gp(p), gg(g), gm(m), gv(v);
  cpu<ops::AdamW<float>::Update>("adamw_update")(p.data(), g.data(), m.data(), v.data(), n, hp);
  gpu<ops::AdamW<float>::Update>("adamw_update")(gp.get(), gg.get(), gm.get(), gv.get(), n, hp);
  EXPECT_LT(rel_err(gp.read(), p), 1e-6);
  EXPECT_LT(rel_err(gm.read(), m), 1e-6);
  EXPECT_LT(rel_err(gv.read(), v), 1e-6);
  const double want = cpu<ops::AdamW<float>::SumSquares>("sum_squares")(g.data(), n);
  const double got = gpu<ops::AdamW<float>::SumSquares>("sum_squares")(gg.get(), n);
  EXPECT_NEAR(got, want, 1e-12 * want);
  EXPECT_EQ(got, gpu<ops::AdamW<float>::SumSquares>("sum_squares")(gg.get(), n));  // bit-reproducible
}

TEST(CudaOps, MatmulForwardBackwardWithBias) {
  AQ_REQUIRE_GPU();
  const int N = 37, IC = 19, OC = 53;
  F x = randn<float>(N * IC, 16), w = randn<float>(IC * OC, 17), bias = randn<float>(OC, 18),
    dout = randn<float>(N * OC, 19);
  F out(N * OC), dx(N * IC), dw = randn<float>(IC * OC, 20), db = randn<float>(OC, 21);
  const F dw0 = dw, db0 = db;
  cpu<ops::Matmul<float>::Forward>("matmul_forward")(out.data(), x.data(), w.data(), bias.data(), N, IC, OC);
  cpu<ops::Matmul<float>::Backward>("matmul_backward")(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                                                       N, IC, OC);
  Dev<float> gx(x), gw(w), gb(bias), gdout(dout), gout(F(N * OC, NAN)), gdx(F(N * IC, NAN)), gdw(dw0), gdb(db0);
  gpu<ops::Matmul<float>::Forward>("matmul_forward")(gout.get(), gx.get(), gw.get(), gb.get(), N, IC, OC);
  gpu<ops::Matmul<float>::Backward>("matmul_backward")(gdx.get(), gdw.get(), gdb.get(), gdout.get(), gx.get(), gw.get(),
                                                       N, IC, OC);
  EXPECT_LT(rel_err(gout.read(), out), 1e-5);
  EXPECT_LT(rel_err(gdx.read(), dx), 1e-5);
  EXPECT_LT(rel_err(gdw.read(), dw), 1e-5);
  EXPECT_LT(rel_err(gdb.read(), db), 1e-5);
  gpu<ops::Matmul<float>::Forward>("matmul_forward")(gout.get(), gx.get(), gw.get(), nullptr, N, IC, OC);  // no bias
  cpu<ops::Matmul<float>::Forward>("matmul_forward")(out.data(), x.data(), w.data(), nullptr, N, IC, OC);
  EXPECT_LT(rel_err(gout.read(), out), 1e-5);
}

TEST(CudaOps, AttentionForwardBackward) {
  AQ_REQUIRE_GPU();
  for (auto [B, T, C, NH] : {std::tuple{2, 7, 12, 3}, std::tuple{1, 67, 64, 2}, std::tuple{3, 130, 96, 4}}) {
    F qkv = randn<float>(B * T * 3 * C, 22), dout = randn<float>(B * T * C, 23), out(B * T * C), lse(B * NH * T),
      dqkv(qkv.size());
    cpu<ops::Attention<float>::Forward>("attention_forward")(out.data(), lse.data(), qkv.data(), B, T, C, NH);
    cpu<ops::Attention<float>::Backward>("attention_backward")(dqkv.data(), dout.data(), qkv.data(), out.data(),
                                                               lse.data(), B, T, C, NH);
    Dev<float> gqkv(qkv), gdout(dout), gout(F(out.size(), NAN)), glse(F(lse.size(), NAN)), gdqkv(F(qkv.size(), NAN));
    gpu<ops::Attention<float>::Forward>("attention_forward")(gout.get(), glse.get(), gqkv.get(), B, T, C, NH);
    gpu<ops::Attention<float>::Backward>("attention_backward")(gdqkv.get(), gdout.get(), gqkv.get(), gout.get(),
                                                               glse.get(), B, T, C, NH);
    EXPECT_LT(rel_err(gout.read(), out), 1e-5) << "T=" << T;
    EXPECT_LT(rel_err(glse.read(), lse), 1e-5) << "T=" << T;
    EXPECT_LT(rel_err(gdqkv.read(), dqkv), 1e-5) << "T=" << T;
  }
}

TEST(CudaOps, SoftmaxXentAndChunkedClassifier) {
  AQ_REQUIRE_GPU();
  const int N = 29, C = 24, V = 1031;
  F x = randn<float>(N * C, 24), wte = randn<float>(V * C, 25, 0.5), logits = randn<float>(N * V, 26, 3.0);
  auto tgt = test::random_tokens(N, V, 27);
  Dev<int32_t> gt(tgt);
  {  // the row kernel alone
    F l = logits, losses(N);
    cpu<ops::SoftmaxXent<float>::Forward>("softmax_xent")(losses.data(), l.data(), tgt.data(), N, V, 1.0f / N, 1);
    Dev<float> gl(logits), glosses(F(N, NAN));
    gpu<ops::SoftmaxXent<float>::Forward>("softmax_xent")(glosses.get(), gl.get(), gt.get(), N, V, 1.0f / N, 1);
    EXPECT_LT(rel_err(glosses.read(), losses), 1e-5);
    EXPECT_LT(rel_err(gl.read(), l), 1e-5);
  }
  for (int64_t chunk : {int64_t{7}, int64_t{N}}) {
    F losses(N), dx(N * C), dwte(V * C, 0.0f), scratch(chunk * V);
    cpu<ops::Classifier<float>::Forward>("classifier")(losses.data(), dx.data(), dwte.data(), scratch.data(), x.data(),
                                                       wte.data(), tgt.data(), N, C, V, 0, V, chunk, 1.0f / N, nullptr);
    Dev<float> gx(x), gw(wte), glosses(F(N, NAN)), gdx(F(N * C, NAN)), gdw(F(V * C, 0.0f)), gs(F(chunk * V, 0.0f));
    gpu<ops::Classifier<float>::Forward>("classifier")(glosses.get(), gdx.get(), gdw.get(), gs.get(), gx.get(),
                                                       gw.get(), gt.get(), N, C, V, 0, V, chunk, 1.0f / N, nullptr);
    EXPECT_LT(rel_err(glosses.read(), losses), 1e-5) << "chunk " << chunk;
    EXPECT_LT(rel_err(gdx.read(), dx), 1e-5) << "chunk " << chunk;
    EXPECT_LT(rel_err(gdw.read(), dwte), 1e-5) << "chunk " << chunk;
  }
}

// Two "ranks" as threads on one GPU, each owning half of a padded vocabulary; the hook combines their device
// row statistics through the host (as NCCL would on the device). Losses and summed dx must match one rank.
TEST(CudaOps, VocabularyParallelClassifierMatchesSingleRank) {
  AQ_REQUIRE_GPU();
  const int N = 11, C = 8, V = 37, Vl = 19, chunk = 4;  // padded to 38: rank 1 owns rows 19-36 and one padding row
  F x = randn<float>(N * C, 30), wte = randn<float>(V * C, 31, 0.5);
  auto tgt = test::random_tokens(N, V, 32);
  F losses(N), dx(N * C), dwte(V * C, 0.0f), sc(chunk * V);
  cpu<ops::Classifier<float>::Forward>("classifier")(losses.data(), dx.data(), dwte.data(), sc.data(), x.data(),
                                                     wte.data(), tgt.data(), N, C, V, 0, V, chunk, 1.0f / N, nullptr);
  struct Shared {
    std::barrier<> sync{2};
    std::vector<float> slot[2];
  } shared;
  auto hook_fn = [](void* ctx, float* dev, int64_t n, int is_max) {
    auto* self = static_cast<std::pair<Shared*, int>*>(ctx);
    Shared& sh = *self->first;
    std::vector<float>& mine = sh.slot[self->second];
    mine.resize(static_cast<size_t>(n));
    cudaMemcpy(mine.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost);
    sh.sync.arrive_and_wait();
    std::vector<float> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      out[i] = is_max ? std::max(sh.slot[0][i], sh.slot[1][i]) : sh.slot[0][i] + sh.slot[1][i];
    sh.sync.arrive_and_wait();
    cudaMemcpy(dev, out.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  };
  F wte_pad(2 * Vl * C, 0.0f);
  std::copy(wte.begin(), wte.end(), wte_pad.begin());
  F lr[2] = {F(N), F(N)}, dxr[2] = {F(N * C), F(N * C)}, dwr[2] = {F(Vl * C), F(Vl * C)};
  std::vector<std::thread> ranks;
  Dev<float> gx(x);
  Dev<int32_t> gt(tgt);
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      std::pair<Shared*, int> ctx{&shared, r};
      const ops::ReduceHook<float> hook{&ctx, hook_fn};
      Dev<float> gw(F(wte_pad.begin() + r * Vl * C, wte_pad.begin() + (r + 1) * Vl * C)), gl(F(N, NAN)),
          gdx(F(N * C, NAN)), gdw(F(Vl * C, 0.0f)), gs(F(chunk * Vl, 0.0f));
      gpu<ops::Classifier<float>::Forward>("classifier")(gl.get(), gdx.get(), gdw.get(), gs.get(), gx.get(), gw.get(),
                                                         gt.get(), N, C, Vl, r * Vl, V, chunk, 1.0f / N, &hook);
      lr[r] = gl.read();
      dxr[r] = gdx.read();
      dwr[r] = gdw.read();
    });
  for (auto& t : ranks) t.join();
  EXPECT_LT(rel_err(lr[0], losses), 1e-5);
  EXPECT_EQ(lr[0], lr[1]);
  F dx_sum(N * C);
  for (int i = 0; i < N * C; ++i) dx_sum[i] = dxr[0][i] + dxr[1][i];
  EXPECT_LT(rel_err(dx_sum, dx), 1e-5);
  F joined(dwr[0]);
  joined.insert(joined.end(), dwr[1].begin(), dwr[1].begin() + (V - Vl) * C);
  EXPECT_LT(rel_err(joined, dwte), 1e-5);
  for (int i = (V - Vl) * C; i < Vl * C; ++i) ASSERT_EQ(dwr[1][i], 0.0f) << "padding row got a gradient";
}

TEST(CudaOps, RmsNormForwardAndBackward) {
  AQ_REQUIRE_GPU();
  const int N = 37, C = 75;
  const double eps = 1e-5;
  F x = randn<float>(N * C, 40, 2.0), w = randn<float>(C, 41), dout = randn<float>(N * C, 42);
  F out(N * C), rs(N), dx = randn<float>(N * C, 43), dw(C, 0.5f);
  const F dx0 = dx, dw0 = dw;
  cpu<ops::RmsNorm<float>::Forward>("rmsnorm_forward")(out.data(), rs.data(), x.data(), w.data(), N, C, eps);
  cpu<ops::RmsNorm<float>::Backward>("rmsnorm_backward")(dx.data(), dw.data(), dout.data(), x.data(), w.data(),
                                                         rs.data(), N, C);
  Dev<float> gx(x), gw(w), gout(F(N * C, NAN)), grs(F(N, NAN)), gdout(dout), gdx(dx0), gdw(dw0);
  gpu<ops::RmsNorm<float>::Forward>("rmsnorm_forward")(gout.get(), grs.get(), gx.get(), gw.get(), N, C, eps);
  EXPECT_LT(rel_err(gout.read(), out), 1e-5);
  EXPECT_LT(rel_err(grs.read(), rs), 1e-5);
  gpu<ops::RmsNorm<float>::Backward>("rmsnorm_backward")(gdx.get(), gdw.get(), gdout.get(), gx.get(), gw.get(),
                                                         grs.get(), N, C);
  EXPECT_LT(rel_err(gdx.read(), dx), 1e-5);  // both accumulate into the same starting values
  EXPECT_LT(rel_err(gdw.read(), dw), 1e-5);
  // fused with the residual add: res = x + b_in, normalised
  F b_in = randn<float>(N * C, 51), res(N * C);
  cpu<ops::RmsNorm<float>::ResidualForward>("residual_rmsnorm_forward")(res.data(), out.data(), rs.data(), x.data(),
                                                                        b_in.data(), w.data(), N, C, eps);
  Dev<float> gb_in(b_in), gres(F(N * C, NAN)), gout2(F(N * C, NAN)), grs2(F(N, NAN));
  gpu<ops::RmsNorm<float>::ResidualForward>("residual_rmsnorm_forward")(gres.get(), gout2.get(), grs2.get(), gx.get(),
                                                                        gb_in.get(), gw.get(), N, C, eps);
  EXPECT_EQ(gres.read(), res);  // one fp32 addition either way
  EXPECT_LT(rel_err(gout2.read(), out), 1e-5);
  EXPECT_LT(rel_err(grs2.read(), rs), 1e-5);
}

// One fp32 addition on either device: bit-identical, also in place (out aliasing a).
TEST(CudaOps, ResidualForwardAndInPlace) {
  AQ_REQUIRE_GPU();
  for (int64_t n : {1, 7, 4099}) {
    F a = randn<float>(n, 50), b = randn<float>(n, 51), out(n, NAN);
    cpu<ops::Residual<float>::Forward>("residual_forward")(out.data(), a.data(), b.data(), n);
    Dev<float> ga(a), gb(b), gout(F(n, NAN));
    gpu<ops::Residual<float>::Forward>("residual_forward")(gout.get(), ga.get(), gb.get(), n);
    EXPECT_EQ(gout.read(), out) << "n=" << n;
    gpu<ops::Residual<float>::Forward>("residual_forward")(ga.get(), ga.get(), gb.get(), n);
    EXPECT_EQ(ga.read(), out) << "in place, n=" << n;
  }
}

// Split and merge are copies (bit-identical); forward and backward one fp32 product each (bit-identical too).
TEST(CudaOps, GluSplitForwardBackwardMerge) {
  AQ_REQUIRE_GPU();
  for (auto [N, Fn] : {std::pair{21, 13}, std::pair{5, 1001}}) {
    F inp = randn<float>(N * 2 * Fn, 52), act = randn<float>(N * Fn, 53), dout = randn<float>(N * Fn, 54);
    F gate(N * Fn), out(N * Fn), dinp(N * 2 * Fn), dact(N * Fn);
    cpu<ops::Glu<float>::Split>("glu_split")(gate.data(), inp.data(), N, Fn);
    cpu<ops::Glu<float>::Forward>("glu_forward")(out.data(), act.data(), inp.data(), N, Fn);
    cpu<ops::Glu<float>::Backward>("glu_backward")(dinp.data(), dact.data(), dout.data(), act.data(), inp.data(), N,
                                                   Fn);
    cpu<ops::Glu<float>::Merge>("glu_merge")(dinp.data(), gate.data(), N, Fn);
    Dev<float> ginp(inp), gact(act), gdout(dout), ggate(F(N * Fn, NAN)), gout(F(N * Fn, NAN)), gdact(F(N * Fn, NAN));
    gpu<ops::Glu<float>::Split>("glu_split")(ggate.get(), ginp.get(), N, Fn);
    gpu<ops::Glu<float>::Forward>("glu_forward")(gout.get(), gact.get(), ginp.get(), N, Fn);
    // in place over inp, as the model runs it
    gpu<ops::Glu<float>::Backward>("glu_backward")(ginp.get(), gdact.get(), gdout.get(), gact.get(), ginp.get(), N, Fn);
    gpu<ops::Glu<float>::Merge>("glu_merge")(ginp.get(), ggate.get(), N, Fn);
    EXPECT_EQ(ggate.read(), gate) << "F=" << Fn;
    EXPECT_EQ(gout.read(), out) << "F=" << Fn;
    EXPECT_EQ(gdact.read(), dact) << "F=" << Fn;
    EXPECT_EQ(ginp.read(), dinp) << "F=" << Fn;
  }
}

TEST(CudaOps, SwiGluForwardBackwardAndInPlace) {
  AQ_REQUIRE_GPU();
  for (auto [N, Fn] : {std::pair{21, 13}, std::pair{5, 1001}}) {
    F inp = randn<float>(N * 2 * Fn, 44, 3.0), dout = randn<float>(N * Fn, 45), out(N * Fn), dinp(N * 2 * Fn);
    inp[0] = -90.0f;  // expf(90) is infinite: sigmoid must come out 0, not NaN
    cpu<ops::SwiGlu<float>::Forward>("swiglu_forward")(out.data(), inp.data(), N, Fn);
    cpu<ops::SwiGlu<float>::Backward>("swiglu_backward")(dinp.data(), dout.data(), inp.data(), N, Fn);
    Dev<float> ginp(inp), gdout(dout), gout(F(N * Fn, NAN)), gdinp(F(N * 2 * Fn, NAN)), galias(inp);
    gpu<ops::SwiGlu<float>::Forward>("swiglu_forward")(gout.get(), ginp.get(), N, Fn);
    gpu<ops::SwiGlu<float>::Backward>("swiglu_backward")(gdinp.get(), gdout.get(), ginp.get(), N, Fn);
    gpu<ops::SwiGlu<float>::Backward>("swiglu_backward")(galias.get(), gdout.get(), galias.get(), N, Fn);
    EXPECT_LT(rel_err(gout.read(), out), 1e-5) << "F=" << Fn;
    EXPECT_LT(rel_err(gdinp.read(), dinp), 1e-5) << "F=" << Fn;
    EXPECT_EQ(galias.read(), gdinp.read()) << "in place differs, F=" << Fn;
  }
}

// The q and k heads of a packed GQA input (v untouched), at a short and a long position offset; the cos/sin
// tables are evaluated in double on both devices, so only the fp32 rotation itself may differ.
TEST(CudaOps, RopeForwardAndBackward) {
  AQ_REQUIRE_GPU();
  for (auto [NH, NKV, hs] : {std::tuple{3, 1, 10}, std::tuple{4, 2, 128}})
    for (int pos0 : {0, 1000})
      for (double theta : {10000.0, 500000.0}) {
        const int B = 3, T = 7, stride = (NH + 2 * NKV) * hs, nrot = NH + NKV;
        const F x = randn<float>(B * T * stride, 46);
        F y = x, dy = x;
        cpu<ops::Rope<float>::Forward>("rope_forward")(y.data(), B, T, stride, nrot, hs, pos0, theta);
        cpu<ops::Rope<float>::Backward>("rope_backward")(dy.data(), B, T, stride, nrot, hs, pos0, theta);
        Dev<float> gy(x), gdy(x);
        gpu<ops::Rope<float>::Forward>("rope_forward")(gy.get(), B, T, stride, nrot, hs, pos0, theta);
        gpu<ops::Rope<float>::Backward>("rope_backward")(gdy.get(), B, T, stride, nrot, hs, pos0, theta);
        EXPECT_LT(rel_err(gy.read(), y), 1e-6) << "hs " << hs << " pos0 " << pos0 << " theta " << theta;
        EXPECT_LT(rel_err(gdy.read(), dy), 1e-6) << "hs " << hs << " pos0 " << pos0 << " theta " << theta;
      }
}

// Grouped-query attention against the CPU kernel: the flash tiles at head sizes 5, 32, 64 and 128 and the row
// kernels at 160, groups of 2, 3 and 4 (and NKV = 1); outputs NaN-poisoned; the backward repeats bit for bit.
// Then NKV = NH through the GQA entry equals the multi-head entry bit for bit.
TEST(CudaOps, AttentionGqaForwardBackward) {
  AQ_REQUIRE_GPU();
  for (auto [B, T, NH, NKV, hs] : {std::tuple{2, 7, 6, 2, 5}, std::tuple{1, 67, 8, 2, 64}, std::tuple{3, 130, 6, 3, 32},
                                   std::tuple{2, 70, 4, 1, 128}, std::tuple{1, 33, 4, 2, 160}}) {
    const int ld = (NH + 2 * NKV) * hs, C = NH * hs;
    F qkv = randn<float>(B * T * ld, 47), dout = randn<float>(B * T * C, 48), out(B * T * C), lse(B * NH * T),
      dqkv(qkv.size());
    cpu<ops::Attention<float>::ForwardGqa>("attention_gqa_forward")(out.data(), lse.data(), qkv.data(), B, T, NH, NKV,
                                                                    hs);
    cpu<ops::Attention<float>::BackwardGqa>("attention_gqa_backward")(dqkv.data(), dout.data(), qkv.data(), out.data(),
                                                                      lse.data(), B, T, NH, NKV, hs);
    Dev<float> gqkv(qkv), gdout(dout), gout(F(out.size(), NAN)), glse(F(lse.size(), NAN)), gdqkv(F(qkv.size(), NAN));
    gpu<ops::Attention<float>::ForwardGqa>("attention_gqa_forward")(gout.get(), glse.get(), gqkv.get(), B, T, NH, NKV,
                                                                    hs);
    gpu<ops::Attention<float>::BackwardGqa>("attention_gqa_backward")(gdqkv.get(), gdout.get(), gqkv.get(), gout.get(),
                                                                      glse.get(), B, T, NH, NKV, hs);
    EXPECT_LT(rel_err(gout.read(), out), 1e-5) << "NH " << NH << " NKV " << NKV << " hs " << hs;
    EXPECT_LT(rel_err(glse.read(), lse), 1e-5) << "NH " << NH << " NKV " << NKV << " hs " << hs;
    EXPECT_LT(rel_err(gdqkv.read(), dqkv), 1e-5) << "NH " << NH << " NKV " << NKV << " hs " << hs;
    Dev<float> again(F(qkv.size(), NAN));  // the group sums run in a fixed order: a second run gives the same bits
    gpu<ops::Attention<float>::BackwardGqa>("attention_gqa_backward")(again.get(), gdout.get(), gqkv.get(), gout.get(),
                                                                      glse.get(), B, T, NH, NKV, hs);
    EXPECT_EQ(again.read(), gdqkv.read()) << "NH " << NH << " NKV " << NKV << " hs " << hs;
  }
  const int B = 2, T = 70, NH = 3, hs = 24, C = NH * hs;
  F qkv = randn<float>(B * T * 3 * C, 49), dout = randn<float>(B * T * C, 50);
  Dev<float> gqkv(qkv), gdout(dout), o1(F(B * T * C, NAN)), o2(F(B * T * C, NAN)), l1(F(B * NH * T, NAN)),
      l2(F(B * NH * T, NAN)), d1(F(qkv.size(), NAN)), d2(F(qkv.size(), NAN));
  gpu<ops::Attention<float>::Forward>("attention_forward")(o1.get(), l1.get(), gqkv.get(), B, T, C, NH);
  gpu<ops::Attention<float>::ForwardGqa>("attention_gqa_forward")(o2.get(), l2.get(), gqkv.get(), B, T, NH, NH, hs);
  gpu<ops::Attention<float>::Backward>("attention_backward")(d1.get(), gdout.get(), gqkv.get(), o1.get(), l1.get(), B,
                                                             T, C, NH);
  gpu<ops::Attention<float>::BackwardGqa>("attention_gqa_backward")(d2.get(), gdout.get(), gqkv.get(), o2.get(),
                                                                    l2.get(), B, T, NH, NH, hs);
  EXPECT_EQ(o1.read(), o2.read());
  EXPECT_EQ(d1.read(), d2.read());
}

TEST(CudaOps, EveryCpuKernelHasACudaTwin) {
  // The model dispatches every kernel by device: each CPU float kernel needs its CUDA twin (and a test above).
  auto& r = ops::Registry::instance();
  for (const std::string& k : r.list()) {
    if (k.find("/cpu/F32") == std::string::npos) continue;
    const std::string op = k.substr(0, k.find('/'));
    EXPECT_TRUE(r.contains(op, Device::CUDA, DType::F32)) << op << " has no CUDA kernel";
  }
}

// Trains `c` on the CPU, then on the GPU in fp32: the losses and the validation losses follow (within 1e-4
// relative); both runs evaluate `evaluations` times.
void expect_gpu_run_follows_cpu(TrainConfig c, size_t evaluations = 0) {
  c.device = "cpu";
  const TrainResult cpu_run = train(c, ParallelContext::local());
  c.device = "cuda";
  c.dtype = "fp32";
  const TrainResult gpu_run = train(c, ParallelContext::local());
  ASSERT_EQ(cpu_run.steps.size(), gpu_run.steps.size());
  for (size_t i = 0; i < cpu_run.steps.size(); ++i)
    EXPECT_NEAR(gpu_run.steps[i].loss, cpu_run.steps[i].loss, 1e-4 * cpu_run.steps[i].loss) << "step " << i + 1;
  ASSERT_EQ(cpu_run.val_losses.size(), evaluations);
  ASSERT_EQ(gpu_run.val_losses.size(), evaluations);
  for (size_t i = 0; i < evaluations; ++i)
    EXPECT_NEAR(gpu_run.val_losses[i].second, cpu_run.val_losses[i].second, 1e-4 * cpu_run.val_losses[i].second)
        << "evaluation " << i + 1;
}

// 20 training steps on the GPU in fp32 follow the CPU run.
TEST(CudaTraining, TwentyStepsMatchTheCpu) {
  AQ_REQUIRE_GPU();
  const test::TextShardDir data(3000);
  expect_gpu_run_follows_cpu(data.small_model(/*seq=*/63, /*batch=*/5, /*steps=*/20));
}

// The same for a Llama (RMSNorm, SwiGLU, RoPE, 4 query heads over 2 kv heads, untied head): 20 fp32 GPU steps
// follow the CPU run, and with --tp 1 the CUDA GQA path (NKV < NH) is the one exercised.
TEST(CudaTraining, LlamaTwentyStepsMatchTheCpu) {
  AQ_REQUIRE_GPU();
  const test::TextShardDir data(3000);
  expect_gpu_run_follows_cpu(data.small_llama(/*seq=*/63, /*batch=*/5, /*steps=*/20, /*vocab=*/256));
}

// The model's slots through the registry's generic path on the GPU: a Llama with LayerNorm in its norm slot and
// GeGLU (hidden_act gelu_pytorch_tanh), and a GPT-2 with RMSNorm: 20 fp32 GPU steps follow the CPU run.
TEST(CudaTraining, SlotsFilledByBuiltInOperatorsMatchTheCpu) {
  AQ_REQUIRE_GPU();
  const test::TextShardDir data(3000);
  TrainConfig llama = data.small_llama(/*seq=*/63, /*batch=*/5, /*steps=*/20, /*vocab=*/256);
  std::ofstream(llama.model_config) << R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
      "max_position_embeddings": 64, "norm_op": "aq::layernorm", "hidden_act": "gelu_pytorch_tanh"})";
  expect_gpu_run_follows_cpu(llama);
  TrainConfig gpt2 = test::without_shape_flags(data.small_model(/*seq=*/63, /*batch=*/5, /*steps=*/20));
  gpt2.model_config = data.path("gpt2.json");
  std::ofstream(gpt2.model_config) << R"({"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64,
      "vocab_size": 256, "n_positions": 64, "norm_op": "aq::rmsnorm"})";
  expect_gpu_run_follows_cpu(gpt2);
}

// DiLoCo on the GPU (its outer state on the host, the replica's fragments staged through host memory): 10 fp32
// steps with H = 3 and evaluations of θ_global follow the CPU run, losses and validation losses.
TEST(CudaTraining, DilocoFollowsTheCpu) {
  AQ_REQUIRE_GPU();
  const test::TextShardDir data(3000);
  TrainConfig c = data.small_model(/*seq=*/63, /*batch=*/5, /*steps=*/10);
  c.outer = "diloco";
  c.outer_steps = 3;
  c.val_data = data.shard();
  c.eval_every = 5;
  c.eval_batches = 2;
  expect_gpu_run_follows_cpu(c, /*evaluations=*/2);
}

// bf16 DiLoCo on the GPU (the working copy refreshed after each outer merge and swapped for θ_global during an
// evaluation): the loss falls, and a run saved at step 5 and resumed continues as the straight run does.
TEST(CudaTraining, Bf16DilocoResumesLikeTheStraightRun) {
  AQ_REQUIRE_GPU();
  const test::TextShardDir data(3000);
  TrainConfig c = data.small_model(/*seq=*/63, /*batch=*/5, /*steps=*/12);
  c.device = "cuda";
  c.dtype = "bf16";
  c.outer = "diloco";
  c.outer_steps = 3;
  c.val_data = data.shard();
  c.eval_every = 4;
  c.eval_batches = 2;
  const TrainResult straight = train(c, ParallelContext::local());
  ASSERT_EQ(straight.steps.size(), 12u);
  EXPECT_EQ(straight.dtype, "bf16");
  EXPECT_LT(straight.steps.back().loss, straight.steps.front().loss);
  TrainConfig first = c;
  first.save = data.path("ck");
  first.stop_at = 5;
  train(first, ParallelContext::local());
  TrainConfig rest = c;
  rest.resume = data.path("ck");
  const TrainResult resumed = train(rest, ParallelContext::local());
  ASSERT_EQ(resumed.steps.size(), 7u);
  for (size_t i = 0; i < resumed.steps.size(); ++i)
    EXPECT_NEAR(resumed.steps[i].loss, straight.steps[i + 5].loss, 1e-5 * straight.steps[i + 5].loss)
        << "step " << i + 6;
}

TEST(CudaOps, DeviceSelectionExplainsMissingGpus) {
  if (cuda::device_count() > 0) {
    const cuda::DeviceInfo d = cuda::select_device(0, 1);
    EXPECT_FALSE(d.name.empty());
    test::expect_error([] { cuda::select_device(cuda::device_count(), cuda::device_count() + 1); },
                       {"CUDA_VISIBLE_DEVICES", "--map-by"});
  } else {
    test::expect_error([] { cuda::select_device(0, 1); }, {"no CUDA device is visible", "--device cpu"});
  }
}

}  // namespace
}  // namespace aq
