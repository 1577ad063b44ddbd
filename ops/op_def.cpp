// op_def.cpp — the operator registry: validation of declarations that arrive over the C ABI, shape inference
// and the generic (tensor-view) call path. See op_def.h.
#include "ops/op_def.h"

#include <algorithm>
#include <set>

#include "ops/registry.h"

namespace aq::ops {

namespace {

// Arrays of structs written by a plugin are walked with the first element's struct_size as the stride: a
// plugin compiled against a newer minor has larger structs (fields appended), and indexing them with this
// host's sizeof would land inside the wrong element.
template <typename T>
const T* element(const T* base, int32_t i) {
  return reinterpret_cast<const T*>(reinterpret_cast<const char*>(base) + static_cast<size_t>(i) * base->struct_size);
}

template <typename T>
void check_size(const T* p, const char* type, const std::string& where) {
  AQ_CHECK(p->struct_size >= abi_required_size<T>(), where, ": ", type, ".struct_size is ", p->struct_size,
           " bytes, operator ABI ", AQ_OP_ABI_MAJOR, ".x needs at least ", abi_required_size<T>(),
           "; rebuild the plugin against Aqueduct's installed headers");
}

bool known_dtype(int32_t t) { return t >= AQ_DTYPE_F32 && t <= AQ_DTYPE_U16; }
bool known_spec_dtype(int32_t t) { return known_dtype(t) || t == AQ_DTYPE_KERNEL || t == AQ_DTYPE_KERNEL_MASTER; }

std::string cstr(const char* s) { return s ? std::string(s) : std::string(); }

std::vector<TensorSpec> convert_tensors(const AqTensorSpec* specs, int32_t n, const std::string& where,
                                        const char* what) {
  AQ_CHECK(n >= 0 && n <= 64, where, ": ", n, " ", what, "; an op has 0 to 64");
  AQ_CHECK(n == 0 || specs != nullptr, where, ": ", n, " ", what, " declared but the array is NULL");
  std::vector<TensorSpec> out;
  std::set<std::string> names;
  for (int32_t i = 0; i < n; ++i) {
    const AqTensorSpec* s = i == 0 ? specs : element(specs, i);
    check_size(s, "AqTensorSpec", where);
    AQ_CHECK(s->name && *s->name, where, ": ", what, " ", i, " has no name");
    AQ_CHECK(names.insert(s->name).second, where, ": two ", what, " are named \"", s->name, "\"");
    AQ_CHECK(known_spec_dtype(s->dtype), where, ": ", what, " \"", s->name, "\" has dtype ", s->dtype,
             ", not an AqDType of ABI ", AQ_OP_ABI_MAJOR, ".", AQ_OP_ABI_MINOR);
    AQ_CHECK(s->ndim >= -1 && s->ndim <= AQ_MAX_DIMS, where, ": ", what, " \"", s->name, "\" has ndim ", s->ndim,
             "; use -1 (any) or 0 … ", AQ_MAX_DIMS);
    out.push_back({s->name, s->dtype, s->ndim, cstr(s->shape), s->flags});
  }
  return out;
}

void check_sbp(int32_t sbp, const TensorSpec& t, const std::string& where, const std::string& rule, bool grad) {
  const std::string what =
      str(where, ": sharding rule \"", rule, "\" places ", grad ? "the gradient of " : "", "\"", t.name, "\" as ", sbp);
  AQ_CHECK(sbp >= AQ_SBP_NONE, what, ", which is no AQ_SBP_* value or split dimension");
  AQ_CHECK(sbp < 0 || t.ndim < 0 || sbp < t.ndim, what, " but it has only ", t.ndim, " dimensions");
}

}  // namespace

const KernelEntry* OpDef::kernel(Device d, DType t) const {
  for (const KernelEntry& k : kernels)
    if (k.device == d && k.dtype == t) return &k;
  return nullptr;
}

std::string OpDef::tensor_name(int32_t index) const {
  const size_t i = static_cast<size_t>(index);
  return i < inputs.size() ? inputs[i].name : outputs.at(i - inputs.size()).name;
}

std::string sbp_str(int32_t sbp) {
  if (sbp >= 0) return str("S(", sbp, ")");
  switch (sbp) {
    case AQ_SBP_SPLIT_ANY:
      return "S(any)";
    case AQ_SBP_BROADCAST:
      return "B";
    case AQ_SBP_PARTIAL_SUM:
      return "P";
    default:
      return "-";
  }
}

AqDType to_abi(DType t) {
  // The ABI's values are fixed; DType's order happens to match today, but spell it out so a reorder of DType
  // cannot silently change what plugins receive.
  switch (t) {
    case DType::F32:
      return AQ_DTYPE_F32;
    case DType::F64:
      return AQ_DTYPE_F64;
    case DType::BF16:
      return AQ_DTYPE_BF16;
    case DType::F16:
      return AQ_DTYPE_F16;
    case DType::I32:
      return AQ_DTYPE_I32;
    case DType::U16:
      return AQ_DTYPE_U16;
  }
  AQ_ASSERT(false, "dtype ", static_cast<int>(t));
}

AqDevice to_abi(Device d) { return d == Device::CUDA ? AQ_DEVICE_CUDA : AQ_DEVICE_CPU; }

DType from_abi_dtype(int32_t t) {
  switch (t) {
    case AQ_DTYPE_F32:
      return DType::F32;
    case AQ_DTYPE_F64:
      return DType::F64;
    case AQ_DTYPE_BF16:
      return DType::BF16;
    case AQ_DTYPE_F16:
      return DType::F16;
    case AQ_DTYPE_I32:
      return DType::I32;
    case AQ_DTYPE_U16:
      return DType::U16;
    default:
      fail(str("dtype value ", t, " is not an AqDType of operator ABI ", AQ_OP_ABI_MAJOR, ".", AQ_OP_ABI_MINOR));
  }
}

Device from_abi_device(int32_t d) {
  AQ_CHECK(d == AQ_DEVICE_CPU || d == AQ_DEVICE_CUDA, "device value ", d, " is not an AqDevice of operator ABI ",
           AQ_OP_ABI_MAJOR, ".", AQ_OP_ABI_MINOR, " (0 cpu, 1 cuda)");
  return d == AQ_DEVICE_CUDA ? Device::CUDA : Device::CPU;
}

DType spec_dtype(int32_t spec, DType kernel_dtype) {
  if (spec == AQ_DTYPE_KERNEL) return kernel_dtype;
  if (spec == AQ_DTYPE_KERNEL_MASTER) return kernel_dtype == DType::BF16 ? DType::F32 : kernel_dtype;
  return from_abi_dtype(spec);
}

std::string spec_dtype_str(int32_t spec) {
  if (spec == AQ_DTYPE_KERNEL) return "T";
  if (spec == AQ_DTYPE_KERNEL_MASTER) return "M";
  return dtype_name(from_abi_dtype(spec));
}

OpRegistry& OpRegistry::instance() {
  static OpRegistry* r = [] {
    auto* reg = new OpRegistry();
    declare_builtin_ops(*reg);
    return reg;
  }();
  return *r;
}

OpDef OpRegistry::convert(const AqOpDef& d, const std::string& origin, const std::string& plugin,
                          const std::string& cuda_archs, const TypedKernels* typed) const {
  check_size(&d, "AqOpDef", origin);
  AQ_CHECK(d.name && *d.name, origin, ": an operator has no name");
  OpDef def;
  def.name = d.name;
  const std::string where = str(origin, ": operator \"", def.name, "\"");
  const size_t sep = def.name.find("::");
  AQ_CHECK(sep != std::string::npos && sep > 0 && sep + 2 < def.name.size() &&
               def.name.find("::", sep + 2) == std::string::npos,
           where, " needs one namespace, as in \"myorg::", def.name, "\"");
  AQ_CHECK(typed != nullptr || def.name.compare(0, sep, "aq") != 0, where,
           " uses the namespace \"aq::\", which is Aqueduct's own; use your organisation's");
  def.version = d.version;
  def.doc = cstr(d.doc);
  def.origin = origin;
  def.plugin = plugin;
  def.cuda_archs = cuda_archs;
  def.inputs = convert_tensors(d.inputs, d.n_inputs, where, "inputs");
  def.outputs = convert_tensors(d.outputs, d.n_outputs, where, "outputs");
  for (const TensorSpec& o : def.outputs)
    for (const TensorSpec& i : def.inputs)
      AQ_CHECK(o.name != i.name, where, ": \"", o.name, "\" is both an input and an output; rename one");
  AQ_CHECK(d.n_attrs >= 0 && (d.n_attrs == 0 || d.attrs), where, ": ", d.n_attrs, " attributes but no array");
  for (int32_t i = 0; i < d.n_attrs; ++i) {
    const AqAttrSpec* a = i == 0 ? d.attrs : element(d.attrs, i);
    check_size(a, "AqAttrSpec", where);
    AQ_CHECK(a->name && *a->name, where, ": attribute ", i, " has no name");
    AQ_CHECK(a->type == AQ_ATTR_INT || a->type == AQ_ATTR_FLOAT, where, ": attribute \"", a->name, "\" has type ",
             a->type, "; use AQ_ATTR_INT or AQ_ATTR_FLOAT");
    def.attrs.push_back({a->name, a->type, cstr(a->doc)});
  }
  AQ_CHECK(d.shape != nullptr, where, " has no shape function; the engine sizes outputs and workspaces with it ",
           "before anything runs");
  def.shape = d.shape;
  def.shape_user = d.shape_user;

  const int32_t n_tensors = static_cast<int32_t>(def.inputs.size() + def.outputs.size());
  if (d.backward) {
    check_size(d.backward, "AqBackwardSpec", where);
    def.has_backward = true;
    AQ_CHECK(d.backward->n_saved >= 0 && (d.backward->n_saved == 0 || d.backward->saved), where,
             ": the backward saves ", d.backward->n_saved, " tensors but gives no array of their indices");
    for (int32_t i = 0; i < d.backward->n_saved; ++i) {
      const int32_t s = d.backward->saved[i];
      AQ_CHECK(s >= 0 && s < n_tensors, where, ": the backward saves tensor ", s, "; indices run 0 … ", n_tensors - 1,
               " (inputs first, then outputs)");
      def.saved.push_back(s);
    }
    def.recomputed = cstr(d.backward->recomputed);
  }

  if (typed) {
    // Built-in: its kernels are the typed table's, wherever the forward is registered.
    def.typed = *typed;
    const Registry& reg = Registry::instance();
    for (Device dev : {Device::CPU, Device::CUDA})
      for (DType t : {DType::F32, DType::F64, DType::BF16}) {
        if (!reg.contains(typed->forward, dev, t)) continue;
        AQ_CHECK(!def.has_backward || reg.contains(typed->backward, dev, t), where, " declares a backward but \"",
                 typed->backward, "\" has no kernel on ", device_name(dev), " for ", dtype_name(t), " where \"",
                 typed->forward, "\" has one; register it in ops/register_builtin.cpp");
        KernelEntry k;
        k.device = dev;
        k.dtype = t;
        k.typed = true;
        def.kernels.push_back(k);
      }
  } else {
    AQ_CHECK(d.n_kernels > 0 && d.kernels, where, " declares no kernel; add one per (device, dtype) it runs on");
    for (int32_t i = 0; i < d.n_kernels; ++i) {
      const AqKernel* k = i == 0 ? d.kernels : element(d.kernels, i);
      check_size(k, "AqKernel", where);
      KernelEntry e;
      e.device = from_abi_device(k->device);
      e.dtype = from_abi_dtype(k->dtype);
      const std::string kn = str(where, ": kernel ", device_name(e.device), "/", dtype_name(e.dtype));
      AQ_CHECK(def.kernel(e.device, e.dtype) == nullptr, kn, " is listed twice");
      AQ_CHECK(k->forward != nullptr, kn, " has no forward function");
      AQ_CHECK(!def.has_backward || k->backward != nullptr, kn,
               " has no backward function, but the op declares a backward; give the kernel its backward or "
               "declare no backward (AqOpDef.backward = NULL)");
      e.forward = k->forward;
      e.backward = k->backward;
      e.user = k->user;
      def.kernels.push_back(e);
    }
  }

  AQ_CHECK(d.n_sharding >= 0 && (d.n_sharding == 0 || d.sharding), where, ": ", d.n_sharding,
           " sharding rules but no array");
  for (int32_t r = 0; r < d.n_sharding; ++r) {
    const AqShardingRule* s = r == 0 ? d.sharding : element(d.sharding, r);
    check_size(s, "AqShardingRule", where);
    ShardingRule rule;
    rule.name = s->name ? s->name : str("rule ", r);
    AQ_CHECK((def.inputs.empty() || (s->inputs && s->input_grads)) && (def.outputs.empty() || s->outputs), where,
             ": sharding rule \"", rule.name, "\" lacks a placement array (inputs, outputs and input_grads are ",
             "required, one entry per tensor)");
    for (size_t i = 0; i < def.inputs.size(); ++i) {
      check_sbp(s->inputs[i], def.inputs[i], where, rule.name, false);
      check_sbp(s->input_grads[i], def.inputs[i], where, rule.name, true);
      rule.inputs.push_back(s->inputs[i]);
      rule.input_grads.push_back(s->input_grads[i]);
    }
    for (size_t i = 0; i < def.outputs.size(); ++i) {
      check_sbp(s->outputs[i], def.outputs[i], where, rule.name, false);
      rule.outputs.push_back(s->outputs[i]);
    }
    def.sharding.push_back(std::move(rule));
  }
  return def;
}

void OpRegistry::check_new(const std::string& name, const std::string& origin) const {
  auto it = ops_.find(name);
  AQ_CHECK(it == ops_.end(), origin, ": operator \"", name, "\" is already declared by ", it->second->origin,
           "; rename it (a different namespace or name) or load only one of the two");
}

void OpRegistry::add(OpDef def) {
  check_new(def.name, def.origin);
  const std::string name = def.name;
  ops_.emplace(name, std::make_unique<OpDef>(std::move(def)));
}

void OpRegistry::add_abi(const AqOpDef& def, const std::string& origin, const std::string& plugin,
                         const std::string& cuda_archs, const TypedKernels* typed) {
  add(convert(def, origin, plugin, cuda_archs, typed));
}

const OpDef* OpRegistry::find(const std::string& name) const {
  auto it = ops_.find(name);
  return it == ops_.end() ? nullptr : it->second.get();
}

const OpDef& OpRegistry::get(const std::string& name) const {
  const OpDef* d = find(name);
  if (!d) {
    std::string known;
    for (const auto& [n, _] : ops_) known += (known.empty() ? "" : ", ") + n;
    fail(str("no operator \"", name, "\" is declared; known: ", known,
             " (load a plugin with --plugin or AQ_PLUGIN_PATH)"));
  }
  return *d;
}

std::vector<const OpDef*> OpRegistry::list() const {
  std::vector<const OpDef*> out;
  for (const auto& [n, d] : ops_) out.push_back(d.get());
  return out;
}

namespace {

AqTensorDesc describe(const Tensor& t) {
  AqTensorDesc d{};
  d.struct_size = sizeof d;
  d.dtype = to_abi(t.dtype());
  d.ndim = t.defined() && t.raw() ? t.ndim() : -1;
  for (int i = 0; i < t.ndim() && i < AQ_MAX_DIMS; ++i) d.shape[i] = t.dim(i);
  return d;
}

AqTensor view(const Tensor& t) {
  AqTensor v{};
  v.struct_size = sizeof v;
  v.data = t.raw();
  v.dtype = to_abi(t.dtype());
  v.device = to_abi(t.device());
  v.ndim = t.ndim();
  int64_t stride = 1;
  for (int i = t.ndim() - 1; i >= 0; --i) {
    v.shape[i] = t.dim(i);
    v.strides[i] = stride;
    stride *= t.dim(i);
  }
  return v;
}

struct Attrs {
  std::vector<AqAttrValue> values;
  std::vector<const AqAttrValue*> ptrs;
};

Attrs attrs_for(const OpDef& def, const std::vector<AttrValue>& attrs) {
  AQ_CHECK(attrs.size() == def.attrs.size(), def.name, " takes ", def.attrs.size(), " attributes, ", attrs.size(),
           " given");
  Attrs a;
  for (size_t i = 0; i < attrs.size(); ++i) {
    AQ_CHECK(attrs[i].type == def.attrs[i].type, def.name, ": attribute \"", def.attrs[i].name, "\" is ",
             def.attrs[i].type == AQ_ATTR_INT ? "an integer" : "a float", ", given the other kind");
    a.values.push_back({sizeof(AqAttrValue), attrs[i].type, attrs[i].i, attrs[i].f});
  }
  for (const AqAttrValue& v : a.values) a.ptrs.push_back(&v);
  return a;
}

std::string status_line(const OpDef& def, const char* what, const AqError& err, AqStatus st) {
  const std::string msg = err.message[0] ? std::string(err.message) : str("status ", static_cast<int>(st));
  return str(def.name, " (", def.origin, ") ", what, " failed: ", msg);
}

// The dtype the kernel runs in: that of the first present tensor declared with the kernel's dtype.
DType kernel_dtype_of(const OpDef& def, const std::vector<Tensor>& inputs) {
  for (size_t i = 0; i < inputs.size() && i < def.inputs.size(); ++i)
    if (def.inputs[i].dtype == AQ_DTYPE_KERNEL && inputs[i].raw()) return inputs[i].dtype();
  for (const Tensor& t : inputs)
    if (t.raw()) return t.dtype();
  fail(str(def.name, ": no input tensor given, so the kernel's dtype is unknown"));
}

}  // namespace

ShapeResult OpRegistry::infer(const std::string& name, DType kernel_dtype, const std::vector<Tensor>& inputs,
                              const std::vector<AttrValue>& attrs) const {
  const OpDef& def = get(name);
  AQ_CHECK(inputs.size() == def.inputs.size(), name, " takes ", def.inputs.size(), " inputs, ", inputs.size(),
           " given");
  std::vector<AqTensorDesc> in(inputs.size());
  std::vector<const AqTensorDesc*> in_ptr;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& s = def.inputs[i];
    const Tensor& t = inputs[i];
    in[i] = describe(t);
    in_ptr.push_back(&in[i]);
    if (in[i].ndim < 0) {
      AQ_CHECK(s.flags & AQ_TENSOR_OPTIONAL, name, ": input \"", s.name, "\" is required but absent");
      continue;
    }
    const DType want = spec_dtype(s.dtype, kernel_dtype);
    AQ_CHECK(t.dtype() == want, name, ": input \"", s.name, "\" is ", dtype_name(t.dtype()), ", the ",
             dtype_name(kernel_dtype), " kernel takes ", dtype_name(want));
    AQ_CHECK(s.ndim < 0 || t.ndim() == s.ndim, name, ": input \"", s.name, "\" has ", t.ndim(), " dimensions ",
             shape_str(t.shape()), ", the op takes ", s.ndim, " (", s.shape, ")");
    AQ_CHECK(t.ndim() <= AQ_MAX_DIMS, name, ": input \"", s.name, "\" has ", t.ndim(), " dimensions; at most ",
             AQ_MAX_DIMS, " cross the operator ABI");
  }
  Attrs a = attrs_for(def, attrs);
  std::vector<AqTensorDesc> out(def.outputs.size());
  std::vector<AqTensorDesc*> out_ptr;
  for (AqTensorDesc& o : out) {
    o.struct_size = sizeof o;
    o.ndim = -2;  // unset: a shape function that forgets an output is caught below
    out_ptr.push_back(&o);
  }
  AqShapeArgs args{};
  args.struct_size = sizeof args;
  args.kernel_dtype = to_abi(kernel_dtype);
  args.inputs = in_ptr.data();
  args.n_inputs = static_cast<int32_t>(in_ptr.size());
  args.attrs = a.ptrs.data();
  args.n_attrs = static_cast<int32_t>(a.ptrs.size());
  args.outputs = out_ptr.data();
  args.n_outputs = static_cast<int32_t>(out_ptr.size());
  AqError err{};
  err.struct_size = sizeof err;
  const AqStatus st = def.shape(def.shape_user, &args, &err);
  AQ_CHECK(st == AQ_STATUS_OK, status_line(def, "shape function", err, st));
  ShapeResult r;
  r.workspace_bytes = args.workspace_bytes;
  for (size_t i = 0; i < out.size(); ++i) {
    AQ_CHECK(out[i].ndim >= 0 && out[i].ndim <= AQ_MAX_DIMS, name, ": the shape function left output \"",
             def.outputs[i].name, "\" with ndim ", out[i].ndim, "; it must set every output's dtype, ndim and shape");
    r.dtypes.push_back(from_abi_dtype(out[i].dtype));
    r.shapes.emplace_back(out[i].shape, out[i].shape + out[i].ndim);
  }
  return r;
}

namespace {

// One call of a generic kernel: the tensors as C views (inputs: the groups given, in order), the attributes, the
// workspace and stream, and the kernel's status turned into one line naming the op.
void invoke(const OpDef& def, const char* what, AqKernelFn fn, void* user, Device dev, DType kdt,
            std::initializer_list<const std::vector<Tensor>*> input_groups, const std::vector<Tensor>& outputs,
            const std::vector<AttrValue>& attrs, void* workspace, uint64_t workspace_bytes, void* stream) {
  std::vector<AqTensor> in_v, out_v;
  for (const std::vector<Tensor>* group : input_groups)
    for (const Tensor& t : *group) in_v.push_back(view(t));
  for (const Tensor& t : outputs) out_v.push_back(view(t));
  std::vector<const AqTensor*> in_p, out_p;
  for (const AqTensor& v : in_v) in_p.push_back(&v);
  for (const AqTensor& v : out_v) out_p.push_back(&v);
  Attrs a = attrs_for(def, attrs);
  AqKernelArgs args{};
  args.struct_size = sizeof args;
  args.device = to_abi(dev);
  args.dtype = to_abi(kdt);
  args.inputs = in_p.data();
  args.n_inputs = static_cast<int32_t>(in_p.size());
  args.outputs = out_p.data();
  args.n_outputs = static_cast<int32_t>(out_p.size());
  args.attrs = a.ptrs.data();
  args.n_attrs = static_cast<int32_t>(a.ptrs.size());
  args.workspace = workspace;
  args.workspace_bytes = workspace_bytes;
  args.stream = stream;
  AqError err{};
  err.struct_size = sizeof err;
  const AqStatus st = fn(user, &args, &err);
  AQ_CHECK(st == AQ_STATUS_OK, status_line(def, what, err, st));
}

}  // namespace

void OpRegistry::forward(const std::string& name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
                         const std::vector<AttrValue>& attrs, void* workspace, void* stream) const {
  const OpDef& def = get(name);
  const DType kdt = kernel_dtype_of(def, inputs);
  const Device dev = inputs.front().device();
  for (const auto* group : {&inputs, &outputs})
    for (const Tensor& t : *group)
      AQ_CHECK(!t.raw() || t.device() == dev, name, ": tensors on ", device_name(dev), " and ", device_name(t.device()),
               " in one call; every tensor of a call lives on one device");
  const KernelEntry* k = def.kernel(dev, kdt);
  AQ_CHECK(k != nullptr, name, " has no kernel on ", device_name(dev), " for ", dtype_name(kdt));
  AQ_CHECK(k->forward != nullptr, name, " on ", device_name(dev), "/", dtype_name(kdt),
           " is a built-in with typed kernels only (\"", def.typed.forward, "\" through Registry::find); give it an ",
           "adapter in ops/builtin_adapters.cpp to call it here");
  const ShapeResult shapes = infer(name, kdt, inputs, attrs);
  AQ_CHECK(outputs.size() == def.outputs.size(), name, " has ", def.outputs.size(), " outputs, ", outputs.size(),
           " given");
  for (size_t i = 0; i < outputs.size(); ++i)
    AQ_CHECK(outputs[i].dtype() == shapes.dtypes[i] && outputs[i].shape() == shapes.shapes[i], name, ": output \"",
             def.outputs[i].name, "\" is ", dtype_name(outputs[i].dtype()), " ", shape_str(outputs[i].shape()),
             ", the shape function says ", dtype_name(shapes.dtypes[i]), " ", shape_str(shapes.shapes[i]));
  std::vector<char> host_ws;
  if (!workspace && shapes.workspace_bytes) {
    AQ_CHECK(dev == Device::CPU, name, " needs ", shapes.workspace_bytes, " bytes of workspace on ", device_name(dev),
             "; pass a device buffer");
    host_ws.resize(shapes.workspace_bytes);
    workspace = host_ws.data();
  }
  invoke(def, "forward", k->forward, k->user, dev, kdt, {&inputs}, outputs, attrs, workspace, shapes.workspace_bytes,
         stream);
}

void OpRegistry::backward(const std::string& name, const std::vector<Tensor>& saved,
                          const std::vector<Tensor>& grad_outputs, const std::vector<Tensor>& grad_inputs,
                          const std::vector<AttrValue>& attrs, void* workspace, void* stream) const {
  const OpDef& def = get(name);
  AQ_CHECK(def.has_backward, name, " declares no backward (it is not differentiable)");
  AQ_CHECK(saved.size() == def.saved.size(), name, "'s backward takes the ", def.saved.size(), " saved tensors, ",
           saved.size(), " given");
  AQ_CHECK(grad_outputs.size() == def.outputs.size(), name, "'s backward takes one gradient per output (",
           def.outputs.size(), "), ", grad_outputs.size(), " given");
  AQ_CHECK(grad_inputs.size() == def.inputs.size(), name, "'s backward writes one gradient per input (",
           def.inputs.size(), "), ", grad_inputs.size(), " given");
  // Gradients have the shape of their tensor: checkable wherever that tensor is saved.
  for (size_t s = 0; s < def.saved.size(); ++s) {
    const size_t idx = static_cast<size_t>(def.saved[s]);
    const Tensor& g = idx < def.inputs.size() ? grad_inputs[idx] : grad_outputs[idx - def.inputs.size()];
    AQ_CHECK(!g.raw() || g.shape() == saved[s].shape(), name, ": the gradient of \"", def.tensor_name(def.saved[s]),
             "\" is ", shape_str(g.shape()), " but the tensor is ", shape_str(saved[s].shape()));
  }
  const Tensor* first = nullptr;
  for (const Tensor& t : grad_outputs)
    if (t.raw() && !first) first = &t;
  AQ_CHECK(first != nullptr, name, "'s backward needs the gradient of at least one output");
  const DType kdt = first->dtype();
  const Device dev = first->device();
  for (const auto* group : {&saved, &grad_outputs, &grad_inputs})
    for (const Tensor& t : *group)
      AQ_CHECK(!t.raw() || t.device() == dev, name, ": tensors on ", device_name(dev), " and ", device_name(t.device()),
               " in one backward call; every tensor of a call lives on one device");
  const KernelEntry* k = def.kernel(dev, kdt);
  AQ_CHECK(k != nullptr, name, " has no kernel on ", device_name(dev), " for ", dtype_name(kdt));
  AQ_CHECK(k->backward != nullptr, name, " on ", device_name(dev), "/", dtype_name(kdt), " has no separate backward ",
           "call here (\"", def.typed.backward, "\" through Registry::find; ops/builtin_adapters.cpp says why)");
  invoke(def, "backward", k->backward, k->user, dev, kdt, {&saved, &grad_outputs}, grad_inputs, attrs, workspace, 0,
         stream);
}

}  // namespace aq::ops
