// test_attention_cuda.cpp — the CUDA attention kernels (flash tiles for head sizes ≤ 128, row kernels above)
// against the CPU kernel run in double, in fp32 (relative error < 1e-5) and bf16 (< 2e-2, on the same
// bf16-rounded inputs), at odd shapes. Outputs are poisoned with NaN before the kernels run and every element
// must come back finite, so an unwritten element fails. The backward pass must repeat bit for bit, and the
// 128-bit and scalar load paths must agree bit for bit. bf16 at head sizes that are multiples of 16 takes the
// tensor-core (WMMA) kernels by default and the FMA tiles under AQ_ATTENTION_FMA=1; one test runs both. Without
// a visible GPU each test skips with that reason.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/attention/attention.h"
#include "runtime/bf16.h"
#include "runtime/memory.h"
#include "tests/ops/cuda_test_util.h"
#include "tests/test_util.h"

namespace aq {
namespace {

struct Shape {
  int B, T, C, NH;
};
std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << "(B,T,C,NH) = (" << s.B << "," << s.T << "," << s.C << "," << s.NH << "), hs " << s.C / s.NH;
}

// Odd sizes; head sizes 16, 24, 16, 7, 64 (GPT-2's; the one tile shape with fewer query than key rows in
// backward), 128 (the largest flash tile) and 160 (the row-kernel fallback, at T below and above its 128
// threads); and GPT-2 124M's attention at full context.
const Shape kShapes[] = {{2, 37, 48, 3},   {1, 129, 72, 3},  {3, 1, 32, 2},   {2, 70, 21, 3},
                         {2, 129, 128, 2}, {1, 200, 192, 3}, {1, 200, 256, 2}, {1, 33, 320, 2},
                         {1, 300, 320, 2}, {1, 1024, 768, 12}};

double to_double(float x) { return x; }
double to_double(bf16 x) { return bf16_to_float(x); }
template <typename T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return float_to_bf16(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}
template <typename T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> w(v.size());
  for (size_t i = 0; i < v.size(); ++i) w[i] = to_double(v[i]);
  return w;
}
// Unwritten (still NaN) or non-finite elements, counted so a failure says how many.
template <typename T>
size_t non_finite(const std::vector<T>& v) {
  size_t n = 0;
  for (const T& x : v) n += !std::isfinite(to_double(x));
  return n;
}
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Device copies through runtime/memory.h (synchronous, so a download waits for the kernels before it).
template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& h) {
  DeviceBuffer<T> d(Device::CUDA, h.size());
  device_copy(d.data(), Device::CUDA, h.data(), Device::CPU, h.size() * sizeof(T));
  return d;
}
template <typename T>
std::vector<T> download(const DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  device_copy(h.data(), Device::CPU, d.data(), Device::CUDA, h.size() * sizeof(T));
  return h;
}

// Random qkv (B,T,3C) and dout (B,T,C), rounded to the storage type T.
template <typename T>
struct Inputs {
  std::vector<T> qkv, dout;
};
template <typename T>
Inputs<T> random_inputs(const Shape& s, uint64_t seed) {
  const size_t n = static_cast<size_t>(s.B) * s.T * s.C;
  Inputs<T> in{std::vector<T>(3 * n), std::vector<T>(n)};
  const std::vector<double> q = test::randn<double>(3 * n, seed), d = test::randn<double>(n, seed + 1);
  for (size_t i = 0; i < 3 * n; ++i) in.qkv[i] = from_double<T>(q[i]);
  for (size_t i = 0; i < n; ++i) in.dout[i] = from_double<T>(d[i]);
  return in;
}

// The CPU kernels in double on the (rounded) inputs.
struct Reference {
  std::vector<double> out, lse, dqkv;
};
Reference reference(const std::vector<double>& qkv, const std::vector<double>& dout, const Shape& s) {
  auto& reg = ops::Registry::instance();
  Reference r{std::vector<double>(dout.size()), std::vector<double>(static_cast<size_t>(s.B) * s.NH * s.T),
              std::vector<double>(qkv.size())};
  reg.find<ops::Attention<double>::Forward>("attention_forward", Device::CPU, DType::F64)(
      r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  reg.find<ops::Attention<double>::Backward>("attention_backward", Device::CPU, DType::F64)(
      r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B, s.T, s.C, s.NH);
  return r;
}

// The CUDA kernels: forward, then backward from the forward's own out and lse. All outputs start as NaN and
// are followed by kCanary NaN elements that must stay NaN (a write past the end would be finite; the caching
// allocator's rounding would hide it from compute-sanitizer). offset shifts every tensor by that many elements
// inside its buffer (1 breaks 16-byte alignment, which sends the kernels down their scalar-load path).
constexpr size_t kCanary = 64;
template <typename T>
struct Result {
  std::vector<T> out;
  std::vector<float> lse;
  std::vector<T> dqkv;
};
template <typename T>
Result<T> run_cuda(const Inputs<T>& in, const Shape& s, int offset = 0) {
  auto& reg = ops::Registry::instance();
  const DType dt = dtype_of<T>();
  auto* fwd = reg.find<typename ops::Attention<T>::Forward>("attention_forward", Device::CUDA, dt);
  auto* bwd = reg.find<typename ops::Attention<T>::Backward>("attention_backward", Device::CUDA, dt);
  const T nan = from_double<T>(NAN);
  auto padded = [&](const std::vector<T>& v) {
    std::vector<T> p(v.size() + offset + kCanary, nan);
    std::copy(v.begin(), v.end(), p.begin() + offset);
    return p;
  };
  const size_t n = in.dout.size(), nl = static_cast<size_t>(s.B) * s.NH * s.T;
  DeviceBuffer<T> qkv = upload(padded(in.qkv)), dout = upload(padded(in.dout));
  DeviceBuffer<T> out = upload(std::vector<T>(n + offset + kCanary, nan));
  DeviceBuffer<T> dqkv = upload(std::vector<T>(3 * n + offset + kCanary, nan));
  DeviceBuffer<float> lse = upload(std::vector<float>(nl + kCanary, NAN));
  fwd(out.data() + offset, lse.data(), qkv.data() + offset, s.B, s.T, s.C, s.NH);
  bwd(dqkv.data() + offset, dout.data() + offset, qkv.data() + offset, out.data() + offset, lse.data(), s.B, s.T, s.C,
      s.NH);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<T> o = download(out), d = download(dqkv);
  const std::vector<float> l = download(lse);
  const auto tail_written = [](auto first, auto last) {
    return std::count_if(first, last, [](auto x) { return std::isfinite(to_double(x)); });
  };
  EXPECT_EQ(tail_written(o.end() - kCanary, o.end()), 0) << "out written past its end; " << s;
  EXPECT_EQ(tail_written(d.end() - kCanary, d.end()), 0) << "dqkv written past its end; " << s;
  EXPECT_EQ(tail_written(l.end() - kCanary, l.end()), 0) << "lse written past its end; " << s;
  return {std::vector<T>(o.begin() + offset, o.end() - kCanary), std::vector<float>(l.begin(), l.end() - kCanary),
          std::vector<T>(d.begin() + offset, d.end() - kCanary)};
}

template <typename T>
void expect_matches_reference(double tol, uint64_t seed) {
  for (const Shape& s : kShapes) {
    const Inputs<T> in = random_inputs<T>(s, seed);
    const Reference ref = reference(widen(in.qkv), widen(in.dout), s);
    const Result<T> got = run_cuda(in, s);
    EXPECT_EQ(non_finite(got.out), 0u) << "out: elements not written or not finite; " << s;
    EXPECT_EQ(non_finite(got.lse), 0u) << "lse: elements not written or not finite; " << s;
    EXPECT_EQ(non_finite(got.dqkv), 0u) << "dqkv: elements not written or not finite; " << s;
    EXPECT_LT(test::rel_err(widen(got.out), ref.out), tol) << "out; " << s;
    EXPECT_LT(test::rel_err(widen(got.lse), ref.lse), tol) << "lse; " << s;
    EXPECT_LT(test::rel_err(widen(got.dqkv), ref.dqkv), tol) << "dqkv; " << s;
  }
}

// Shapes the kernels cannot take are refused with the fix, before any device work (so this runs without a GPU).
TEST(CudaAttention, RefusesShapesItCannotTakeWithTheFix) {
  auto* fwd = ops::Registry::instance().find<ops::Attention<float>::Forward>("attention_forward", Device::CUDA,
                                                                             DType::F32);
  auto* bwd = ops::Registry::instance().find<ops::Attention<float>::Backward>("attention_backward", Device::CUDA,
                                                                              DType::F32);
  test::expect_error([&] { fwd(nullptr, nullptr, nullptr, 1, 4, 10, 3); }, {"C=10", "not a multiple of the head count 3"});
  test::expect_error([&] { bwd(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 10, 3); },
                     {"C=10", "not a multiple of the head count 3"});
  // Head size 160 takes the row kernels, which hold one row of scores in shared memory.
  test::expect_error([&] { fwd(nullptr, nullptr, nullptr, 1, 6145, 320, 2); }, {"6145 exceeds 6144", "lower --seq"});
}

TEST(CudaAttention, Fp32MatchesCpuDouble) {
  AQ_REQUIRE_GPU();
  expect_matches_reference<float>(1e-5, 101);
}

TEST(CudaAttention, Bf16MatchesCpuDoubleOnRoundedInputs) {
  AQ_REQUIRE_GPU();
  expect_matches_reference<bf16>(2e-2, 202);
}

// Sets an environment variable for its lifetime, then restores the previous value (or its absence).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_;
  std::string old_;
};

// bf16 with head sizes that are multiples of 16 (up to 128) runs on the tensor cores (WMMA) unless
// AQ_ATTENTION_FMA=1 sends it to the fp32 FMA tiles; both paths must match the reference at head sizes 64
// (GPT-2's, with its full 1024-token context) and 128, and at a single-token sequence.
TEST(CudaAttention, Bf16TensorCoreAndFmaPathsMatchCpuDouble) {
  AQ_REQUIRE_GPU();
  for (const Shape& s : {Shape{2, 129, 128, 2}, Shape{1, 200, 192, 3}, Shape{1, 1024, 768, 12}, Shape{1, 200, 256, 2},
                         Shape{3, 1, 32, 2}, Shape{2, 37, 96, 2}}) {
    const Inputs<bf16> in = random_inputs<bf16>(s, 505);
    const Reference ref = reference(widen(in.qkv), widen(in.dout), s);
    for (const char* path : {"0", "1"}) {
      ScopedEnv env("AQ_ATTENTION_FMA", path);
      const Result<bf16> got = run_cuda(in, s);
      const char* name = path[0] == '1' ? "FMA path; " : "tensor-core path; ";
      EXPECT_EQ(non_finite(got.out), 0u) << "out: elements not written or not finite; " << name << s;
      EXPECT_EQ(non_finite(got.lse), 0u) << "lse: elements not written or not finite; " << name << s;
      EXPECT_EQ(non_finite(got.dqkv), 0u) << "dqkv: elements not written or not finite; " << name << s;
      EXPECT_LT(test::rel_err(widen(got.out), ref.out), 2e-2) << "out; " << name << s;
      EXPECT_LT(test::rel_err(widen(got.lse), ref.lse), 2e-2) << "lse; " << name << s;
      EXPECT_LT(test::rel_err(widen(got.dqkv), ref.dqkv), 2e-2) << "dqkv; " << name << s;
    }
  }
}

// Every element of dqkv has one writer and every sum a fixed order: a second run gives the same bits.
template <typename T>
void expect_deterministic(uint64_t seed) {
  for (const Shape& s : {Shape{2, 131, 96, 3}, Shape{1, 33, 320, 2}}) {
    const Inputs<T> in = random_inputs<T>(s, seed);
    const Result<T> a = run_cuda(in, s), b = run_cuda(in, s);
    EXPECT_TRUE(same_bits(a.out, b.out)) << "out; " << s;
    EXPECT_TRUE(same_bits(a.lse, b.lse)) << "lse; " << s;
    EXPECT_TRUE(same_bits(a.dqkv, b.dqkv)) << "dqkv; " << s;
  }
}

TEST(CudaAttention, BackwardRepeatsBitForBit) {
  AQ_REQUIRE_GPU();
  expect_deterministic<float>(303);
  expect_deterministic<bf16>(304);
}

// The flash kernels load 128 bits at a time when every head row is 16-byte aligned, one element at a time
// otherwise; both paths read the same values, so the results must be identical.
template <typename T>
void expect_vector_and_scalar_loads_agree(uint64_t seed) {
  for (const Shape& s : {Shape{2, 37, 48, 3}, Shape{1, 70, 64, 2}, Shape{1, 90, 256, 2}}) {
    const Inputs<T> in = random_inputs<T>(s, seed);
    const Result<T> aligned = run_cuda(in, s, 0), shifted = run_cuda(in, s, 1);
    EXPECT_EQ(non_finite(shifted.dqkv), 0u) << s;
    EXPECT_TRUE(same_bits(aligned.out, shifted.out)) << "out; " << s;
    EXPECT_TRUE(same_bits(aligned.lse, shifted.lse)) << "lse; " << s;
    EXPECT_TRUE(same_bits(aligned.dqkv, shifted.dqkv)) << "dqkv; " << s;
  }
}

TEST(CudaAttention, VectorAndScalarLoadsAgree) {
  AQ_REQUIRE_GPU();
  expect_vector_and_scalar_loads_agree<float>(405);
  expect_vector_and_scalar_loads_agree<bf16>(406);
}

}  // namespace
}  // namespace aq
