#include "runtime/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/error.h"
#include "runtime/fault.h"

namespace aq {
namespace {
std::string dir_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  AQ_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(str("cannot read ", path, ": not a regular file"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail(str("cannot map ", path, ": ", std::strerror(e)));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::MappedFile(MappedFile&& o) noexcept : path_(std::move(o.path_)), data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

AtomicWriter::AtomicWriter(const std::string& path) : path_(path), tmp_(str(path, ".tmp.", ::getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  AQ_CHECK(fd_ >= 0, "cannot write ", path, ": ", std::strerror(errno),
           " (check that the directory exists and is writable)");
}

AtomicWriter::~AtomicWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicWriter::write(const void* data, size_t bytes) {
  fault_point();
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    AQ_CHECK(n > 0, "writing ", path_, " failed: ", std::strerror(errno), " (disk full?)");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicWriter::commit() {
  fault_point();
  AQ_CHECK(::fsync(fd_) == 0, "fsync of ", tmp_, " failed: ", std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  fault_point();
  AQ_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename ", tmp_, " to ", path_, ": ",
           std::strerror(errno));
  committed_ = true;
  fault_point();
  int dfd = ::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // make the rename itself durable
    ::close(dfd);
  }
}

void check_writable(const std::string& path, const char* what) {
  AQ_CHECK(!path.empty(), what, " path is empty");
  struct stat st {};
  AQ_CHECK(!(::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)), what, " path ", path,
           " is a directory; give a file name inside it");
  std::string probe = str(path, ".probe.", ::getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  AQ_CHECK(fd >= 0, "cannot write ", what, " to ", path, ": ", std::strerror(errno),
           " (create the directory ", dir_of(path), " or choose a writable path)");
  ::close(fd);
  ::unlink(probe.c_str());
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace aq
