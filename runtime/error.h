// error.h — errors that explain themselves.
//
// Two kinds of failure exist in Aqueduct:
//   * a user error (bad flag, bad file, bad shape): throw aq::Error with a message that says what is wrong, the
//     numbers involved and how to fix it. Programs catch it at the top and print exactly one line.
//   * a broken internal invariant: AQ_ASSERT, which adds file:line because the fix is in the code.
// AQ_CHECK(cond, parts...) is the user-error form: the parts are streamed into the message only on failure.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace aq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// str(a, b, c) streams its arguments into one string (GCC 12 has no std::format).
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// An error raised identically on every rank at the same point (agreed set-up failures, a non-finite loss
// computed from all-reduced values): one rank reports it and every rank exits. Any other Error that escapes
// the training loop of a parallel job is reported by the rank that raised it, which then ends the job.
class AgreedError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

namespace detail {
[[noreturn]] void assert_failed(const char* file, int line, const char* cond, const std::string& message);
}  // namespace detail

}  // namespace aq

#define AQ_CHECK(cond, ...)                        \
  do {                                             \
    if (!(cond)) ::aq::fail(::aq::str(__VA_ARGS__)); \
  } while (0)

#define AQ_ASSERT(cond, ...)                                                             \
  do {                                                                                   \
    if (!(cond)) ::aq::detail::assert_failed(__FILE__, __LINE__, #cond, ::aq::str(__VA_ARGS__)); \
  } while (0)
