// log.h — rank-aware logging.
//
// A single-process run prints plain lines; once a parallel run sets the rank (set_log_rank), every line is
// prefixed with "[rank r/w]" and log_info prints on rank 0 only, so N ranks do not print N copies.
#pragma once

#include <string>

#include "runtime/error.h"

namespace aq {

void set_log_rank(int rank, int world);
int log_rank();

void log_line(const std::string& line);        // stdout, rank 0 only
void log_line_all(const std::string& line);    // stdout, every rank (prefixed when world > 1)
void log_error(const std::string& line);       // stderr, every rank

template <typename... Args>
void log_info(const Args&... args) {
  log_line(str(args...));
}

// Host name of this machine (for banners and error lines).
std::string host_name();

}  // namespace aq
