// wrong_ops.cpp — a plugin whose operators are each wrong in one way `aq-op check` must catch (tests/plugin/
// op_check.sh asserts the FAIL lines): every other check of the same op passes, so each FAIL names its check.
//   wrong::short_shape   y = 2x, but the shape function declares one row fewer than the kernel writes (shape)
//   wrong::flipped_grad  y = x³ with dx = −3x²·dy, the backward's sign flipped (backward)
//   wrong::global_norm   y = x / ‖x‖ over the whole tensor, declared elementwise under S(any): each shard
//                        normalises by its own norm, so the gathered result is not the whole op's (sharding)
//   wrong::noisy         y = x + 1e-12·(calls so far): a kernel whose result depends on history (determinism)
//   wrong::overwrites    y = 3x with dx declared accumulating (AQ_TENSOR_GRAD_ACCUMULATES) but overwritten
//                        (backward: the gradient already there is lost)
// and one correct operator for the model's checks (tests/plugin/out_of_tree.sh):
//   wrong::replicated_only  y = 2x declared replicated only: as a tensor-parallel MLP activation it is refused
#include <aqueduct/op_plugin.hpp>
#include <cmath>

namespace {

using aq::plugin::KernelCall;
using aq::plugin::ShapeCall;

void same_shape(ShapeCall& s) {
  s.out(0) = s.in(0);
  s.out(0).dtype = s.kernel_dtype();
}

// y (rows−1, …): one row short of x, which the kernel writes whole.
void short_shape(ShapeCall& s) {
  same_shape(s);
  s.out(0).shape[0] -= 1;
}

// y (n) = 2·x (n), all n elements, whatever the shape function said
template <typename T>
void double_fwd(KernelCall& k) {
  const T* x = k.in(0).data<T>();
  T* y = k.out(0).data<T>();
  for (int64_t i = 0; i < k.in(0).numel(); ++i) y[i] = T(2) * x[i];
}
// inputs: dy; outputs: dx = 2·dy (as many elements as dy has: dx's last row stays unwritten)
template <typename T>
void double_bwd(KernelCall& k) {
  if (!k.out(0).present()) return;
  for (int64_t i = 0; i < k.in(0).numel(); ++i) k.out(0).data<T>()[i] = T(2) * k.in(0).data<T>()[i];
}

// y = x³
template <typename T>
void cube_fwd(KernelCall& k) {
  const T* x = k.in(0).data<T>();
  for (int64_t i = 0; i < k.in(0).numel(); ++i) k.out(0).data<T>()[i] = x[i] * x[i] * x[i];
}
// inputs: x (saved), dy; outputs: dx — deliberately −3x²·dy
template <typename T>
void cube_bwd_flipped(KernelCall& k) {
  const T *x = k.in(0).data<T>(), *dy = k.in(1).data<T>();
  if (!k.out(0).present()) return;
  for (int64_t i = 0; i < k.in(0).numel(); ++i) k.out(0).data<T>()[i] = -T(3) * x[i] * x[i] * dy[i];
}

// y = x / ‖x‖₂ over all elements
template <typename T>
void norm_fwd(KernelCall& k) {
  const T* x = k.in(0).data<T>();
  const int64_t n = k.in(0).numel();
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  const double inv = 1.0 / std::sqrt(s);
  for (int64_t i = 0; i < n; ++i) k.out(0).data<T>()[i] = T(x[i] * inv);
}
// inputs: x (saved), y (saved), dy; outputs: dx = (dy − y·(y·dy)) / ‖x‖ (correct)
template <typename T>
void norm_bwd(KernelCall& k) {
  const T *x = k.in(0).data<T>(), *y = k.in(1).data<T>(), *dy = k.in(2).data<T>();
  if (!k.out(0).present()) return;
  const int64_t n = k.in(0).numel();
  double s = 0, ydy = 0;
  for (int64_t i = 0; i < n; ++i) {
    s += double(x[i]) * double(x[i]);
    ydy += double(y[i]) * double(dy[i]);
  }
  const double inv = 1.0 / std::sqrt(s);
  for (int64_t i = 0; i < n; ++i) k.out(0).data<T>()[i] = T((dy[i] - y[i] * ydy) * inv);
}

// y = x + 1e-12·n, n the number of calls so far (state kept across calls: not reproducible)
template <typename T>
void noisy_fwd(KernelCall& k) {
  static int64_t calls = 0;
  ++calls;
  for (int64_t i = 0; i < k.in(0).numel(); ++i) k.out(0).data<T>()[i] = k.in(0).data<T>()[i] + T(1e-12) * T(calls);
}

// y = 3x
template <typename T>
void triple_fwd(KernelCall& k) {
  for (int64_t i = 0; i < k.in(0).numel(); ++i) k.out(0).data<T>()[i] = T(3) * k.in(0).data<T>()[i];
}
// inputs: dy; outputs: dx — written with =, though the op declares that dx accumulates (+=)
template <typename T>
void triple_bwd_overwrites(KernelCall& k) {
  if (!k.out(0).present()) return;
  for (int64_t i = 0; i < k.in(0).numel(); ++i) k.out(0).data<T>()[i] = T(3) * k.in(0).data<T>()[i];
}

}  // namespace

AQ_PLUGIN(p) {
  p.name("wrong-ops").version("0.0.1");
  p.op("wrong::short_shape", 1)
      .doc("y = 2x; the shape function is one row short")
      .input("x", AQ_DTYPE_KERNEL, 2, "N,C")
      .output("y", AQ_DTYPE_KERNEL, 2, "N-1,C (wrong)")
      .shape(short_shape)
      .saves({})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, double_fwd<double>, double_bwd<double>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, double_fwd<float>, double_bwd<float>);
  p.op("wrong::flipped_grad", 1)
      .doc("y = x^3; the backward's sign is flipped")
      .input("x", AQ_DTYPE_KERNEL, -1, "any")
      .output("y", AQ_DTYPE_KERNEL, -1, "same as x")
      .shape(same_shape)
      .saves({"x"})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, cube_fwd<double>, cube_bwd_flipped<double>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, cube_fwd<float>, cube_bwd_flipped<float>)
      .sharding("elementwise", {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY});
  p.op("wrong::global_norm", 1)
      .doc("y = x / ||x|| over the whole tensor; wrongly declared elementwise")
      .input("x", AQ_DTYPE_KERNEL, -1, "any")
      .output("y", AQ_DTYPE_KERNEL, -1, "same as x")
      .shape(same_shape)
      .saves({"x", "y"})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, norm_fwd<double>, norm_bwd<double>)
      .sharding("elementwise", {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY})
      .sharding("replicated", {AQ_SBP_BROADCAST}, {AQ_SBP_BROADCAST}, {AQ_SBP_BROADCAST});
  p.op("wrong::noisy", 1)
      .doc("y = x + 1e-12 * calls; not reproducible")
      .input("x", AQ_DTYPE_KERNEL, -1, "any")
      .output("y", AQ_DTYPE_KERNEL, -1, "same as x")
      .shape(same_shape)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, noisy_fwd<double>);
  p.op("wrong::replicated_only", 1)
      .doc("y = 2x, declared replicated only: a correct operator that the model's tensor-parallel MLP activation slot "
           "must refuse (no rule splits dimension 1)")
      .input("x", AQ_DTYPE_KERNEL, -1, "any")
      .output("y", AQ_DTYPE_KERNEL, -1, "same as x")
      .shape(same_shape)
      .saves({})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, double_fwd<double>, double_bwd<double>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, double_fwd<float>, double_bwd<float>)
      .sharding("replicated", {AQ_SBP_BROADCAST}, {AQ_SBP_BROADCAST}, {AQ_SBP_BROADCAST});
  p.op("wrong::overwrites", 1)
      .doc("y = 3x; dx declared accumulating but overwritten")
      .input("x", AQ_DTYPE_KERNEL, -1, "any", AQ_TENSOR_GRAD_ACCUMULATES)
      .output("y", AQ_DTYPE_KERNEL, -1, "same as x")
      .shape(same_shape)
      .saves({})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, triple_fwd<double>, triple_bwd_overwrites<double>);
}
