#include "ops/registry.h"

namespace aq::ops {

Registry& Registry::instance() {
  static Registry* r = [] {
    auto* reg = new Registry();
    register_builtin_kernels(*reg);
    return reg;
  }();
  return *r;
}

std::string Registry::describe(const Key& k) {
  return str("\"", std::get<0>(k), "\" on ", device_name(std::get<1>(k)), " for ", dtype_name(std::get<2>(k)));
}

std::string Registry::available(const std::string& op) const {
  std::string out;
  for (const auto& [key, slot] : table_)
    if (std::get<0>(key) == op)
      out += str(out.empty() ? "" : ", ", device_name(std::get<1>(key)), "/", dtype_name(std::get<2>(key)));
  return out.empty() ? "none" : out;
}

std::vector<std::string> Registry::list() const {
  std::vector<std::string> out;
  for (const auto& [key, slot] : table_)
    out.push_back(str(std::get<0>(key), "/", device_name(std::get<1>(key)), "/", dtype_name(std::get<2>(key))));
  return out;
}

}  // namespace aq::ops
