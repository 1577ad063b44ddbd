// squared_relu.cpp — an operator plugin: myorg::squared_relu, y = max(x, 0)², the activation of Primer
// (So et al. 2021), with its backward dx = 2·max(x, 0)·dy, CPU kernels for fp32 and fp64, and its tensor-
// parallel rule: elementwise, so any split works and no gradient needs a reduction.
//
// It needs only Aqueduct's installed headers (find_package(Aqueduct) + aq_add_plugin in CMakeLists.txt);
// nothing of Aqueduct is linked.
#include <aqueduct/op_plugin.hpp>

namespace {

using aq::plugin::KernelCall;
using aq::plugin::ShapeCall;

// y (n) = max(x, 0)²; any shape, contiguous
template <typename T>
void forward(KernelCall& k) {
  if (!k.in(0).contiguous()) aq::plugin::fail("myorg::squared_relu: x must be contiguous");
  const T* x = k.in(0).data<T>();
  T* y = k.out(0).data<T>();
  const int64_t n = k.in(0).numel();
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] * x[i] : T(0);
}

// inputs: x (saved), dy; outputs: dx (overwritten) = 2·max(x, 0)·dy
template <typename T>
void backward(KernelCall& k) {
  const T* x = k.in(0).data<T>();
  const T* dy = k.in(1).data<T>();
  if (!k.out(0).present()) return;  // no gradient wanted
  T* dx = k.out(0).data<T>();
  const int64_t n = k.in(0).numel();
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? T(2) * x[i] * dy[i] : T(0);
}

// y has x's shape and the kernel's dtype; no workspace.
void shape(ShapeCall& s) {
  s.out(0) = s.in(0);
  s.out(0).dtype = s.kernel_dtype();
}

}  // namespace

AQ_PLUGIN(p) {
  p.name("myorg-activations").version("1.0.0");
  p.op("myorg::squared_relu", 1)
      .doc("y = max(x, 0)^2 (Primer)")
      .input("x", AQ_DTYPE_KERNEL, -1, "any")
      .output("y", AQ_DTYPE_KERNEL, -1, "same as x")
      .shape(shape)
      .saves({"x"})
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, forward<float>, backward<float>)
      .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F64, forward<double>, backward<double>)
      // Elementwise: x, y and dx split along the same (any) dimension, or all replicated.
      .sharding("elementwise", {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY})
      .sharding("replicated", {AQ_SBP_BROADCAST}, {AQ_SBP_BROADCAST}, {AQ_SBP_BROADCAST});
}
