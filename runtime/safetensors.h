// safetensors.h — the Hugging Face safetensors format, read and written.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON header, then raw little-endian tensor data.
// The header maps names to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to the data
// section) and may hold "__metadata__": {string: string}. Reading validates everything before any tensor is
// touched: header length, JSON, dtypes, that each byte range matches its shape, lies inside the file and
// overlaps no other. Every failure names the file and the offending tensor.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/file_io.h"
#include "runtime/tensor.h"

namespace aq {

class SafeTensorsReader {
 public:
  struct Entry {
    DType dtype;
    Shape shape;
    size_t begin = 0, end = 0;  // byte range inside the data section
  };

  explicit SafeTensorsReader(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // An integer from __metadata__; nullopt when the key is absent, aq::Error when it is not an integer.
  std::optional<int64_t> metadata_int(const std::string& key) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const Entry& entry(const std::string& name) const;  // throws "missing tensor" naming the file

  // Copies tensor `name` into dst, converting F32/F64/BF16/F16 to T. The stored shape must equal `shape`, and
  // the bytes must match their checksum when the file has one.
  template <typename T>
  void read(const std::string& name, const Shape& shape, T* dst) const;
  // Raw bytes of a tensor (any dtype) for callers that handle the type themselves.
  const uint8_t* bytes(const std::string& name) const;
  // Checks every tensor against its checksum (when the file carries them); the first mismatch is an aq::Error
  // naming the file and the tensor.
  void verify_checksums() const;

 private:
  void verify_checksum(const std::string& name, const Entry& e) const;

  MappedFile file_;
  size_t data_start_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> checksums_;  // from kChecksumKey, when the file carries them
};

// The metadata key of the per-tensor checksums that write_safetensors adds ({"name": "16 hex digits"}); read()
// verifies a tensor against it (the reader's metadata() leaves the key out).
constexpr const char* kChecksumKey = "aq_checksums";

struct NamedTensor {
  std::string name;
  Tensor tensor;  // CPU; written in its own dtype
};

// Writes atomically (temporary file, fsync, rename). Tensors are stored in the given order, and each one's
// checksum in the metadata under kChecksumKey.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace aq
