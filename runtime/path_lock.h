// path_lock.h — one writer per checkpoint directory.
//
// PathLock takes an exclusive advisory lock (flock) on a lock file for as long as it lives and writes the
// holder's "pid host" into it, so a second writer is refused with the holder's name instead of both reporting
// success over a mixed set of saves. The holder removes the lock file when it is done; the kernel drops the
// lock when the holder dies (kill -9 included), so the file a dead holder leaves never blocks a new run. flock is
// per host on most network file systems: two writers on two hosts sharing an NFS directory are not kept apart.
#pragma once

#include <string>

namespace aq {

class PathLock {
 public:
  // Throws aq::Error naming the holder ("pid 1234 on host h") when another process holds the lock, and the
  // errno text when the lock file cannot be created. `what` names the path's role in messages ("--save").
  // The lock file is `lock_file`, or "<path>.lock" when it is empty.
  PathLock(const std::string& path, const char* what, const std::string& lock_file = "");
  ~PathLock();
  PathLock(const PathLock&) = delete;
  PathLock& operator=(const PathLock&) = delete;

  const std::string& lock_path() const { return lock_path_; }

 private:
  std::string lock_path_;
  int fd_ = -1;
};

}  // namespace aq
