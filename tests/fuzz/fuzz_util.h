// fuzz_util.h — shared pieces of the libFuzzer harnesses in this folder.
//
// Contract every harness checks: a parser given any bytes either succeeds or throws aq::Error (the one-line,
// user-facing failure). Any other exception escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash,
// as it does for ASan/UBSan findings and leaks. The readers take paths (they mmap), so inputs are written to a
// memfd and opened as /proc/self/fd/N: no disk traffic, one file reused for every run.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace aq::fuzz {

class MemFile {
 public:
  explicit MemFile(const char* name) {
    fd_ = ::memfd_create(name, 0);
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  // Replaces the file's contents with [data, data + n).
  const std::string& set(const void* data, size_t n) {
    if (::ftruncate(fd_, 0) != 0 || (n > 0 && ::pwrite(fd_, data, n, 0) != static_cast<ssize_t>(n))) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// A failed property (not a parser error): print and abort so libFuzzer saves the input.
[[noreturn]] inline void property_failed(const char* what) {
  std::fprintf(stderr, "fuzz property failed: %s\n", what);
  std::abort();
}

}  // namespace aq::fuzz
