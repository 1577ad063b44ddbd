// path_lock.cpp — see path_lock.h.
#include "runtime/path_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/error.h"
#include "runtime/sysinfo.h"

namespace aq {
namespace {

std::string this_host() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "?";
  return buf;
}

}  // namespace

PathLock::PathLock(const std::string& path, const char* what, const std::string& lock_file)
    : lock_path_(lock_file.empty() ? path + ".lock" : lock_file) {
  // The holder removes the lock file when it is done, so the file we locked may have been unlinked between our
  // open and our flock (and a newer one created): the lock counts only when it is on the file the path names now.
  for (;;) {
    fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    AQ_CHECK(fd_ >= 0, "cannot create the lock file ", lock_path_, " of ", what, " ", path, ": ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char holder[256] = {0};
      const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
      ::close(fd_);
      fd_ = -1;
      AQ_CHECK(err == EWOULDBLOCK, "cannot lock ", lock_path_, ": ", std::strerror(err));
      std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string("another process");
      while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
      fail(str(what, " ", path, " is being written by another run (", who, ", holding ", lock_path_,
               "); wait for it to finish, stop it, or save elsewhere"));
    }
    struct stat held {
    }, named{};
    if (::fstat(fd_, &held) == 0 && ::stat(lock_path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev)
      break;
    ::close(fd_);  // unlinked under us by the previous holder: take the new file
    fd_ = -1;
  }
  // The holder's name, for the next one refused.
  const std::string me = str("pid ", ::getpid(), " on host ", this_host(), "\n");
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, me.data(), me.size(), 0);
}

PathLock::~PathLock() {
  if (fd_ < 0) return;
  ::unlink(lock_path_.c_str());  // while still holding it (see the constructor's check)
  ::close(fd_);
}

}  // namespace aq
