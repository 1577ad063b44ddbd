// op_plugin.hpp — a header-only C++ layer over op_abi.h for plugin authors.
//
// Everything here compiles into the plugin; nothing of it crosses the boundary. The host sees only the C
// structs of op_abi.h, so a plugin needs these two headers and no Aqueduct library at all. Exceptions thrown
// by your shape functions and kernels (aq::plugin::fail, or any std::exception) are caught at the boundary
// and become a status with a one-line message.
//
//   #include <aqueduct/op_plugin.hpp>
//   static void fwd(aq::plugin::KernelCall& k) { ... k.in(0).data<float>() ... }
//   AQ_PLUGIN(p) {
//     p.name("myorg-activations").version("1.0.0");
//     p.op("myorg::squared_relu", 1)
//         .input("x", AQ_DTYPE_KERNEL).output("y", AQ_DTYPE_KERNEL)
//         .shape([](aq::plugin::ShapeCall& s) { s.out(0) = s.in(0); })
//         .saves({"x"})
//         .kernel(AQ_DEVICE_CPU, AQ_DTYPE_F32, fwd, bwd)
//         .sharding("elementwise", {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY}, {AQ_SBP_SPLIT_ANY});
//   }
#pragma once

#include <cstring>
#include <deque>
#include <exception>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "aqueduct/op_abi.h"

namespace aq::plugin {

class Failure : public std::runtime_error {
 public:
  Failure(AqStatus status, const std::string& message) : std::runtime_error(message), status_(status) {}
  AqStatus status() const { return status_; }

 private:
  AqStatus status_;
};

[[noreturn]] inline void fail(const std::string& message, AqStatus status = AQ_STATUS_INVALID_ARGUMENT) {
  throw Failure(status, message);
}

// A tensor handed to a kernel.
class TensorRef {
 public:
  explicit TensorRef(const AqTensor* t) : t_(t) {}
  bool present() const { return t_ != nullptr && t_->data != nullptr; }
  int ndim() const { return t_->ndim; }
  int64_t dim(int i) const { return t_->shape[i]; }
  int64_t numel() const { return aq_tensor_numel(t_); }
  AqDType dtype() const { return static_cast<AqDType>(t_->dtype); }
  bool contiguous() const { return aq_tensor_is_contiguous(t_) != 0; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(t_->data);
  }

 private:
  const AqTensor* t_;
};

class KernelCall {
 public:
  explicit KernelCall(const AqKernelArgs* a) : a_(a) {}
  int n_in() const { return a_->n_inputs; }
  int n_out() const { return a_->n_outputs; }
  TensorRef in(int i) const { return TensorRef(a_->inputs[i]); }
  TensorRef out(int i) const { return TensorRef(a_->outputs[i]); }
  int64_t attr_int(int i) const { return a_->attrs[i]->i; }
  double attr_float(int i) const { return a_->attrs[i]->f; }
  AqDType dtype() const { return static_cast<AqDType>(a_->dtype); }
  AqDevice device() const { return static_cast<AqDevice>(a_->device); }
  void* workspace() const { return a_->workspace; }
  void* stream() const { return a_->stream; }

 private:
  const AqKernelArgs* a_;
};

class ShapeCall {
 public:
  explicit ShapeCall(AqShapeArgs* a) : a_(a) {}
  const AqTensorDesc& in(int i) const { return *a_->inputs[i]; }
  AqTensorDesc& out(int i) const { return *a_->outputs[i]; }
  int64_t attr_int(int i) const { return a_->attrs[i]->i; }
  double attr_float(int i) const { return a_->attrs[i]->f; }
  AqDType kernel_dtype() const { return static_cast<AqDType>(a_->kernel_dtype); }
  void workspace(uint64_t bytes) const { a_->workspace_bytes = bytes; }

 private:
  AqShapeArgs* a_;
};

using KernelBody = void (*)(KernelCall&);
using ShapeBody = void (*)(ShapeCall&);

namespace detail {

template <typename Fn>
AqStatus guarded(AqError* error, Fn&& fn) {
  try {
    fn();
    return AQ_STATUS_OK;
  } catch (const Failure& e) {
    return aq_error_set(error, e.status(), "%s", e.what());
  } catch (const std::exception& e) {
    return aq_error_set(error, AQ_STATUS_INTERNAL, "%s", e.what());
  } catch (...) {
    return aq_error_set(error, AQ_STATUS_INTERNAL, "unknown exception in a plugin kernel");
  }
}

struct KernelPair {
  KernelBody forward, backward;
};

inline AqStatus forward_trampoline(void* user, const AqKernelArgs* args, AqError* error) {
  return guarded(error, [&] {
    KernelCall k(args);
    static_cast<KernelPair*>(user)->forward(k);
  });
}
inline AqStatus backward_trampoline(void* user, const AqKernelArgs* args, AqError* error) {
  return guarded(error, [&] {
    KernelCall k(args);
    static_cast<KernelPair*>(user)->backward(k);
  });
}
inline AqStatus shape_trampoline(void* user, AqShapeArgs* args, AqError* error) {
  return guarded(error, [&] {
    ShapeCall s(args);
    reinterpret_cast<ShapeBody>(user)(s);
  });
}

}  // namespace detail

// One operator under construction; the storage of every string and array lives in the Builder (stable
// addresses: deques and unique_ptrs), so the C structs can point into it.
class OpBuilder {
 public:
  OpBuilder(std::string name, uint32_t version) : name_(std::move(name)), version_(version) {}

  OpBuilder& doc(std::string d) {
    doc_ = std::move(d);
    return *this;
  }
  OpBuilder& input(std::string name, int32_t dtype, int32_t ndim = -1, std::string shape = "", uint32_t flags = 0) {
    inputs_.push_back({std::move(name), dtype, ndim, std::move(shape), flags});
    return *this;
  }
  OpBuilder& output(std::string name, int32_t dtype, int32_t ndim = -1, std::string shape = "", uint32_t flags = 0) {
    outputs_.push_back({std::move(name), dtype, ndim, std::move(shape), flags});
    return *this;
  }
  OpBuilder& attr(std::string name, AqAttrType type, std::string doc = "") {
    attrs_.push_back({std::move(name), type, std::move(doc)});
    return *this;
  }
  OpBuilder& shape(ShapeBody fn) {
    shape_ = fn;
    return *this;
  }
  // Declares a backward that keeps these tensors (names of inputs or outputs) for it.
  OpBuilder& saves(std::initializer_list<std::string> names, std::string recomputed = "") {
    has_backward_ = true;
    saved_names_.assign(names.begin(), names.end());
    recomputed_ = std::move(recomputed);
    return *this;
  }
  OpBuilder& kernel(AqDevice device, AqDType dtype, KernelBody forward, KernelBody backward = nullptr) {
    kernels_.push_back({device, dtype, std::make_unique<detail::KernelPair>(detail::KernelPair{forward, backward})});
    return *this;
  }
  OpBuilder& sharding(std::string name, std::vector<int32_t> inputs, std::vector<int32_t> outputs,
                      std::vector<int32_t> input_grads) {
    rules_.push_back({std::move(name), std::move(inputs), std::move(outputs), std::move(input_grads)});
    return *this;
  }

  // Fills `def`; arity mistakes in the declaration are reported here, in the plugin, with the op's name.
  void build(AqOpDef& def) {
    for (const Rule& r : rules_)
      if (r.inputs.size() != inputs_.size() || r.outputs.size() != outputs_.size() ||
          r.input_grads.size() != inputs_.size())
        fail(name_ + ": sharding rule \"" + r.name + "\" gives " + std::to_string(r.inputs.size()) + " inputs, " +
             std::to_string(r.outputs.size()) + " outputs and " + std::to_string(r.input_grads.size()) +
             " input gradients; the op has " + std::to_string(inputs_.size()) + " inputs and " +
             std::to_string(outputs_.size()) + " outputs");
    c_attrs_.clear();  // build() may run again after more declarations: start the C view afresh
    c_kernels_.clear();
    c_rules_.clear();
    saved_.clear();
    c_inputs_ = specs(inputs_);
    c_outputs_ = specs(outputs_);
    for (const Attr& a : attrs_) c_attrs_.push_back({sizeof(AqAttrSpec), a.name.c_str(), a.type, a.doc.c_str()});
    for (const Kernel& k : kernels_)
      c_kernels_.push_back({sizeof(AqKernel), k.device, k.dtype, &detail::forward_trampoline,
                            k.pair->backward ? &detail::backward_trampoline : nullptr, k.pair.get()});
    for (const Rule& r : rules_)
      c_rules_.push_back(
          {sizeof(AqShardingRule), r.name.c_str(), r.inputs.data(), r.outputs.data(), r.input_grads.data()});
    for (const std::string& s : saved_names_) saved_.push_back(index_of(s));
    backward_ = {sizeof(AqBackwardSpec), saved_.data(), static_cast<int32_t>(saved_.size()),
                 recomputed_.empty() ? nullptr : recomputed_.c_str()};
    std::memset(&def, 0, sizeof def);
    def.struct_size = sizeof(AqOpDef);
    def.name = name_.c_str();
    def.version = version_;
    def.doc = doc_.c_str();
    def.inputs = c_inputs_.data();
    def.n_inputs = static_cast<int32_t>(c_inputs_.size());
    def.outputs = c_outputs_.data();
    def.n_outputs = static_cast<int32_t>(c_outputs_.size());
    def.attrs = c_attrs_.data();
    def.n_attrs = static_cast<int32_t>(c_attrs_.size());
    def.shape = shape_ ? &detail::shape_trampoline : nullptr;
    def.shape_user = reinterpret_cast<void*>(shape_);
    def.backward = has_backward_ ? &backward_ : nullptr;
    def.kernels = c_kernels_.data();
    def.n_kernels = static_cast<int32_t>(c_kernels_.size());
    def.sharding = c_rules_.data();
    def.n_sharding = static_cast<int32_t>(c_rules_.size());
  }

 private:
  struct Tensor {
    std::string name;
    int32_t dtype, ndim;
    std::string shape;
    uint32_t flags;
  };
  struct Attr {
    std::string name;
    AqAttrType type;
    std::string doc;
  };
  struct Kernel {
    AqDevice device;
    AqDType dtype;
    std::unique_ptr<detail::KernelPair> pair;
  };
  struct Rule {
    std::string name;
    std::vector<int32_t> inputs, outputs, input_grads;
  };
  static std::vector<AqTensorSpec> specs(const std::vector<Tensor>& ts) {
    std::vector<AqTensorSpec> out;
    for (const Tensor& t : ts)
      out.push_back({sizeof(AqTensorSpec), t.name.c_str(), t.dtype, t.ndim, t.shape.c_str(), t.flags});
    return out;
  }
  int32_t index_of(const std::string& n) const {
    for (size_t i = 0; i < inputs_.size(); ++i)
      if (inputs_[i].name == n) return static_cast<int32_t>(i);
    for (size_t i = 0; i < outputs_.size(); ++i)
      if (outputs_[i].name == n) return static_cast<int32_t>(inputs_.size() + i);
    fail(name_ + ": the backward saves \"" + n + "\", which is neither an input nor an output of the op");
  }

  std::string name_, doc_, recomputed_;
  uint32_t version_;
  std::vector<Tensor> inputs_, outputs_;
  std::vector<Attr> attrs_;
  ShapeBody shape_ = nullptr;
  bool has_backward_ = false;
  std::vector<std::string> saved_names_;
  std::vector<Kernel> kernels_;
  std::vector<Rule> rules_;
  // The C view, filled by build().
  std::vector<AqTensorSpec> c_inputs_, c_outputs_;
  std::vector<AqAttrSpec> c_attrs_;
  std::vector<AqKernel> c_kernels_;
  std::vector<AqShardingRule> c_rules_;
  std::vector<int32_t> saved_;
  AqBackwardSpec backward_{};
};

class Builder {
 public:
  Builder& name(std::string n) {
    name_ = std::move(n);
    return *this;
  }
  Builder& version(std::string v) {
    version_ = std::move(v);
    return *this;
  }
  // The CUDA architectures the plugin's kernels were compiled for, e.g. "80;90" (CMake's list syntax).
  Builder& cuda_archs(std::string a) {
    cuda_archs_ = std::move(a);
    return *this;
  }
  OpBuilder& op(std::string name, uint32_t version) {
    ops_.push_back(std::make_unique<OpBuilder>(std::move(name), version));
    return *ops_.back();
  }

  const AqPlugin* build() {
    c_ops_.resize(ops_.size());
    for (size_t i = 0; i < ops_.size(); ++i) ops_[i]->build(c_ops_[i]);
    std::memset(&plugin_, 0, sizeof plugin_);
    plugin_.struct_size = sizeof(AqPlugin);
    plugin_.abi_major = AQ_OP_ABI_MAJOR;
    plugin_.abi_minor = AQ_OP_ABI_MINOR;
    plugin_.name = name_.c_str();
    plugin_.version = version_.c_str();
    plugin_.ops = c_ops_.data();
    plugin_.n_ops = static_cast<int32_t>(c_ops_.size());
    plugin_.cuda_archs = cuda_archs_.empty() ? nullptr : cuda_archs_.c_str();
    return &plugin_;
  }

 private:
  std::string name_ = "unnamed", version_ = "0", cuda_archs_;
  std::vector<std::unique_ptr<OpBuilder>> ops_;
  std::vector<AqOpDef> c_ops_;
  AqPlugin plugin_{};
};

// The body of aq_plugin_init for a plugin that declares its ops in `define`: refuses a host of another major,
// builds the description once (it lives until the process ends) and turns exceptions into a status.
inline AqStatus init(const AqHost* host, const AqPlugin** out, AqError* error, void (*define)(Builder&)) {
  if (host == nullptr || host->struct_size < sizeof(AqHost) || host->abi_major != AQ_OP_ABI_MAJOR)
    return aq_error_set(error, AQ_STATUS_UNSUPPORTED,
                        "the plugin was built for operator ABI %d.%d and cannot use this host's ABI %d",
                        AQ_OP_ABI_MAJOR, AQ_OP_ABI_MINOR, host ? static_cast<int>(host->abi_major) : -1);
  return detail::guarded(error, [&] {
    static Builder* builder = nullptr;
    static const AqPlugin* plugin = nullptr;
    if (plugin == nullptr) {
      builder = new Builder();  // never freed: the host may call into it until the process ends
      define(*builder);
      plugin = builder->build();
    }
    *out = plugin;
  });
}

}  // namespace aq::plugin

// Defines the plugin's entry point; the block that follows declares its operators on `builder`.
#define AQ_PLUGIN(builder)                                                                                        \
  static void aq_plugin_define(::aq::plugin::Builder& builder);                                                   \
  extern "C" AQ_PLUGIN_EXPORT AqStatus aq_plugin_init(const AqHost* host, const AqPlugin** out, AqError* error) { \
    return ::aq::plugin::init(host, out, error, &aq_plugin_define);                                               \
  }                                                                                                               \
  static void aq_plugin_define(::aq::plugin::Builder& builder)
