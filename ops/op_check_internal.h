// op_check_internal.h — what the parts of `aq-op check` share (ops/op_check.cpp: kernels, shapes, backward,
// determinism, CUDA; ops/op_check_sharding.cpp: the sharding rules): host buffers fenced by canaries, the
// reporter of "<op> <check> <result>" lines, and an op with its probe inputs run through the generic call path.
// Not installed and not for other callers: ops/op_check.h is the interface.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ops/builtin_adapters.h"
#include "ops/op_check.h"
#include "ops/op_def.h"

namespace aq::ops::opcheck {

constexpr size_t kFence = 64;            // canary bytes before and after every buffer
constexpr unsigned char kCanary = 0x5a;  // a byte pattern no kernel has a reason to write

// ---- host buffers with canaries ------------------------------------------------------------------------------

class Buf {
 public:
  Buf() = default;  // an absent (optional, or not wanted) tensor
  Buf(DType t, Shape s) : dtype_(t), shape_(std::move(s)), present_(true) {
    bytes_.assign(2 * kFence + nbytes(), kCanary);
    std::memset(body(), 0, nbytes());
  }
  bool present() const { return present_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return present_ ? shape_numel(shape_) : 0; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  unsigned char* body() { return bytes_.data() + kFence; }
  const unsigned char* body() const { return bytes_.data() + kFence; }
  Tensor view() const { return present_ ? Tensor(const_cast<unsigned char*>(body()), dtype_, shape_) : Tensor(); }

  double get(int64_t i) const {
    const unsigned char* p = body() + static_cast<size_t>(i) * dtype_size(dtype_);
    switch (dtype_) {
      case DType::F32:
        return load<float>(p);
      case DType::F64:
        return load<double>(p);
      case DType::BF16:
        return bf16_to_float(load<bf16>(p));
      case DType::I32:
        return load<int32_t>(p);
      case DType::U16:
        return load<uint16_t>(p);
      default:
        fail(str("aq-op check cannot read ", dtype_name(dtype_), " tensors"));
    }
  }
  void set(int64_t i, double v) {
    unsigned char* p = body() + static_cast<size_t>(i) * dtype_size(dtype_);
    switch (dtype_) {
      case DType::F32:
        return store(p, static_cast<float>(v));
      case DType::F64:
        return store(p, v);
      case DType::BF16:
        return store(p, float_to_bf16(static_cast<float>(v)));
      case DType::I32:
        return store(p, static_cast<int32_t>(v));
      case DType::U16:
        return store(p, static_cast<uint16_t>(v));
      default:
        fail(str("aq-op check cannot write ", dtype_name(dtype_), " tensors"));
    }
  }

  // NaN with a payload (integers: 0xa5 bytes): a kernel that leaves an element unwritten leaves this.
  void poison() {
    const std::vector<unsigned char> p = pattern();
    for (int64_t i = 0; i < numel(); ++i) std::memcpy(body() + i * p.size(), p.data(), p.size());
  }
  int64_t unwritten() const {
    const std::vector<unsigned char> p = pattern();
    int64_t n = 0;
    for (int64_t i = 0; i < numel(); ++i) n += std::memcmp(body() + i * p.size(), p.data(), p.size()) == 0;
    return n;
  }
  // Canary bytes overwritten before the first element and past the last.
  std::pair<size_t, size_t> damaged() const {
    size_t before = 0, after = 0;
    for (size_t i = 0; i < kFence; ++i) {
      before += bytes_[i] != kCanary;
      after += bytes_[kFence + nbytes() + i] != kCanary;
    }
    return {before, after};
  }
  bool same_bits(const Buf& o) const {
    return present_ == o.present_ && shape_ == o.shape_ && dtype_ == o.dtype_ &&
           std::memcmp(body(), o.body(), nbytes()) == 0;
  }

 private:
  template <typename T>
  static T load(const unsigned char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <typename T>
  static void store(unsigned char* p, T v) {
    std::memcpy(p, &v, sizeof v);
  }
  std::vector<unsigned char> pattern() const {
    std::vector<unsigned char> p(dtype_size(dtype_), 0xa5);
    if (dtype_ == DType::F32 || dtype_ == DType::BF16 || dtype_ == DType::F64) {
      // Sign 0, exponent all ones, a non-zero mantissa: a quiet NaN whose payload no arithmetic produces.
      p.back() = 0x7f;
      p[p.size() - 2] = dtype_ == DType::F64 ? 0xf5 : 0xa5 | 0x80;
    }
    return p;
  }

  std::vector<unsigned char> bytes_;
  DType dtype_ = DType::F32;
  Shape shape_;
  bool present_ = false;
};

using Bufs = std::vector<Buf>;

inline std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

inline std::string kname(Device d, DType t) { return str(d == Device::CPU ? "cpu" : "cuda", "/", dtype_name(t)); }

// ---- one line per (op, check) --------------------------------------------------------------------------------

struct Reporter {
  std::FILE* out;
  CheckSummary sum;
  void line(const std::string& op, const std::string& check, const std::string& result) {
    if (!out) return;  // a rank other than 0 under mpirun: counts, prints nothing
    std::fprintf(out, "%-20s %-30s %s\n", op.c_str(), check.c_str(), result.c_str());
    std::fflush(out);
  }
  void ok(const std::string& op, const std::string& check, const std::string& numbers) {
    ++sum.ok;
    line(op, check, numbers.empty() ? "ok" : "ok (" + numbers + ")");
  }
  void failed(const std::string& op, const std::string& check, const std::string& numbers) {
    ++sum.failed;
    line(op, check, "FAIL " + numbers);
  }
  void skip(const std::string& op, const std::string& check, const std::string& reason) {
    ++sum.skipped;
    line(op, check, "skip " + reason);
  }
  void na(const std::string& op, const std::string& check, const std::string& reason) {
    ++sum.not_applicable;
    line(op, check, "not applicable: " + reason);
  }
};

// ---- running an op on host buffers ---------------------------------------------------------------------------

inline AqTensor abi_view(const Buf& b) {
  AqTensor v{};
  v.struct_size = sizeof v;
  v.dtype = to_abi(b.dtype());
  v.device = AQ_DEVICE_CPU;
  if (!b.present()) return v;  // data NULL: absent
  v.data = const_cast<unsigned char*>(b.body());
  v.ndim = static_cast<int32_t>(b.shape().size());
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = b.shape()[static_cast<size_t>(i)];
    v.strides[i] = stride;
    stride *= v.shape[i];
  }
  return v;
}

struct Op {
  const OpDef& def;
  const BuiltinAdapter* ad;  // null for a plugin op
  ProbeInputs probe;
  std::mt19937_64 rng;

  size_t n_in() const { return def.inputs.size(); }
  bool input_present(size_t i) const { return probe.absent.empty() || !probe.absent[i]; }
  bool differentiable_input(size_t i) const { return !(def.inputs[i].flags & AQ_TENSOR_NO_GRAD) && input_present(i); }
  bool differentiable_output(size_t j) const { return !(def.outputs[j].flags & AQ_TENSOR_NO_GRAD); }
  bool accumulates(size_t i) const { return def.inputs[i].flags & AQ_TENSOR_GRAD_ACCUMULATES; }
  // Built-in parameter gradients are in master precision (what the typed kernels write); a plugin's gradient has
  // its input's dtype (op_abi.h).
  DType grad_dtype(size_t i, DType kdt) const {
    if (ad && (def.inputs[i].flags & AQ_TENSOR_PARAM)) return spec_dtype(AQ_DTYPE_KERNEL_MASTER, kdt);
    return spec_dtype(def.inputs[i].dtype, kdt);
  }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

  // Fresh random inputs of the probe's shapes: floats in [-1, 1), integers in [0, int_high).
  Bufs inputs(DType kdt) {
    Bufs in;
    for (size_t i = 0; i < n_in(); ++i) {
      if (!input_present(i)) {
        in.emplace_back();
        continue;
      }
      const DType t = spec_dtype(def.inputs[i].dtype, kdt);
      Buf b(t, probe.inputs[i]);
      const bool integer = t == DType::I32 || t == DType::U16;
      const int64_t high = probe.int_high.empty() || probe.int_high[i] == 0 ? 5 : probe.int_high[i];
      for (int64_t k = 0; k < b.numel(); ++k)
        b.set(k, integer ? static_cast<double>(std::uniform_int_distribution<int64_t>(0, high - 1)(rng))
                         : uniform(-1.0, 1.0));
      in.push_back(std::move(b));
    }
    return in;
  }
  Buf random_like(DType t, const Shape& s) {
    Buf b(t, s);
    for (int64_t k = 0; k < b.numel(); ++k) b.set(k, uniform(-1.0, 1.0));
    return b;
  }

  // Outputs sized by the shape function, poisoned, then the forward kernel.
  Bufs forward(DType kdt, const Bufs& in, const std::vector<AttrValue>& attrs) const {
    std::vector<Tensor> tin;
    for (const Buf& b : in) tin.push_back(b.view());
    const ShapeResult sr = OpRegistry::instance().infer(def.name, kdt, tin, attrs);
    Bufs out;
    std::vector<Tensor> tout;
    for (size_t j = 0; j < sr.shapes.size(); ++j) {
      out.emplace_back(sr.dtypes[j], sr.shapes[j]);
      out.back().poison();
    }
    for (const Buf& b : out) tout.push_back(b.view());
    OpRegistry::instance().forward(def.name, tin, tout, attrs);
    return out;
  }

  // grads: one per input (absent where none is wanted), as the caller initialised them.
  void backward(const Bufs& in, const Bufs& out, const Bufs& dout, const Bufs& grads,
                const std::vector<AttrValue>& attrs) const {
    std::vector<Tensor> saved, tdout, tgrad;
    for (int32_t s : def.saved)
      saved.push_back(static_cast<size_t>(s) < n_in() ? in[static_cast<size_t>(s)].view()
                                                      : out[static_cast<size_t>(s) - n_in()].view());
    for (const Buf& b : dout) tdout.push_back(b.view());
    for (const Buf& b : grads) tgrad.push_back(b.view());
    OpRegistry::instance().backward(def.name, saved, tdout, tgrad, attrs);
  }

  // Random output gradients r (absent for non-differentiable outputs): the projection L = Σ r·y.
  Bufs projection(const Bufs& out) {
    Bufs r;
    for (size_t j = 0; j < out.size(); ++j)
      r.push_back(differentiable_output(j) ? random_like(out[j].dtype(), out[j].shape()) : Buf());
    return r;
  }

  // Gradient buffers for `in`: accumulating ones start at random values (returned in `base`), the others poisoned
  // so an element the kernel does not write shows as NaN.
  Bufs grad_buffers(DType kdt, const Bufs& in, Bufs* base, bool zero = false) {
    Bufs g;
    for (size_t i = 0; i < n_in(); ++i) {
      if (!differentiable_input(i)) {
        g.emplace_back();
        if (base) base->emplace_back();
        continue;
      }
      Buf b(grad_dtype(i, kdt), in[i].shape());  // zero-filled
      if (!zero && accumulates(i))
        for (int64_t k = 0; k < b.numel(); ++k) b.set(k, uniform(-1.0, 1.0));
      else if (!zero)
        b.poison();
      if (base) base->push_back(b);
      g.push_back(std::move(b));
    }
    return g;
  }

  bool has_generic_backward(Device dev, DType t) const {
    const KernelEntry* k = def.kernel(dev, t);
    return def.has_backward && k && k->backward;
  }
  bool fused_backward() const { return def.has_backward && ad && ad->fused; }

  // The fused backward (BuiltinAdapter::fused): outputs sized by the shape function and poisoned, `grads` (one
  // per input, initialised by the caller) written by the same call. The host's call path has no such form, so
  // the kernel arguments are laid out here as OpRegistry::forward lays them out.
  Bufs fused(DType kdt, const Bufs& in, const Bufs& grads, const std::vector<AttrValue>& attrs) const {
    std::vector<Tensor> tin;
    for (const Buf& b : in) tin.push_back(b.view());
    const ShapeResult sr = OpRegistry::instance().infer(def.name, kdt, tin, attrs);
    Bufs out;
    for (size_t j = 0; j < sr.shapes.size(); ++j) {
      out.emplace_back(sr.dtypes[j], sr.shapes[j]);
      out.back().poison();
    }
    std::vector<AqTensor> vin, vout;
    for (const Buf& b : in) vin.push_back(abi_view(b));
    for (const Buf& b : out) vout.push_back(abi_view(b));
    for (const Buf& b : grads) vout.push_back(abi_view(b));
    std::vector<const AqTensor*> pin, pout;
    for (const AqTensor& v : vin) pin.push_back(&v);
    for (const AqTensor& v : vout) pout.push_back(&v);
    std::vector<AqAttrValue> av;
    std::vector<const AqAttrValue*> pav;
    for (const AttrValue& a : attrs) av.push_back({sizeof(AqAttrValue), a.type, a.i, a.f});
    for (const AqAttrValue& a : av) pav.push_back(&a);
    std::vector<unsigned char> ws(sr.workspace_bytes);
    AqKernelArgs args{};
    args.struct_size = sizeof args;
    args.device = AQ_DEVICE_CPU;
    args.dtype = to_abi(kdt);
    args.inputs = pin.data();
    args.n_inputs = static_cast<int32_t>(pin.size());
    args.outputs = pout.data();
    args.n_outputs = static_cast<int32_t>(pout.size());
    args.attrs = pav.data();
    args.n_attrs = static_cast<int32_t>(pav.size());
    args.workspace = ws.empty() ? nullptr : ws.data();
    args.workspace_bytes = sr.workspace_bytes;
    AqError err{};
    err.struct_size = sizeof err;
    const AqStatus st = ad->fused(nullptr, &args, &err);
    AQ_CHECK(st == AQ_STATUS_OK, def.name, " fused backward failed: ", err.message);
    return out;
  }
};

inline double projection_value(const Bufs& out, const Bufs& r) {
  double L = 0;
  for (size_t j = 0; j < out.size(); ++j)
    if (r[j].present())
      for (int64_t k = 0; k < out[j].numel(); ++k) L += r[j].get(k) * out[j].get(k);
  return L;
}

// The CPU dtype the float64 reference checks run in: F64 when the op has that kernel, else F32.
inline std::optional<DType> reference_dtype(const OpDef& def) {
  if (def.kernel(Device::CPU, DType::F64)) return DType::F64;
  if (def.kernel(Device::CPU, DType::F32)) return DType::F32;
  return std::nullopt;
}

// The sharding rules of the op: each over 2 and 3 ranks simulated in this process, and over `ranks` when set
// (ops/op_check_sharding.cpp).
void check_sharding(Op& op, Reporter& rep, const RankGroup* ranks);

}  // namespace aq::ops::opcheck
