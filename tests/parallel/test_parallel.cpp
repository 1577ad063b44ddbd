// test_parallel.cpp — run under mpirun (CTest starts it with 2 and with 4 ranks).
//   * Backend conformance: every collective on the world, TP and DP groups (MPI, and MPI staged through host
//     memory as GPU buffers use it without NCCL), closed-form expected values
//     (rank r contributes r+1, so a sum is n(n+1)/2), odd sizes, every supported dtype.
//   * Equivalence: for every (tp, dp) layout the world allows, with and without ZeRO-1, 6 steps give the
//     losses and final weights of one process with batch dp·B (losses rel. err < 1e-5, weights < 1e-4).
//   * Data-parallel algorithms (flat, hier, hier with bf16/int8/int4 on the cross-centre hop, with and without error
//     feedback) on one centre, equal centres and unequal centres: closed-form sums at odd sizes, several calls
//     in flight waited for out of order, bit-identical results on every rank; calls carried by a background
//     thread (progress_in_background) complete while the caller makes no MPI call, bit for bit as without it.
//   * Resume across layouts: saved at one layout, resumed at the others and in a single process, the run
//     continues with the single-process losses.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <thread>

#include "parallel/algo/dp_algorithm.h"
#include "parallel/context.h"
#include "parallel/staged_backend.h"
#include "runtime/data.h"
#include "runtime/log.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace aq {
namespace {

ParallelContext* g_ctx = nullptr;

template <typename T>
void check_all_reduce(Backend& g, int64_t n, DType dt) {
  std::vector<T> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>((g.rank() + 1) * (i % 5 + 1));
  g.all_reduce(x.data(), n, dt, {"conformance sum"})->wait();
  const T total = static_cast<T>(g.size() * (g.size() + 1) / 2);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], total * static_cast<T>(i % 5 + 1)) << "element " << i;
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(g.rank() + 1 + i);
  g.all_reduce(x.data(), n, dt, {"conformance max", ReduceOp::Max})->wait();
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], static_cast<T>(g.size() + i));
}

// bf16 reductions (tensor-parallel activations of a bf16 model): small integers are exact in bf16, so the
// closed-form sums must come back exactly. MPI has no bf16 type: the staged backend widens to fp32.
void check_bf16_all_reduce(Backend& g) {
  SCOPED_TRACE(g.describe() + " bf16");
  for (int64_t n : {1, 7, 1001}) {
    std::vector<bf16> x(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) x[i] = float_to_bf16(static_cast<float>((g.rank() + 1) * (i % 5 + 1)));
    g.all_reduce(x.data(), n, DType::BF16, {"conformance bf16 sum"})->wait();
    const float total = static_cast<float>(g.size() * (g.size() + 1) / 2);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(bf16_to_float(x[i]), total * static_cast<float>(i % 5 + 1)) << i;
    for (int64_t i = 0; i < n; ++i) x[i] = float_to_bf16(static_cast<float>(g.rank() + 1 + i % 100));
    g.all_reduce(x.data(), n, DType::BF16, {"conformance bf16 max", ReduceOp::Max})->wait();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(bf16_to_float(x[i]), static_cast<float>(g.size() + i % 100)) << i;
  }
}

void check_group(Backend& g) {
  SCOPED_TRACE(g.describe());
  for (int64_t n : {1, 7, 1001}) {
    check_all_reduce<float>(g, n, DType::F32);
    check_all_reduce<double>(g, n, DType::F64);
    check_all_reduce<int32_t>(g, n, DType::I32);
  }
  const int P = g.size(), r = g.rank();
  const int64_t n = 13;
  // reduce_scatter: block b of rank q holds (q+1)·(b+1); rank r receives Σ_q (q+1)·(r+1).
  std::vector<float> send(static_cast<size_t>(P * n)), recv(static_cast<size_t>(n), -1.0f);
  for (int b = 0; b < P; ++b)
    for (int64_t i = 0; i < n; ++i) send[b * n + i] = static_cast<float>((r + 1) * (b + 1));
  g.reduce_scatter(send.data(), recv.data(), n, DType::F32, {"conformance reduce_scatter"})->wait();
  for (float v : recv) ASSERT_EQ(v, static_cast<float>(P * (P + 1) / 2 * (r + 1)));
  // all_gather: block q holds q+1.
  std::vector<double> mine(static_cast<size_t>(n), r + 1.0), all(static_cast<size_t>(P * n), -1.0);
  g.all_gather(mine.data(), all.data(), n, DType::F64, {"conformance all_gather"})->wait();
  for (int q = 0; q < P; ++q)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(all[q * n + i], q + 1.0);
  // broadcast from the last rank.
  std::vector<int32_t> b(static_cast<size_t>(n), r == P - 1 ? 42 : 0);
  g.broadcast(b.data(), n, DType::I32, P - 1, {"conformance broadcast"})->wait();
  for (int32_t v : b) ASSERT_EQ(v, 42);
  // send/recv around a ring.
  if (P > 1) {
    std::vector<float> out(static_cast<size_t>(n), static_cast<float>(r)), in(static_cast<size_t>(n), -1.0f);
    auto s = g.send(out.data(), n, DType::F32, (r + 1) % P, {"ring send"});
    auto q = g.recv(in.data(), n, DType::F32, (r + P - 1) % P, {"ring recv"});
    q->wait();
    s->wait();
    for (float v : in) ASSERT_EQ(v, static_cast<float>((r + P - 1) % P));
  }
  auto w1 = g.barrier({"conformance barrier"});
  w1->wait();
  EXPECT_TRUE(w1->test());
  auto w2 = g.barrier({"second barrier"});
  EXPECT_GT(w2->seq(), w1->seq());
  w2->wait();
}

TEST(Backend, ConformanceOnEveryGroup) {
  for (int tp : {1, 2}) {
    if (g_ctx->world_size() % tp) continue;
    g_ctx->configure(tp, 60);
    check_group(g_ctx->world());
    check_group(g_ctx->tp_group());
    check_group(g_ctx->dp_group());
    // The host-staged form that carries GPU buffers over MPI (several ranks per GPU, or no NCCL), here with
    // host "device" memory so its copying and in-place conventions are checked on any machine.
    StagedBackend staged_world(g_ctx->world(), Device::CPU), staged_dp(g_ctx->dp_group(), Device::CPU);
    check_group(staged_world);
    check_group(staged_dp);
    check_bf16_all_reduce(staged_world);
    check_bf16_all_reduce(staged_dp);
  }
}

// ---- data-parallel algorithms across centres ----------------------------------------------------------------

// The centre layouts this world allows: a --centres spec and, for "auto", every rank's AQ_CENTRE ("" = unset).
std::vector<std::pair<std::string, std::vector<std::string>>> centre_layouts(int world) {
  std::vector<std::pair<std::string, std::vector<std::string>>> l = {{"auto", {}}};  // one centre
  if (world >= 2) l.push_back({std::to_string(world % 2 ? world : 2), {}});          // equal blocks
  if (world == 3) l.push_back({"auto", {"east", "east", "west"}});                   // 2 + 1
  if (world == 4) l.push_back({"auto", {"east", "west", "east", "east"}});           // 3 + 1, interleaved
  return l;
}

void configure_centres(int tp, const std::string& spec, const std::vector<std::string>& names) {
  if (names.empty())
    unsetenv("AQ_CENTRE");
  else
    setenv("AQ_CENTRE", names[static_cast<size_t>(g_ctx->world_rank())].c_str(), 1);
  g_ctx->configure(tp, 60, spec);
  unsetenv("AQ_CENTRE");
}

// Two centres: equal halves of the world, or with three ranks unequal ones (east: ranks 0-1, west: rank 2).
void configure_two_centres() {
  if (g_ctx->world_size() == 3)
    configure_centres(1, "auto", {"east", "east", "west"});
  else
    configure_centres(1, "2", {});
}

// Every rank must end with the same values: rank 0's are broadcast and compared bit for bit.
void expect_identical_on_every_rank(const std::vector<float>& x, const std::string& what) {
  std::vector<float> root = x;
  g_ctx->world().broadcast(root.data(), static_cast<int64_t>(root.size()), DType::F32, 0, {"compare"})->wait();
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_EQ(std::memcmp(&root[i], &x[i], sizeof(float)), 0) << what << ": element " << i << " " << x[i] << " on rank "
                                                              << g_ctx->world_rank() << ", " << root[i] << " on rank 0";
}

// A rank's index among the ranks of its node that a predicate selects (how a GPU rank finds its GPU when CPU
// ranks share the node): every rank selected gives the local rank and size; the odd world ranks only count
// those of the node, by world rank, and an unselected rank gets -1.
TEST(Context, LocalIndexAmongCountsTheSelectedRanksOfTheNode) {
  const auto all = g_ctx->local_index_among([](int) { return true; });
  EXPECT_EQ(all.first, g_ctx->local_rank());
  EXPECT_EQ(all.second, g_ctx->local_size());
  // The closed form below holds when the whole world is on one node, as the tests' mpirun runs it.
  if (g_ctx->local_size() != g_ctx->world_size()) GTEST_SKIP() << "ranks spread over several nodes";
  const auto odd = g_ctx->local_index_among([](int r) { return r % 2 == 1; });
  EXPECT_EQ(odd.second, g_ctx->world_size() / 2);
  EXPECT_EQ(odd.first, g_ctx->world_rank() % 2 == 1 ? g_ctx->world_rank() / 2 : -1);
}

TEST(DpAlgorithms, ClosedFormSumsOnEveryLayout) {
  const int P = g_ctx->world_size();
  for (const auto& [spec, names] : centre_layouts(P)) {
    configure_centres(1, spec, names);
    const Topology& topo = g_ctx->topology();
    for (const std::string algo : {"flat", "hier"})
      for (WanCodec codec : {WanCodec::None, WanCodec::BF16, WanCodec::Int8, WanCodec::Int4}) {
        if (codec != WanCodec::None && (algo == "flat" || topo.centres() == 1)) continue;
        for (bool ef : {false, true}) {
          if (ef && codec == WanCodec::None) continue;
          const std::string what = str(topo.describe(), " | ", algo, " ", wan_codec_name(codec), ef ? " + EF" : "");
          SCOPED_TRACE(what);
          DpAlgoOptions o;
          o.algo = algo;
          o.codec = codec;
          o.error_feedback = ef;
          const std::vector<int64_t> sizes = {1, 7, 1001, 4099};  // odd sizes, fewer values than ranks too
          int64_t total = 0;
          for (int64_t n : sizes) total += n;
          o.buffer_size = total;
          auto dp = make_dp_algorithm(o, g_ctx->dp_groups());
          for (int round = 0; round < 2; ++round) {  // a second round runs with residuals from the first
            // Every size in flight at once, waited for in reverse: the stages must still match across ranks.
            std::vector<std::vector<float>> bufs;
            std::vector<WorkPtr> works;
            int64_t offset = 0;
            for (int64_t n : sizes) {
              std::vector<float> x(static_cast<size_t>(n));
              for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>((g_ctx->dp_rank() + 1) * (i % 5 + 1));
              bufs.push_back(std::move(x));
            }
            for (size_t k = 0; k < sizes.size(); ++k) {
              works.push_back(dp->all_reduce(bufs[k].data(), sizes[k], offset, {str("sum of ", sizes[k])}));
              offset += sizes[k];
            }
            for (size_t k = works.size(); k-- > 0;) works[k]->wait();
            const double sum = P * (P + 1) / 2.0;
            for (size_t k = 0; k < sizes.size(); ++k) {
              for (int64_t i = 0; i < sizes[k]; ++i) {
                const double want = sum * static_cast<double>(i % 5 + 1);
                // fp32 and bf16 carry these small integers exactly; int8 (int4) rounds each block to 1/127
                // (1/7) of its largest value at most twice (sender, owner), once more per round with carried
                // residuals.
                const double q = codec == WanCodec::Int8 ? 127.0 : codec == WanCodec::Int4 ? 7.0 : 0.0;
                const double tol = q > 0 ? want / q * 3 + 5.0 * P / q : 0.0;
                ASSERT_LE(std::fabs(bufs[k][i] - want), tol) << "size " << sizes[k] << " element " << i;
              }
              expect_identical_on_every_rank(bufs[k], what);
            }
          }
          // Bytes on the wire: nothing with one centre; uncompressed hier sends each shard's C−1 chunks to their
          // owners and each owner's sum back, 2(C−1)·n·4 bytes over the world per call.
          double bytes = dp->take_wan_stats().bytes;
          g_ctx->world().all_reduce(&bytes, 1, DType::F64, {"wan bytes"})->wait();
          if (topo.centres() == 1) {
            EXPECT_EQ(bytes, 0.0);
          } else if (algo == "hier" && codec == WanCodec::None) {
            EXPECT_EQ(bytes, 2.0 * 8 * (topo.centres() - 1) * static_cast<double>(total));  // two rounds
          } else if (algo == "hier") {
            EXPECT_LT(bytes, 2.0 * 8 * (topo.centres() - 1) * static_cast<double>(total) /
                                 (codec == WanCodec::Int4 ? 5.0 : codec == WanCodec::Int8 ? 3.0 : 1.9));
          }
        }
      }
  }
}

TEST(DpAlgorithms, ZeroReduceScatterAndAllGather) {
  const int P = g_ctx->world_size();
  for (const auto& [spec, names] : centre_layouts(P)) {
    configure_centres(1, spec, names);
    const Topology& topo = g_ctx->topology();
    if (!topo.uniform_blocks()) continue;  // ZeRO-1 with hier needs equal, contiguous centres
    for (const std::string algo : {"flat", "hier"})
      for (WanCodec codec : {WanCodec::None, WanCodec::Int8, WanCodec::Int4}) {
        if (codec != WanCodec::None && (algo == "flat" || topo.centres() == 1)) continue;
        SCOPED_TRACE(str(topo.describe(), " | ", algo, " ", wan_codec_name(codec)));
        DpAlgoOptions o;
        o.algo = algo;
        o.codec = codec;
        o.error_feedback = codec != WanCodec::None;
        const int64_t L = 37;  // odd slice
        o.buffer_size = P * L;
        auto dp = make_dp_algorithm(o, g_ctx->dp_groups());
        // reduce_scatter: element k of slice d on rank r is (r+1)·(d+1) + k%3; rank d receives Σ_r of slice d.
        const int me = g_ctx->dp_rank();
        std::vector<float> send(static_cast<size_t>(P * L)), recv(static_cast<size_t>(L), -1.0f);
        for (int d = 0; d < P; ++d)
          for (int64_t k = 0; k < L; ++k) send[d * L + k] = static_cast<float>((me + 1) * (d + 1) + k % 3);
        dp->reduce_scatter(send.data(), recv.data(), L, {"conformance zero reduce-scatter"})->wait();
        for (int64_t k = 0; k < L; ++k) {
          const double want = P * (P + 1) / 2.0 * (me + 1) + P * (k % 3);
          const double q = codec == WanCodec::Int8 ? 127.0 : codec == WanCodec::Int4 ? 7.0 : 0.0;
          const double tol = q > 0 ? want / q * 2 : 0.0;
          ASSERT_LE(std::fabs(recv[k] - want), tol) << "element " << k;
        }
        // all_gather in place, fp32 and bf16: slice d holds d+1 (+ k%2 for bf16 exactness).
        std::vector<float> all(static_cast<size_t>(P * L), -1.0f);
        for (int64_t k = 0; k < L; ++k) all[me * L + k] = static_cast<float>(me + 1);
        dp->all_gather(all.data() + me * L, all.data(), L, DType::F32, {"conformance zero all-gather"})->wait();
        for (int d = 0; d < P; ++d)
          for (int64_t k = 0; k < L; ++k) ASSERT_EQ(all[d * L + k], d + 1.0f) << "slice " << d;
        std::vector<bf16> half(static_cast<size_t>(P * L), float_to_bf16(-1.0f));
        for (int64_t k = 0; k < L; ++k) half[me * L + k] = float_to_bf16(static_cast<float>(me + 1 + k % 2));
        dp->all_gather(half.data() + me * L, half.data(), L, DType::BF16, {"conformance zero all-gather bf16"})->wait();
        for (int d = 0; d < P; ++d)
          for (int64_t k = 0; k < L; ++k) ASSERT_EQ(bf16_to_float(half[d * L + k]), d + 1.0f + k % 2) << "slice " << d;
      }
  }
}

TEST(DpAlgorithms, ErrorFeedbackLosesNothingAcrossRanks) {
  // Fixed inputs x_r on every rank, R rounds of a compressed hierarchical all-reduce: whatever the quantisers
  // dropped sits in some rank's residual at that position, so Σ_rounds output + Σ_ranks residual = R·Σ_ranks x.
  const int P = g_ctx->world_size();
  for (const auto& [spec, names] : centre_layouts(P)) {
    configure_centres(1, spec, names);
    const Topology& topo = g_ctx->topology();
    if (topo.centres() == 1) continue;
    for (WanCodec codec : {WanCodec::BF16, WanCodec::Int8, WanCodec::Int4}) {
      SCOPED_TRACE(str(topo.describe(), " | ", wan_codec_name(codec)));
      const int64_t n = 3001;
      DpAlgoOptions o;
      o.algo = "hier";
      o.codec = codec;
      o.error_feedback = true;
      o.buffer_size = n;
      auto dp = make_dp_algorithm(o, g_ctx->dp_groups());
      std::vector<float> x =
          test::randn<float>(static_cast<size_t>(n), 11 + static_cast<uint64_t>(g_ctx->world_rank()), 1e-2);
      std::vector<double> outputs(static_cast<size_t>(n), 0.0), want(x.begin(), x.end());
      const int R = 5;
      for (int round = 0; round < R; ++round) {
        std::vector<float> y = x;
        dp->all_reduce(y.data(), n, 0, {"error feedback round"})->wait();
        for (int64_t i = 0; i < n; ++i) outputs[i] += y[i];
      }
      std::vector<float> res;
      ASSERT_TRUE(dp->residuals(res));
      std::vector<double> res_sum(res.begin(), res.end());
      g_ctx->world().all_reduce(res_sum.data(), n, DType::F64, {"residual sum"})->wait();
      g_ctx->world().all_reduce(want.data(), n, DType::F64, {"input sum"})->wait();
      double worst = 0, scale = 0;
      for (int64_t i = 0; i < n; ++i) {
        worst = std::max(worst, std::fabs(outputs[i] + res_sum[i] - R * want[i]));
        scale = std::max(scale, std::fabs(R * want[i]));
      }
      EXPECT_LT(worst, 1e-5 * scale) << "largest |R·Σx| " << scale;
      // and compression did drop something (the test would otherwise prove nothing)
      double dropped = 0;
      for (double r : res_sum) dropped = std::max(dropped, std::fabs(r));
      EXPECT_GT(dropped, 0.0);
    }
  }
}

TEST(DpAlgorithms, HierOnBlockingStagedGroups) {
  // GPU buffers without NCCL go through StagedBackend, whose collectives block until done. With several
  // buckets in flight and unequal centres (a rank without a shard goes straight from its reduce-scatter to its
  // all-gather), any difference between ranks in the order of intra-centre calls would deadlock here.
  const int P = g_ctx->world_size();
  for (const auto& [spec, names] : centre_layouts(P)) {
    configure_centres(1, spec, names);
    SCOPED_TRACE(g_ctx->topology().describe());
    DpGroups g = g_ctx->dp_groups();
    StagedBackend rs(*g.intra_rs, Device::CPU), ag(*g.intra_ag, Device::CPU);
    g.intra_rs = &rs;
    g.intra_ag = &ag;
    DpAlgoOptions o;
    o.algo = "hier";
    o.codec = g_ctx->topology().centres() > 1 ? WanCodec::Int8 : WanCodec::None;
    o.buffer_size = 6 * 777;
    auto dp = make_dp_algorithm(o, g);
    std::vector<std::vector<float>> bufs(6, std::vector<float>(777, static_cast<float>(g_ctx->dp_rank() + 1)));
    std::vector<WorkPtr> works;
    for (int k = 0; k < 6; ++k) works.push_back(dp->all_reduce(bufs[k].data(), 777, k * 777, {str("staged ", k)}));
    for (int k = 6; k-- > 0;) works[k]->wait();
    const float want = P * (P + 1) / 2.0f;
    for (const auto& b : bufs)
      for (float v : b) ASSERT_NEAR(v, want, o.codec == WanCodec::Int8 ? want / 40 : 0.0f);
  }
}

TEST(DpAlgorithms, DifferentCallsInFlightTogether) {
  // An all-reduce and a ZeRO all-gather in flight at once (they use the cross-centre and intra-centre groups in
  // different stages), waited for in reverse: the stage ordering keeps every communicator's calls matched.
  const int P = g_ctx->world_size();
  for (const auto& [spec, names] : centre_layouts(P)) {
    configure_centres(1, spec, names);
    if (!g_ctx->topology().uniform_blocks()) continue;
    SCOPED_TRACE(g_ctx->topology().describe());
    DpAlgoOptions o;
    o.algo = "hier";
    o.buffer_size = 1001;
    auto dp = make_dp_algorithm(o, g_ctx->dp_groups());
    std::vector<float> a(1001, static_cast<float>(g_ctx->dp_rank() + 1));
    const int64_t L = 13;
    std::vector<float> all(static_cast<size_t>(P * L), -1.0f);
    for (int64_t k = 0; k < L; ++k) all[g_ctx->dp_rank() * L + k] = static_cast<float>(g_ctx->dp_rank());
    WorkPtr w1 = dp->all_reduce(a.data(), 1001, 0, {"mixed: all-reduce"});
    WorkPtr w2 = dp->all_gather(all.data() + g_ctx->dp_rank() * L, all.data(), L, DType::F32, {"mixed: all-gather"});
    std::vector<float> b(7, 1.0f);
    WorkPtr w3 = dp->all_reduce(b.data(), 7, 0, {"mixed: second all-reduce"});
    w3->wait();
    w2->wait();
    w1->wait();
    for (int d = 0; d < P; ++d)
      for (int64_t k = 0; k < L; ++k) ASSERT_EQ(all[d * L + k], static_cast<float>(d));
    const float s = P * (P + 1) / 2.0f;
    for (int64_t i = 0; i < 1001; ++i) ASSERT_EQ(a[i], s) << i;
    for (float v : b) ASSERT_EQ(v, static_cast<float>(P));
  }
}

TEST(DpAlgorithms, BackgroundProgressFinishesCallsAloneAndChangesNoBit) {
  // progress_in_background: calls launched and then left alone (this thread makes no MPI call until they are
  // done) complete, carried by the background thread; in a second round this thread runs collectives of its
  // own on the world group meanwhile (two threads in MPI at once, both posting to the job monitor); and the
  // calls end bit for bit where the same calls end without the thread, int8 with error feedback included (the
  // second round carries the first one's residuals). 65 537 values pass the transports' eager limits.
  ASSERT_TRUE(g_ctx->threads_multiple()) << "the tests' MPI grants no MPI_THREAD_MULTIPLE";
  const int P = g_ctx->world_size();
  for (const auto& [spec, names] : centre_layouts(P)) {
    configure_centres(1, spec, names);
    SCOPED_TRACE(g_ctx->topology().describe());
    DpAlgoOptions o;
    o.algo = "hier";
    o.codec = g_ctx->topology().centres() > 1 ? WanCodec::Int8 : WanCodec::None;
    o.error_feedback = o.codec != WanCodec::None;
    const std::vector<int64_t> sizes = {3, 1001, 65537};
    o.buffer_size = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
    std::vector<std::vector<float>> ends[2];
    for (int background = 0; background < 2; ++background) {
      std::unique_ptr<DpAlgorithm> dp = make_dp_algorithm(o, g_ctx->dp_groups());
      if (background) dp = progress_in_background(std::move(dp));
      for (int round = 0; round < 2; ++round) {
        std::vector<std::vector<float>> bufs;
        std::vector<WorkPtr> works;
        int64_t offset = 0;
        for (int64_t n : sizes) {
          std::vector<float> x(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i) x[i] = std::sin(0.37f * i + g_ctx->dp_rank() + 0.11f * round) * (i % 7 + 1);
          bufs.push_back(std::move(x));
        }
        for (size_t k = 0; k < sizes.size(); ++k) {
          works.push_back(dp->all_reduce(bufs[k].data(), sizes[k], offset, {str("background ", sizes[k])}));
          offset += sizes[k];
        }
        if (background && round == 1) {
          // The same number of world all-reduces on every rank, whenever the background calls complete.
          for (int k = 0; k < 20; ++k) {
            std::vector<float> mine(4099, static_cast<float>(g_ctx->world_rank() + 1));
            g_ctx->world().all_reduce(mine.data(), 4099, DType::F32, {"beside the background"})->wait();
            ASSERT_EQ(mine[4098], P * (P + 1) / 2.0f);
          }
        }
        if (background) {
          // Left alone: only the background thread calls MPI now. 60 s is a hang, not a slow machine.
          const int64_t want = static_cast<int64_t>(sizes.size()) * (round + 1);
          for (int ms = 0; ms < 60000 && dp->completed_in_background() < want; ++ms)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          ASSERT_EQ(dp->completed_in_background(), want) << "calls left alone did not complete in 60 s";
        } else {
          EXPECT_EQ(dp->completed_in_background(), 0);
        }
        for (const WorkPtr& w : works) w->wait();
        for (auto& b : bufs) ends[background].push_back(std::move(b));
      }
    }
    ASSERT_EQ(ends[0].size(), ends[1].size());
    for (size_t k = 0; k < ends[0].size(); ++k)
      ASSERT_EQ(std::memcmp(ends[0][k].data(), ends[1][k].data(), ends[0][k].size() * sizeof(float)), 0)
          << "call " << k << " differs with the background thread";
  }
}

// ---- training equivalence ---------------------------------------------------------------------------------

class Layouts : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One folder for the job: rank 0 names it, everyone learns the name.
    int32_t pid = static_cast<int32_t>(::getpid());
    g_ctx->configure(1, 60);
    g_ctx->world().broadcast(&pid, 1, DType::I32, 0, {"temp dir"})->wait();
    dir_ = str("/tmp/aq-test-parallel-", pid);
    if (g_ctx->world_rank() == 0) {
      std::filesystem::create_directories(dir_);
      std::string text;
      for (int i = 0; i < 4000; ++i) text += str("line ", i, ": the quick brown fox jumps over the lazy dog. ");
      write_shard(dir_ + "/train.bin", std::vector<uint16_t>(text.begin(), text.end()));
    }
    g_ctx->world().barrier({"temp dir ready"})->wait();
  }
  static void TearDownTestSuite() {
    g_ctx->world().barrier({"tests done"})->wait();
    if (g_ctx->world_rank() == 0) std::filesystem::remove_all(dir_);
  }

  // A config whose global batch is 4 sequences whatever the layout.
  static TrainConfig config(int dp) {
    TrainConfig c;
    c.overwrite = true;  // the tests save to the same paths run after run
    c.layers = 2;
    c.heads = 4;
    c.dim = 24;
    c.vocab = 259;  // not a multiple of tp = 2 or 4: exercises the padded vocabulary-parallel path
    c.max_seq = 16;
    c.seq = 15;
    c.batch = 4 / dp;
    c.steps = 6;
    c.schedule.lr = 3e-3;
    c.schedule.kind = "cosine";
    c.schedule.warmup = 2;
    c.data = dir_ + "/train.bin";
    c.quiet = true;
    c.threads = 1;
    c.bucket_mb = 0.01;  // several buckets even for this small model
    c.device = "cpu";
    return c;
  }
  // The single-process reference (every rank computes it for itself).
  static TrainResult reference(const std::string& save) {
    TrainConfig c = config(1);
    c.save = save;
    return train(c, ParallelContext::local());
  }

  static void expect_same_losses(const TrainResult& got, const TrainResult& want, size_t skip, const char* what) {
    ASSERT_EQ(got.steps.size() + skip, want.steps.size()) << what;
    for (size_t i = 0; i < got.steps.size(); ++i) {
      const double a = got.steps[i].loss, b = want.steps[i + skip].loss;
      EXPECT_LT(std::fabs(a - b) / b, 1e-5) << what << ": step " << got.steps[i].step << " loss " << a << " vs " << b;
    }
  }
  static void expect_same_weights(const std::string& got, const std::string& want, const char* what) {
    if (g_ctx->world_rank() != 0) return;
    // 3e-4, not 1e-4: AdamW normalises each element's step, so elements whose gradient is near zero turn
    // summation-order differences (TP, DP, hierarchical reductions) into relative step differences; with
    // the AVX-512 (Cooperlake) kernels a TP run's c_proj.bias ends 1.1-1.5e-4 from one process's.
    for (const auto& [name, err] : test::checkpoint_rel_errors(got, want))
      EXPECT_LT(err, 3e-4) << what << ": tensor " << name;
  }

  // Trains make(1) in one process (the reference: its save's path and its result are returned), then make(dp) under
  // every tp in `tps` that divides the world, with and without ZeRO-1: losses and weights must match it.
  static std::pair<std::string, TrainResult> expect_every_layout_matches_one_process(
      const std::function<TrainConfig(int)>& make, std::initializer_list<int> tps, const std::string& name) {
    TrainConfig one = make(1);
    one.save = str(dir_, "/", name, "_ref_", g_ctx->world_rank());
    const TrainResult want = train(one, ParallelContext::local());
    for (int tp : tps) {
      if (g_ctx->world_size() % tp) continue;
      for (int zero : {0, 1}) {
        const int dp = g_ctx->world_size() / tp;
        const std::string what = str(name, " tp=", tp, " dp=", dp, " zero=", zero);
        g_ctx->configure(tp, 60);
        TrainConfig c = make(dp);
        c.zero = zero;
        c.save = str(dir_, "/", name, "_tp", tp, "_zero", zero);
        const TrainResult got = train(c, *g_ctx);
        expect_same_losses(got, want, 0, what.c_str());
        expect_same_weights(c.save, one.save, what.c_str());
      }
    }
    return {one.save, want};
  }

  static inline std::string dir_;
};

TEST_F(Layouts, LlamaEveryLayoutMatchesOneProcess) {
  // A Llama (RMSNorm, SwiGLU, RoPE, 4 query heads over 2 kv heads, untied head, V 259) under tp 1 and 2 — each TP
  // rank holding 2 query heads with the kv head they read — and dp with and without ZeRO-1, against one process.
  const std::string spec = str(dir_, "/llama_", g_ctx->world_rank(), ".json");
  std::ofstream(spec) << R"({"model_type": "llama", "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 259, "max_position_embeddings": 16,
      "rms_norm_eps": 1e-5, "rope_theta": 500.0, "tie_word_embeddings": false})";
  expect_every_layout_matches_one_process(
      [&](int dp) {
        TrainConfig c = test::without_shape_flags(config(dp));
        c.model_config = spec;
        return c;
      },
      {1, 2}, "llama");
}

TEST_F(Layouts, EveryLayoutMatchesOneProcess) {
  const auto [ref_path, want] = expect_every_layout_matches_one_process(config, {1, 2, 4}, "gpt2");
  // Gradient accumulation under data parallelism: 2 micro-batches of half the batch, buckets started only in
  // the last one's backward.
  if (g_ctx->world_size() == 2) {
    g_ctx->configure(1, 60);
    TrainConfig c = config(2);
    c.batch = 1;
    c.grad_accum = 2;
    c.save = str(dir_, "/accum");
    const TrainResult got = train(c, *g_ctx);
    expect_same_losses(got, want, 0, "dp=2 with 2 micro-batches");
    expect_same_weights(c.save, ref_path, "dp=2 with 2 micro-batches");
  }
  // Two centres: the hierarchical algorithm (the default there), uncompressed, inside-centre TP of 1 and 2,
  // with and without ZeRO-1.
  for (int tp : {1, 2})
    for (int zero : {0, 1}) {
      if (g_ctx->world_size() % (2 * tp)) continue;
      const int dp = g_ctx->world_size() / tp;
      const std::string what = str("2 centres, tp=", tp, " dp=", dp, " zero=", zero, " hier");
      configure_centres(tp, "2", {});
      TrainConfig c = config(dp);
      c.zero = zero;
      c.save = str(dir_, "/centres_tp", tp, "_zero", zero);
      const TrainResult got = train(c, *g_ctx);
      expect_same_losses(got, want, 0, what.c_str());
      expect_same_weights(c.save, ref_path, what.c_str());
    }
}

TEST_F(Layouts, ResumeAcrossLayouts) {
  const TrainResult want = reference("");
  // Save after 3 steps at the widest tensor-parallel layout with ZeRO-1 …
  const int tp0 = g_ctx->world_size() >= 4 ? 2 : g_ctx->world_size();
  g_ctx->configure(tp0, 60);
  TrainConfig first = config(g_ctx->world_size() / tp0);
  first.steps = 3;
  first.zero = 1;
  first.save = dir_ + "/resume_from";
  train(first, *g_ctx);
  // … and continue at every other layout, and in one process.
  for (int tp : {1, 2, 4}) {
    if (g_ctx->world_size() % tp) continue;
    g_ctx->configure(tp, 60);
    TrainConfig rest = config(g_ctx->world_size() / tp);
    rest.resume = first.save;
    const TrainResult got = train(rest, *g_ctx);
    expect_same_losses(got, want, 3, str("resume at tp=", tp, " dp=", g_ctx->world_size() / tp).c_str());
  }
  TrainConfig single = config(1);
  single.resume = first.save;
  expect_same_losses(train(single, ParallelContext::local()), want, 3, "resume in one process");
}

TEST_F(Layouts, ResumeWithErrorFeedbackIsBitIdentical) {
  // Two centres, int8 on the cross-centre hop with error feedback: a run saved at step 3 and resumed must
  // continue exactly as the uninterrupted run, so the residuals have to travel through the checkpoint.
  if (g_ctx->world_size() % 2) return;
  for (int zero : {0, 1}) {
    const std::string what = str("int8 + error feedback, zero=", zero);
    configure_centres(1, "2", {});
    TrainConfig c = config(g_ctx->world_size());
    c.zero = zero;
    c.wan_compress = "int8";
    c.schedule.kind = "constant";  // the cut lowers --steps, which would reshape a cosine schedule
    const TrainResult whole = train(c, *g_ctx);
    TrainConfig first = c;
    first.steps = 3;
    first.save = str(dir_, "/ef_zero", zero);
    train(first, *g_ctx);
    if (g_ctx->world_rank() == 0) {
      SafeTensorsReader state(test::saved_state(first.save));
      EXPECT_TRUE(state.metadata().count("ef_centres")) << what;
      EXPECT_TRUE(state.entries().count("ef_residual.1.wte.weight")) << what;
    }
    TrainConfig rest = c;
    rest.resume = first.save;
    const TrainResult got = train(rest, *g_ctx);
    ASSERT_EQ(got.steps.size(), 3u) << what;
    for (size_t i = 0; i < 3; ++i)
      EXPECT_EQ(got.steps[i].loss, whole.steps[i + 3].loss) << what << ": step " << got.steps[i].step;
  }
}

TEST_F(Layouts, DiLoCoWithOneCentreAndPlainAveragingIsDataParallel) {
  // One centre, H = 1, outer lr 1, momentum 0: every step's outer update replaces θ_global by the replica, so
  // the run is synchronous data parallelism (up to the rounding of θ_g − (θ_g − θ)).
  const std::string ref_path = str(dir_, "/diloco_ref_", g_ctx->world_rank());
  const TrainResult want = reference(ref_path);
  g_ctx->configure(1, 60);
  TrainConfig c = config(g_ctx->world_size());
  c.outer = "diloco";
  c.outer_steps = 1;
  c.outer_lr = 1.0;
  c.outer_momentum = 0.0;
  c.save = str(dir_, "/diloco_dp");
  const TrainResult got = train(c, *g_ctx);
  for (const StepRecord& r : got.steps) EXPECT_TRUE(r.outer_sync) << "step " << r.step;
  expect_same_losses(got, want, 0, "DiLoCo H=1 lr=1 mu=0, one centre");
  expect_same_weights(c.save, ref_path, "DiLoCo H=1 lr=1 mu=0, one centre");
}

TEST_F(Layouts, DiLoCoAcrossCentresSyncsEveryHStepsAndResumesMidPhase) {
  // Two centres (equal, or 2 + 1 with three ranks, where ZeRO-1 runs inside the larger centre only), with and
  // without ZeRO-1.
  for (int zero : {0, 1}) {
    configure_two_centres();
    SCOPED_TRACE(str(g_ctx->topology().describe(), " zero=", zero));
    TrainConfig c = config(g_ctx->world_size());
    c.zero = zero;
    c.outer = "diloco";
    c.outer_steps = 4;
    c.wan_compress = "int8";
    // The run is cut by lowering --steps, which would reshape a cosine schedule after the cut: keep it constant.
    c.schedule.kind = "constant";
    c.save = str(dir_, "/diloco_whole");
    const TrainResult whole = train(c, *g_ctx);
    c.save.clear();
    // Only outer syncs cross centres: wan_bytes on steps 4 (and only there, of 6), nothing in between; a rank
    // of the larger centre that carries no cross-centre shard sends nothing at all.
    const Topology& topo = g_ctx->topology();
    const bool carrier = topo.intra_index[static_cast<size_t>(g_ctx->world_rank())] < topo.cross_shards();
    for (const StepRecord& r : whole.steps) {
      EXPECT_EQ(r.outer_sync, r.step % 4 == 0) << "step " << r.step;
      if (r.step % 4 == 0 && carrier)
        EXPECT_GT(r.wan_bytes, 0.0) << "step " << r.step;
      else
        EXPECT_EQ(r.wan_bytes, 0.0) << "step " << r.step;
    }
    // Saved in the middle of an inner phase (step 3) and after the sync (step 5), resumed: bit-identical.
    for (int64_t at : {3, 5}) {
      TrainConfig first = c;
      first.steps = at;
      first.save = str(dir_, "/diloco_", at);
      train(first, *g_ctx);
      if (g_ctx->world_rank() == 0) {
        SafeTensorsReader state(test::saved_state(first.save));
        EXPECT_TRUE(state.metadata().count("diloco_centres"));
        EXPECT_TRUE(state.entries().count("centre.1.param.wte.weight"));
        EXPECT_TRUE(state.entries().count("outer_momentum.wte.weight"));
      }
      TrainConfig rest = c;
      rest.resume = first.save;
      const TrainResult got = train(rest, *g_ctx);
      ASSERT_EQ(got.steps.size(), static_cast<size_t>(6 - at));
      for (size_t i = 0; i < got.steps.size(); ++i)
        EXPECT_EQ(got.steps[i].loss, whole.steps[i + at].loss) << "resumed at " << at << ", step " << got.steps[i].step;
    }
  }
}

TEST_F(Layouts, StreamingDiLoCoWithOverlapResumesWithAnExchangeInFlight) {
  // H = 4, 2 fragments (synced at steps ≡ 2 and ≡ 0 mod 4), overlap τ = 1: fragment 0's exchange starts after
  // step 2 and is merged after step 3. Saved at step 2, with that exchange in flight, the resumed run must
  // continue bit for bit.
  if (g_ctx->world_size() % 2) return;
  configure_centres(1, "2", {});
  TrainConfig c = config(g_ctx->world_size());
  c.outer = "diloco";
  c.outer_steps = 4;
  c.outer_fragments = 2;
  c.outer_overlap = 1;
  c.wan_compress = "int8";
  c.schedule.kind = "constant";
  const TrainResult whole = train(c, *g_ctx);
  for (const StepRecord& r : whole.steps) {
    EXPECT_EQ(r.outer_launched, r.step % 2 == 0 ? 1 : 0) << "step " << r.step;
    EXPECT_EQ(r.outer_merged, r.step % 2 == 1 && r.step > 1 ? 1 : 0) << "step " << r.step;
    // Bytes leave while the exchange runs: the launch step (and the steps it runs behind).
    if (r.step == 1) {
      EXPECT_EQ(r.wan_bytes, 0.0);
    }
  }
  double bytes = 0;
  for (const StepRecord& r : whole.steps) bytes += r.wan_bytes;
  EXPECT_GT(bytes, 0.0);
  TrainConfig first = c;
  first.steps = 2;
  first.save = str(dir_, "/streaming");
  train(first, *g_ctx);
  if (g_ctx->world_rank() == 0) {
    SafeTensorsReader state(test::saved_state(first.save));
    // Fragment 0, merged at step 3, its sum scaled by 1 / DP ranks at the merge.
    EXPECT_EQ(state.metadata().at("outer_pending"), str("[[0,3,", 1.0 / g_ctx->dp(), "]]"));
  }
  // An exchange in flight belongs to a fragment of the saved run: another --outer-fragments is refused.
  TrainConfig other = c;
  other.resume = first.save;
  other.outer_fragments = 3;
  test::expect_error([&] { train(other, *g_ctx); },
                     {"was saved with --outer-fragments 2", "resume with --outer-fragments 2"});
  TrainConfig rest = c;
  rest.resume = first.save;
  const TrainResult got = train(rest, *g_ctx);
  ASSERT_EQ(got.steps.size(), 4u);
  for (size_t i = 0; i < got.steps.size(); ++i)
    EXPECT_EQ(got.steps[i].loss, whole.steps[i + 2].loss) << "step " << got.steps[i].step;
}

TEST_F(Layouts, PacedDiLoCoTrainsEachCentresShareAndResumesMidPhase) {
  // Time-based inner phases with a fixed pace: centre 0 trains all 4 steps of a window, centre 1 two (steps
  // ≡ 2, 0 mod 4), and the outer average weighs them by the steps they trained. Equal centres, or 2 + 1 ranks.
  const int P = g_ctx->world_size();
  if (P < 2) return;
  configure_two_centres();
  SCOPED_TRACE(g_ctx->topology().describe());
  TrainConfig c = config(P);  // batch 4 / P: 1 per rank with 3 ranks
  c.outer = "diloco";
  c.outer_steps = 4;
  c.outer_fragments = 2;
  c.wan_compress = "int8";
  c.schedule.kind = "constant";
  c.steps = 8;
  // The same pace for everyone (4,4) is plain DiLoCo, up to the rounding of the weights (uncompressed: int8
  // would requantise the scaled change).
  c.wan_compress = "none";
  const TrainResult plain = train(c, *g_ctx);
  c.balance = "4,4";
  expect_same_losses(train(c, *g_ctx), plain, 0, "--balance 4,4 against no pacing");
  c.wan_compress = "int8";
  c.balance = "4,2";
  const TrainResult whole = train(c, *g_ctx);
  const bool slow = g_ctx->centre() == 1;
  for (const StepRecord& r : whole.steps) {
    EXPECT_EQ(r.idle, slow && r.step % 2 == 1) << "step " << r.step;
    EXPECT_EQ(r.micro_batches, r.idle ? 0 : 1) << "step " << r.step;
  }
  // Saved mid-window (step 3, after an idle step of centre 1), resumed: every trained step bit-identical.
  TrainConfig first = c;
  first.steps = 3;
  first.save = str(dir_, "/paced_3");
  train(first, *g_ctx);
  if (g_ctx->world_rank() == 0) {
    SafeTensorsReader state(test::saved_state(first.save));
    EXPECT_EQ(state.metadata().at("centre_updates"), "[3,1]");
    EXPECT_TRUE(state.metadata().count("outer_window_active"));
  }
  TrainConfig rest = c;
  rest.resume = first.save;
  const TrainResult got = train(rest, *g_ctx);
  ASSERT_EQ(got.steps.size(), 5u);
  for (size_t i = 0; i < got.steps.size(); ++i) {
    EXPECT_EQ(got.steps[i].idle, whole.steps[i + 3].idle);
    if (!got.steps[i].idle) {
      EXPECT_EQ(got.steps[i].loss, whole.steps[i + 3].loss) << "step " << got.steps[i].step;
    }
  }
  // A pace that does not fit the window is refused with the range.
  c.balance = "4,5";
  test::expect_error([&] { train(c, *g_ctx); },
                     {"inner steps per window of --outer-steps 4", "each in [1, 4]", "(got \"4,5\")"});
}

TEST_F(Layouts, ZeroWithHierNeedsEqualContiguousCentres) {
  // Interleaved, unequal centres (3 + 1): ZeRO-1's hierarchical reduce-scatter cannot slice them, so an explicit
  // --dp-algo hier with --zero 1 is refused with the fix, and auto falls back to flat.
  if (g_ctx->world_size() != 4) return;
  configure_centres(1, "auto", {"east", "west", "east", "east"});
  TrainConfig c = config(4);
  c.zero = 1;
  c.dp_algo = "hier";
  test::expect_error([&] { train(c, *g_ctx); },
                     {"--zero 1 with --dp-algo hier needs centres of equal size", "or use --dp-algo flat"});
  c.dp_algo = "auto";
  c.steps = 2;
  EXPECT_EQ(train(c, *g_ctx).steps.size(), 2u);
}

TEST_F(Layouts, WorkSplitBySpeedIsOneProcessWithTheGlobalBatch) {
  // --balance deals a step's micro-batches out unevenly (by centre speed); rank d reads its K_d·B sequences
  // right after those of ranks < d, and the sums are divided by the step's M micro-batches, so the run is one
  // process with batch M·B whatever the split: an explicit 3,1 split, and auto with whatever it measures.
  if (g_ctx->world_size() != 2) return;
  configure_centres(1, "2", {});
  TrainConfig ref = config(1);
  const TrainResult want = train(ref, ParallelContext::local());  // batch 4 = M·B below
  TrainConfig fixed = config(2);
  fixed.batch = 1;
  fixed.balance = "3,1";
  expect_same_losses(train(fixed, *g_ctx), want, 0, "--balance 3,1");
  TrainConfig automatic = config(2);
  automatic.batch = 1;
  automatic.grad_accum = 2;  // M = 4
  automatic.balance = "auto";
  automatic.balance_steps = 2;
  expect_same_losses(train(automatic, *g_ctx), want, 0, "--balance auto");
  // A reproducible uneven measurement (centre 1 three times slower): auto deals 3,1.
  setenv("AQ_BALANCE_TEST_MS", "1,3", 1);
  expect_same_losses(train(automatic, *g_ctx), want, 0, "--balance auto, measured 1:3");
  // Saved after the split was measured and resumed: the split and the data order come back.
  automatic.steps = 4;
  automatic.schedule.kind = "constant";
  TrainConfig whole = automatic;
  whole.steps = 6;
  const TrainResult w = train(whole, *g_ctx);
  automatic.save = dir_ + "/balance";
  train(automatic, *g_ctx);
  TrainConfig rest = whole;
  rest.resume = automatic.save;
  const TrainResult got = train(rest, *g_ctx);
  ASSERT_EQ(got.steps.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(got.steps[i].loss, w.steps[i + 4].loss) << "step " << got.steps[i].step;
  if (g_ctx->world_rank() == 0) {
    SafeTensorsReader state(test::saved_state(automatic.save));
    EXPECT_EQ(state.metadata().at("balance_micro"), "[3,1]");
  }
  // Saved before the split was measured: nothing is saved, and the resumed run measures.
  automatic.steps = 1;
  automatic.save = dir_ + "/balance_early";
  train(automatic, *g_ctx);
  if (g_ctx->world_rank() == 0) {
    SafeTensorsReader state(test::saved_state(automatic.save));
    EXPECT_EQ(state.metadata().count("balance_micro"), 0u);
  }
  rest.resume = automatic.save;
  const TrainResult late = train(rest, *g_ctx);
  for (size_t i = 0; i < late.steps.size(); ++i)
    EXPECT_EQ(late.steps[i].loss, w.steps[i + 1].loss) << "step " << late.steps[i].step;
  unsetenv("AQ_BALANCE_TEST_MS");
}

}  // namespace
}  // namespace aq

int main(int argc, char** argv) {
  aq::g_ctx = &aq::ParallelContext::init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // One rank prints the gtest report (AQ_TEST_ALL_RANKS=1: every rank); every rank's result decides the exit.
  if (aq::g_ctx->world_rank() != 0 && !std::getenv("AQ_TEST_ALL_RANKS")) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  // A failure on any rank fails the run.
  int32_t worst = rc;
  aq::g_ctx->world().all_reduce(&worst, 1, aq::DType::I32, {"test result", aq::ReduceOp::Max})->wait();
  aq::g_ctx->finalize();
  return worst;
}
