// test_nccl.cpp — NCCL backend conformance on GPU buffers, under mpirun with one rank per GPU: every collective
// with closed-form expected values (rank r contributes r+1) at odd sizes, and Work handles that complete.
// Exits 77 (CTest: skipped) with the reason when no GPU is visible or there are fewer GPUs than local ranks.
#include <cuda_runtime.h>
#include <mpi.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "parallel/context.h"
#include "parallel/nccl_backend.h"
#include "runtime/cuda/device.h"

namespace {

int failures = 0;

#define EXPECT_TRUE_MSG(cond, ...)                        \
  do {                                                     \
    if (!(cond)) {                                         \
      ++failures;                                          \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                   \
      std::fprintf(stderr, "\n");                          \
    }                                                      \
  } while (0)

template <typename T>
std::vector<T> roundtrip(const std::vector<T>& host, const std::function<void(T*)>& op) {
  T* dev = nullptr;
  cudaMalloc(&dev, host.size() * sizeof(T));
  cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  op(dev);
  std::vector<T> out(host.size());
  cudaDeviceSynchronize();
  cudaMemcpy(out.data(), dev, host.size() * sizeof(T), cudaMemcpyDeviceToHost);
  cudaFree(dev);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  aq::ParallelContext& ctx = aq::ParallelContext::init(&argc, &argv);
  const int gpus = aq::cuda::device_count();
  int skip = gpus == 0 || ctx.local_size() > gpus;
  if (skip) {
    if (ctx.world_rank() == 0)
      std::printf("SKIP: %s\n", gpus == 0 ? "no CUDA device visible: NCCL test not run"
                                          : "fewer GPUs than ranks on this node: NCCL test not run");
    ctx.finalize();
    return 77;
  }
  aq::cuda::select_device(ctx.local_rank(), ctx.local_size());
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  {
    aq::NcclBackend g(comm, "world", 60);
    const int P = g.size(), r = g.rank();
    for (int64_t n : {1, 7, 1001}) {
      auto x = roundtrip<float>(std::vector<float>(n, static_cast<float>(r + 1)), [&](float* d) {
        g.all_reduce(d, n, aq::DType::F32, {"sum"})->wait();
      });
      for (float v : x) EXPECT_TRUE_MSG(v == static_cast<float>(P * (P + 1) / 2), "all_reduce f32 n=%lld", (long long)n);
      auto y = roundtrip<double>(std::vector<double>(n, r + 1.0), [&](double* d) {
        g.all_reduce(d, n, aq::DType::F64, {"max", aq::ReduceOp::Max})->wait();
      });
      for (double v : y) EXPECT_TRUE_MSG(v == P, "all_reduce max n=%lld", (long long)n);
    }
    const int64_t n = 13;
    std::vector<float> send(P * n);
    for (int b = 0; b < P; ++b)
      for (int64_t i = 0; i < n; ++i) send[b * n + i] = static_cast<float>((r + 1) * (b + 1));
    auto rs = roundtrip<float>(send, [&](float* d) {
      float* out = nullptr;
      cudaMalloc(&out, n * sizeof(float));
      g.reduce_scatter(d, out, n, aq::DType::F32, {"reduce_scatter"})->wait();
      cudaMemcpy(d, out, n * sizeof(float), cudaMemcpyDeviceToDevice);
      cudaFree(out);
    });
    for (int64_t i = 0; i < n; ++i)
      EXPECT_TRUE_MSG(rs[i] == static_cast<float>(P * (P + 1) / 2 * (r + 1)), "reduce_scatter");
    std::vector<float> all(P * n, -1.0f);
    for (int64_t i = 0; i < n; ++i) all[r * n + i] = static_cast<float>(r + 1);
    auto ag = roundtrip<float>(all, [&](float* d) {
      g.all_gather(d + r * n, d, n, aq::DType::F32, {"all_gather in place"})->wait();
    });
    for (int q = 0; q < P; ++q)
      for (int64_t i = 0; i < n; ++i) EXPECT_TRUE_MSG(ag[q * n + i] == q + 1.0f, "all_gather");
    auto bc = roundtrip<int32_t>(std::vector<int32_t>(n, r == P - 1 ? 42 : 0), [&](int32_t* d) {
      g.broadcast(d, n, aq::DType::I32, P - 1, {"broadcast"})->wait();
    });
    for (int32_t v : bc) EXPECT_TRUE_MSG(v == 42, "broadcast");
    auto w = g.barrier({"barrier"});
    w->wait();
    EXPECT_TRUE_MSG(w->test(), "barrier completes");
    std::printf("rank %d: NCCL conformance on %s: %s\n", r, g.describe().c_str(), failures ? "FAILED" : "ok");
  }
  int worst = failures;
  MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Comm_free(&comm);
  ctx.finalize();
  return worst ? 1 : 0;
}
