// registry.h — where operator kernels are found.
//
// A kernel is registered under (kernel name, device, dtype) with its exact C++ signature; lookups check the
// signature too, so a CUDA kernel joins by registering, and a mismatch is an error at start-up rather than a
// crash in the step. Built-in kernels are registered in one place: ops/register_builtin.cpp; the operators they
// implement are declared (schema, shapes, backward, sharding) in ops/builtin_ops.cpp (see ops/op_def.h).
// Callers resolve the function pointers once (at model construction), not per call.
//
// The signature is the type's mangled name compared as a string, never a type_info address or std::type_index:
// those differ between copies of one type in separately loaded objects (dlopen with RTLD_LOCAL, -fvisibility).
// Plugin operators do not use this typed table at all; they cross a C ABI (include/aqueduct/op_abi.h).
#pragma once

#include <map>
#include <string>
#include <tuple>
#include <typeinfo>
#include <vector>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace aq::ops {

class Registry {
 public:
  static Registry& instance();  // built-in kernels are registered on first use

  template <typename Fn>
  void add(const std::string& op, Device device, DType dtype, Fn* fn) {
    Key key{op, device, dtype};
    AQ_CHECK(table_.count(key) == 0, "kernel ", describe(key), " is registered twice");
    table_.emplace(key, Slot{reinterpret_cast<void (*)()>(fn), typeid(Fn).name()});
  }

  template <typename Fn>
  Fn* find(const std::string& op, Device device, DType dtype) const {
    Key key{op, device, dtype};
    auto it = table_.find(key);
    AQ_CHECK(it != table_.end(), "no kernel for ", describe(key), "; registered kernels for this op: ", available(op));
    AQ_CHECK(it->second.signature == typeid(Fn).name(), "kernel ", describe(key),
             " was registered with a different signature than its caller expects");
    return reinterpret_cast<Fn*>(it->second.fn);
  }

  bool contains(const std::string& op, Device device, DType dtype) const {
    return table_.count(Key{op, device, dtype}) != 0;
  }
  std::vector<std::string> list() const;  // "op/device/dtype" for every kernel

 private:
  using Key = std::tuple<std::string, Device, DType>;
  struct Slot {
    void (*fn)();
    std::string signature;  // mangled name of the function type
  };
  static std::string describe(const Key& k);
  std::string available(const std::string& op) const;
  std::map<Key, Slot> table_;
};

// Registers every built-in kernel (ops/register_builtin.cpp). Called once by Registry::instance().
void register_builtin_kernels(Registry& r);

}  // namespace aq::ops
