// op_def.h — operator definitions: what an operator is, independent of who implements it.
//
// An OpDef holds everything the engine needs to plan and run an operator without looking inside it: a
// namespaced name and version, inputs/outputs/attributes with dtypes, a shape function that never reads data
// (so arenas can be sized first), the workspace it asks for, its backward (what is saved, what recomputed,
// whether a kernel exists for it), its tensor-parallel sharding rules (OneFlow's split / broadcast /
// partial-sum per tensor and per input gradient), and its kernels per (device, dtype).
//
// Built-in operators and plugin operators are declared the same way: both are written with the builder of
// include/aqueduct/op_plugin.hpp into the C structs of include/aqueduct/op_abi.h, and both enter through
// OpRegistry::add_abi(), which validates them identically. Built-in kernels then stay in the typed table
// (ops/registry.h, Registry::find<Fn>), the zero-overhead path the GPT-2 model resolves once at construction;
// an OpDef names them in KernelEntry::typed. Plugin kernels are called through OpRegistry::forward/backward
// with tensor views (the generic path), since no C++ type can cross a dlopen boundary reliably; built-ins reach
// that path too through adapters onto their typed kernels (ops/builtin_adapters.cpp), which is how
// `aq-op check` (ops/op_check.h) runs one harness over both.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "aqueduct/op_abi.h"
#include "runtime/tensor.h"

namespace aq::ops {

struct TensorSpec {
  std::string name;
  int32_t dtype = AQ_DTYPE_KERNEL;  // AqDType, or AQ_DTYPE_KERNEL / AQ_DTYPE_KERNEL_MASTER
  int32_t ndim = -1;                // -1: any
  std::string shape;                // documentation ("N,C")
  uint32_t flags = 0;               // AQ_TENSOR_*
};

struct AttrSpec {
  std::string name;
  int32_t type = AQ_ATTR_INT;
  std::string doc;
};

// A value for one attribute, in declaration order.
struct AttrValue {
  int32_t type = AQ_ATTR_INT;
  int64_t i = 0;
  double f = 0.0;
  static AttrValue integer(int64_t v) { return {AQ_ATTR_INT, v, 0.0}; }
  static AttrValue real(double v) { return {AQ_ATTR_FLOAT, 0, v}; }
};

// Typed kernels of a built-in op, by their names in the typed table (ops/registry.h).
struct TypedKernels {
  std::string forward, backward;
  std::vector<std::string> variants;  // fused forms sharing the op's schema family (residual add, GELU epilogue)
};

struct KernelEntry {
  Device device = Device::CPU;
  DType dtype = DType::F32;
  // Generic entry points: a plugin's kernels, or for a built-in the adapters of ops/builtin_adapters.cpp onto its
  // typed kernels (null where it has none: it then runs only through Registry::find).
  AqKernelFn forward = nullptr;
  AqKernelFn backward = nullptr;
  void* user = nullptr;
  bool typed = false;  // true: the typed table holds this (device, dtype)'s kernels, named by OpDef::typed
};

// One legal tensor-parallel placement. Entries are AQ_SBP_* or a split dimension (>= 0), one per input,
// output and input gradient. The step that builds models from a spec consumes these: a tensor whose placement
// is a split is sharded along that dimension over the tensor-parallel group, a PARTIAL_SUM output or gradient
// is all-reduced over that group before use, BROADCAST means replicated.
struct ShardingRule {
  std::string name;
  std::vector<int32_t> inputs, outputs, input_grads;
};

struct OpDef {
  std::string name;  // "ns::op"
  uint32_t version = 1;
  std::string doc;
  std::vector<TensorSpec> inputs, outputs;
  std::vector<AttrSpec> attrs;
  AqShapeFn shape = nullptr;
  void* shape_user = nullptr;
  bool has_backward = false;
  std::vector<int32_t> saved;  // indices: inputs first, then outputs
  std::string recomputed;
  std::vector<KernelEntry> kernels;
  std::vector<ShardingRule> sharding;
  TypedKernels typed;      // built-ins only
  std::string origin;      // "built-in" or "plugin PATH"
  std::string plugin;      // the plugin's name and version ("" for built-ins)
  std::string cuda_archs;  // as the plugin declared them ("" when it declares none)

  const KernelEntry* kernel(Device d, DType t) const;
  std::string tensor_name(int32_t index) const;  // index as in `saved`
};

// The result of a shape function.
struct ShapeResult {
  std::vector<DType> dtypes;
  std::vector<Shape> shapes;
  uint64_t workspace_bytes = 0;
};

// The smallest struct_size accepted for each ABI struct: the end of its last field in release <major>.0. When a
// minor release appends fields these stay as they are, and the appended fields are read only when a plugin's
// struct_size covers them — so plugins of every minor of the major load.
template <typename T>
constexpr size_t abi_required_size();
#define AQ_ABI_REQUIRED(T, last)                \
  template <>                                   \
  constexpr size_t abi_required_size<T>() {     \
    return offsetof(T, last) + sizeof(T::last); \
  }
AQ_ABI_REQUIRED(AqPlugin, cuda_archs)
AQ_ABI_REQUIRED(AqOpDef, n_sharding)
AQ_ABI_REQUIRED(AqTensorSpec, flags)
AQ_ABI_REQUIRED(AqAttrSpec, doc)
AQ_ABI_REQUIRED(AqKernel, user)
AQ_ABI_REQUIRED(AqBackwardSpec, recomputed)
AQ_ABI_REQUIRED(AqShardingRule, input_grads)
#undef AQ_ABI_REQUIRED

// Formats a placement: "S(0)", "S(any)", "B", "P", "-".
std::string sbp_str(int32_t sbp);
// The dtype a spec stands for when the kernel runs in `kernel_dtype`.
DType spec_dtype(int32_t spec, DType kernel_dtype);
// "T", "M" or the dtype's name.
std::string spec_dtype_str(int32_t spec);
AqDType to_abi(DType t);
AqDevice to_abi(Device d);
DType from_abi_dtype(int32_t t);  // throws for a value this host does not know
Device from_abi_device(int32_t d);

class OpRegistry {
 public:
  // Built-in ops are declared on first use (ops/builtin_ops.cpp).
  static OpRegistry& instance();

  // Validates a declaration handed over the C ABI and adds it; refuses with one line (what, where, the fix):
  // a name without a namespace or in "aq::" from a plugin, a name already declared (built-in or other
  // plugin), a struct smaller than this ABI's first release, no shape function, a backward without a backward
  // kernel, a kernel listed twice, a saved index or split dimension out of range. Nothing is added on refusal.
  // `typed` (built-ins): kernels are those of the typed table named there, present for every (device, dtype)
  // where the forward is registered.
  void add_abi(const AqOpDef& def, const std::string& origin, const std::string& plugin, const std::string& cuda_archs,
               const TypedKernels* typed = nullptr);
  // Converts and validates without adding (the loader converts all of a plugin's ops first, so that one bad op
  // refuses the whole plugin), and adds a converted op (refusing a name already declared).
  OpDef convert(const AqOpDef& def, const std::string& origin, const std::string& plugin, const std::string& cuda_archs,
                const TypedKernels* typed) const;
  void add(OpDef def);
  // Throws when `name` is already declared, naming who declared it.
  void check_new(const std::string& name, const std::string& origin) const;

  const OpDef* find(const std::string& name) const;
  const OpDef& get(const std::string& name) const;  // throws "no operator ..." listing the known ones
  std::vector<const OpDef*> list() const;           // sorted by name

  // The op's shape function on input descriptions (data never read); checks input count, dtypes and ranks
  // against the declaration first.
  ShapeResult infer(const std::string& name, DType kernel_dtype, const std::vector<Tensor>& inputs,
                    const std::vector<AttrValue>& attrs) const;

  // The generic call path: tensor views in, declared order. Output shapes and dtypes are checked against the
  // shape function before the kernel runs. A CPU workspace is allocated here when `workspace` is null.
  void forward(const std::string& name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
               const std::vector<AttrValue>& attrs, void* workspace = nullptr, void* stream = nullptr) const;
  // saved: the tensors of OpDef::saved in order; grad_outputs: one per output (undefined Tensor() for none);
  // grad_inputs: one per input (undefined Tensor() where no gradient is wanted). The kernel's dtype and device
  // are those of the first gradient given. `workspace` is passed through as the caller sized it (the forward's
  // shape function reports the forward's need; none by default).
  void backward(const std::string& name, const std::vector<Tensor>& saved, const std::vector<Tensor>& grad_outputs,
                const std::vector<Tensor>& grad_inputs, const std::vector<AttrValue>& attrs, void* workspace = nullptr,
                void* stream = nullptr) const;

 private:
  std::map<std::string, std::unique_ptr<OpDef>> ops_;
};

// Declares every built-in operator (ops/builtin_ops.cpp); called once by OpRegistry::instance().
void declare_builtin_ops(OpRegistry& r);

}  // namespace aq::ops
