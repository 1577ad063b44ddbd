#include "runtime/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace aq {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::U16: return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::U16: return "U16";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::U16})
    if (name == dtype_name(t)) return t;
  fail(str("unsupported dtype \"", name, "\" (supported: F32, F64, BF16, F16, I32, U16)"));
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

Tensor::Tensor(void* data, DType dtype, Shape shape, Device device)
    : data_(data), dtype_(dtype), device_(device), shape_(std::move(shape)) {}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t(nullptr, dtype, std::move(shape));
  size_t bytes = t.nbytes();
  if (bytes > 0) {
    void* p = std::calloc(bytes, 1);
    AQ_CHECK(p != nullptr, "out of memory allocating a ", shape_str(t.shape_), " ", dtype_name(dtype), " tensor (",
             bytes, " bytes)");
    t.owner_ = std::shared_ptr<void>(p, std::free);
    t.data_ = p;
  }
  return t;
}

}  // namespace aq
