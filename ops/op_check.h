// op_check.h — `aq-op check`: one harness over every operator, built-in or plugin (ggml's test-backend-ops and
// PyTorch's opcheck, plus the sharding rule itself).
//
// For each operator and each of its declared (device, dtype) kernels that this machine can run:
//   kernels      every declared (device, dtype) has its forward (and backward, when one is declared)
//   shape        outputs poisoned (NaN with a payload) and fenced by canaries before and after: after the call
//                every element is written, every canary intact, and no input changed
//   backward     against float64 central differences of a random projection Σ r·y of the outputs (the F64
//                kernel when there is one, else F32 with a looser tolerance, printed); accumulating gradients
//                start from random values and must add exactly the gradient
//   determinism  two forward (and backward) calls on the same inputs are bit-identical
//   cuda         CUDA against CPU per dtype with dtype-aware tolerances (skipped with the reason without a GPU)
//   sharding     per declared rule, over 2 and 3 ranks simulated in this one process: inputs split per the rule
//                (S(d) slices, B copies, P random summands), the kernel run per shard, the gathered outputs and
//                input gradients (S concatenated, P summed, B equal on every shard) equal the whole op's; under
//                mpirun once more with one shard per rank, gathered by all-reduces (RankGroup)
// Each line is "<op> <check> ok|FAIL <numbers>|skip <reason>|not applicable: <reason>".
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace aq::ops {

// Real ranks for the sharding check under mpirun: this process's rank, the group's size, and an all-reduce of
// doubles over the group (sum, or max). Every rank must run the same checks in the same order with the same
// seed: each sharding check calls all_reduce the same number of times on every rank, or the job hangs.
struct RankGroup {
  int rank = 0, size = 1;
  std::function<void(double* data, int64_t n, bool max)> all_reduce;
};

struct CheckOptions {
  std::vector<std::string> ops;      // empty: every declared op
  uint64_t seed = 0;                 // inputs are drawn from it (printed, so a failure can be replayed)
  const RankGroup* ranks = nullptr;  // set under mpirun: each rule also runs with one shard per real rank
};

struct CheckSummary {
  int ok = 0, failed = 0, skipped = 0, not_applicable = 0, ops = 0;
};

// Runs the checks, printing one line per (op, check) and a summary line to `out`.
CheckSummary check_ops(const CheckOptions& options, std::FILE* out);

}  // namespace aq::ops
