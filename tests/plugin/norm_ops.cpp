// norm_ops.cpp — a plugin of norm operators for the model's norm slot (ModelConfig::norm_op; tests/plugin/
// model_slots.sh): one that fits the slot, and one for each way of breaking its contract, which the model must refuse
// in one line naming the operator.
//   test::rms_norm         y = x·rstd·g, rstd = 1/sqrt(mean(x²) + 1e-6) per row: RMSNorm with its own fixed eps and
//                          no attribute; rstd kept as a statistics output; CPU fp32/fp64; gradients of x and g
//                          added (+=), as the slot needs; replicated or split by rows
//   test::unit_norm        y = x·rstd: one input (no weight) — the slot takes inp, w[, b]
//   test::rms_norm_writes  test::rms_norm whose backward writes its gradients instead of adding (and declares so)
//   test::rms_norm_alpha   test::rms_norm with an attribute "alpha" the slot does not know
//   test::rms_norm_f64     test::rms_norm with fp64 kernels only
//   test::rms_norm_rows    test::rms_norm declaring only the rows rule: it cannot run replicated under --tp
#include <aqueduct/op_plugin.hpp>
#include <cmath>

namespace {

using aq::plugin::KernelCall;
using aq::plugin::ShapeCall;

constexpr double kEps = 1e-6;

// x (N,C), g (C) -> y (N,C), rstd (N)
void norm_shape(ShapeCall& s) {
  const AqTensorDesc &x = s.in(0), &g = s.in(1);
  if (g.shape[0] != x.shape[1])
    aq::plugin::fail("test norm: g must have C = " + std::to_string(x.shape[1]) + " entries");
  s.out(0) = x;
  s.out(0).dtype = s.kernel_dtype();
  s.out(1).dtype = s.kernel_dtype();
  s.out(1).ndim = 1;
  s.out(1).shape[0] = x.shape[0];
}

// x (N,C) -> y (N,C)
void unit_shape(ShapeCall& s) {
  s.out(0) = s.in(0);
  s.out(0).dtype = s.kernel_dtype();
}

// y (N,C) = x·rstd·g; rstd (N), when it is an output
template <typename T>
void norm_fwd(KernelCall& k) {
  const T* x = k.in(0).data<T>();
  const T* g = k.n_in() > 1 ? k.in(1).data<T>() : nullptr;
  T* y = k.out(0).data<T>();
  const int64_t N = k.in(0).dim(0), C = k.in(0).dim(1);
  for (int64_t i = 0; i < N; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[i * C + c]) * x[i * C + c];
    const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(C) + kEps));
    if (k.n_out() > 1) k.out(1).data<T>()[i] = r;
    for (int64_t c = 0; c < C; ++c) y[i * C + c] = x[i * C + c] * r * (g ? g[c] : T(1));
  }
}

// inputs: x, g, rstd (saved), dy, drstd (absent); outputs: dx, dg — added to (Acc) or overwritten.
// xhat = x·rstd; dg = Σ_rows dy·xhat; dx = rstd·(dy·g − xhat·mean(dy·g·xhat))
template <typename T, bool Acc>
void norm_bwd(KernelCall& k) {
  const T *x = k.in(0).data<T>(), *g = k.in(1).data<T>(), *rstd = k.in(2).data<T>(), *dy = k.in(3).data<T>();
  T *dx = k.out(0).data<T>(), *dg = k.out(1).data<T>();
  const int64_t N = k.in(0).dim(0), C = k.in(0).dim(1);
  if (!Acc)
    for (int64_t c = 0; c < C; ++c) dg[c] = T(0);
  for (int64_t i = 0; i < N; ++i) {
    const T r = rstd[i];
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dy[i * C + c]) * g[c] * x[i * C + c] * r;
    const T m = static_cast<T>(dot / static_cast<double>(C));
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = x[i * C + c] * r;
      dg[c] += dy[i * C + c] * xhat;
      const T d = r * (dy[i * C + c] * g[c] - xhat * m);
      dx[i * C + c] = Acc ? dx[i * C + c] + d : d;
    }
  }
}

// unit_norm's backward: inputs x, dy; output dx (+=) = rstd·(dy − xhat·mean(dy·xhat)), rstd recomputed
template <typename T>
void unit_bwd(KernelCall& k) {
  const T *x = k.in(0).data<T>(), *dy = k.in(1).data<T>();
  T* dx = k.out(0).data<T>();
  const int64_t N = k.in(0).dim(0), C = k.in(0).dim(1);
  for (int64_t i = 0; i < N; ++i) {
    double ss = 0, dot = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[i * C + c]) * x[i * C + c];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(C) + kEps);
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dy[i * C + c]) * x[i * C + c] * r;
    for (int64_t c = 0; c < C; ++c)
      dx[i * C + c] += static_cast<T>(r * (dy[i * C + c] - x[i * C + c] * r * dot / static_cast<double>(C)));
  }
}

constexpr uint32_t kAcc = AQ_TENSOR_GRAD_ACCUMULATES, kParam = AQ_TENSOR_PARAM, kNoGrad = AQ_TENSOR_NO_GRAD;
constexpr int32_t B = AQ_SBP_BROADCAST, P = AQ_SBP_PARTIAL_SUM;

// test::rms_norm's declaration under another name; `acc` 0 declares overwritten gradients (and has kernels that
// overwrite); `rules` 1 replicated and rows, 0 rows only.
aq::plugin::OpBuilder& rms_norm(aq::plugin::Builder& p, const char* name, uint32_t acc, bool replicated) {
  auto& op = p.op(name, 1)
                 .doc("RMSNorm, eps 1e-6 fixed: y = x·rstd·g")
                 .input("x", AQ_DTYPE_KERNEL, 2, "N,C", acc)
                 .input("g", AQ_DTYPE_KERNEL, 1, "C", kParam | acc)
                 .output("y", AQ_DTYPE_KERNEL, 2, "N,C")
                 .output("rstd", AQ_DTYPE_KERNEL, 1, "N", kNoGrad)
                 .shape(norm_shape)
                 .saves({"x", "g", "rstd"}, "xhat from x and rstd")
                 .sharding("rows", {0, B}, {0, 0}, {0, P});
  if (replicated) op.sharding("replicated", {B, B}, {B, B}, {B, B});
  return op;
}

}  // namespace

AQ_PLUGIN(p) {
  p.name("test-norms").version("1.0.0");
  rms_norm(p, "test::rms_norm", kAcc, true)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, norm_fwd<float>, norm_bwd<float, true>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, norm_bwd<double, true>);
  p.op("test::unit_norm", 1)
      .doc("y = x·rstd, no weight")
      .input("x", AQ_DTYPE_KERNEL, 2, "N,C", kAcc)
      .output("y", AQ_DTYPE_KERNEL, 2, "N,C")
      .shape(unit_shape)
      .saves({"x"})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, norm_fwd<float>, unit_bwd<float>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, unit_bwd<double>);
  rms_norm(p, "test::rms_norm_writes", 0, true)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, norm_fwd<float>, norm_bwd<float, false>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, norm_bwd<double, false>);
  rms_norm(p, "test::rms_norm_alpha", kAcc, true)
      .attr("alpha", AQ_ATTR_FLOAT, "not a norm slot attribute")
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, norm_fwd<float>, norm_bwd<float, true>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, norm_bwd<double, true>);
  rms_norm(p, "test::rms_norm_f64", kAcc, true)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, norm_bwd<double, true>);
  rms_norm(p, "test::rms_norm_rows", kAcc, false)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, norm_fwd<float>, norm_bwd<float, true>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, norm_bwd<double, true>);
}
