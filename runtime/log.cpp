#include "runtime/log.h"

#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace aq {
namespace {
int g_rank = 0;
int g_world = 1;
std::mutex g_mutex;

std::string prefix() { return g_world > 1 ? str("[rank ", g_rank, "/", g_world, "] ") : std::string(); }
}  // namespace

void set_log_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}
int log_rank() { return g_rank; }

void log_line(const std::string& line) {
  if (g_rank != 0) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

void log_line_all(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stdout, "%s%s\n", prefix().c_str(), line.c_str());
  std::fflush(stdout);
}

void log_error(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "%s%s\n", prefix().c_str(), line.c_str());
  std::fflush(stderr);
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

namespace detail {
[[noreturn]] void assert_failed(const char* file, int line, const char* cond, const std::string& message) {
  throw Error(str("internal error at ", file, ":", line, " on ", host_name(), ": assertion `", cond, "` failed",
                  message.empty() ? "" : ": ", message, " (this is a bug in Aqueduct; please report it)"));
}
}  // namespace detail

}  // namespace aq
