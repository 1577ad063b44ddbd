// cli_parse.cpp — see cli_parse.h.
#include "runtime/cli_parse.h"

#include <cstdlib>
#include <sstream>

#include "runtime/error.h"

namespace aq {

std::vector<int> parse_balance_list(const std::string& spec, const char* what, int lo, int hi, const char* example) {
  std::vector<int> per_centre;
  std::stringstream ss(spec);
  for (std::string tok; std::getline(ss, tok, ',');) {
    char* end = nullptr;
    const long k = std::strtol(tok.c_str(), &end, 10);
    AQ_CHECK(!tok.empty() && *end == '\0' && k >= lo && k <= hi, "--balance must be off, auto or ", what,
             " of each centre, each in [", lo, ", ", hi, "], e.g. ", example, " (got \"", spec, "\")");
    per_centre.push_back(static_cast<int>(k));
  }
  return per_centre;
}

}  // namespace aq
