// cli_parse.h — hand-written parsers of command-line values that CLI11 does not type for us.
//
// Kept apart from the programs so the fuzz harness (tests/fuzz/fuzz_cli_numbers.cpp) reaches the same code the
// programs run. Each parser either returns a value in its documented range or throws aq::Error naming the flag,
// what was given and the expected form.
#pragma once

#include <string>
#include <vector>

namespace aq {

// --balance K0,K1,…: one integer per centre, each in [lo, hi] (no sign, no spaces, no empty items); `what` and
// `example` word the refusal ("micro-batches per rank", "3,1"). The centre count is checked by the caller against
// the job's topology.
std::vector<int> parse_balance_list(const std::string& spec, const char* what, int lo, int hi, const char* example);

}  // namespace aq
