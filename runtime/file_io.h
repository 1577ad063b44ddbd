// file_io.h — read-only file mappings and crash-safe writes.
//
// AtomicWriter writes to "<path>.tmp.<pid>", and commit() fsyncs the data, renames it over <path> and fsyncs
// the directory: after a crash the real name holds either the old file or the complete new one, never a
// half-written one. A writer destroyed without commit() removes its temporary file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace aq {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws aq::Error naming the path and errno text
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path);  // throws if the temporary cannot be created
  ~AtomicWriter();
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* data, size_t bytes);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Fails with one clear line if a file cannot be created at `path` (missing directory, no permission). Checked
// before training starts so a bad --save path does not surface hours later.
void check_writable(const std::string& path, const char* what);

bool file_exists(const std::string& path);

}  // namespace aq
