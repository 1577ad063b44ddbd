// tensor.h — dtype, device and a minimal Tensor (shape + typed view of storage it may or may not own).
//
// Kernels take raw pointers with the shapes in comments (llm.c style); Tensor is what crosses module borders:
// parameters, gradients, checkpoint I/O and the operator registry's dtype/device dispatch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/bf16.h"
#include "runtime/error.h"

namespace aq {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, U16 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "F64", "BF16", "F16", "I32", "U16"
DType dtype_from_name(const std::string& name);  // throws aq::Error for an unknown name
const char* device_name(Device d);

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<double>() { return DType::F64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <>
constexpr DType dtype_of<uint16_t>() { return DType::U16; }
template <>
constexpr DType dtype_of<bf16>() { return DType::BF16; }

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[768, 2304]"

class Tensor {
 public:
  Tensor() = default;
  // A view of memory owned elsewhere (a slice of a parameter buffer, an arena block).
  Tensor(void* data, DType dtype, Shape shape, Device device = Device::CPU);
  // A fresh zero-filled CPU tensor that owns its storage.
  static Tensor zeros(DType dtype, Shape shape);

  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i)); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }
  void* raw() const { return data_; }

  template <typename T>
  T* data() const {
    AQ_ASSERT(dtype_of<T>() == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ", dtype_name(dtype_of<T>()));
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  Shape shape_;
  std::shared_ptr<void> owner_;
};

}  // namespace aq
