// builtin_adapters.h — built-in operators on the generic call path, and what `aq-op check` needs to probe them.
//
// A built-in's kernels live in the typed table (ops/registry.h) with their exact C++ signatures. An adapter maps
// the op's declared tensors and attributes (ops/builtin_ops.cpp, declaration order) onto that signature, so the
// built-in also runs through OpRegistry::forward/backward like a plugin op: the same harness (ops/op_check.h)
// then checks both. Adapters look the typed kernel up per call; the model keeps resolving typed kernels once at
// construction, so nothing here is on the training path.
//
// Alongside each adapter: probe inputs (shapes that satisfy the shape function; dimensions that sharding rules
// split are divisible by 2 and 3, the others odd), how attributes change on a shard (local head counts, the
// first vocabulary row), how a split dimension is packed (qkv's [q | k | v] blocks each split separately), and
// the checks that do not apply, with the reason.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ops/op_def.h"

namespace aq::ops {

// Inputs an op check runs an operator on.
struct ProbeInputs {
  std::vector<Shape> inputs;      // one per declared input
  std::vector<bool> absent;       // per input: an optional input left out (empty: none)
  std::vector<AttrValue> attrs;   // declaration order
  std::vector<int64_t> int_high;  // per input: integer inputs drawn uniformly from [0, int_high) (empty: 0 … 4)
};

struct BuiltinAdapter {
  std::string op;
  AqKernelFn forward = nullptr;
  AqKernelFn backward = nullptr;  // null where the backward is not a separate call (see fused)
  ProbeInputs probe;
  // Attributes of shard r of n under a sharding rule, from the whole inputs' shapes (null: unchanged).
  std::function<void(const std::string& rule, int r, int n, const std::vector<Shape>& whole,
                     std::vector<AttrValue>& attrs)>
      shard_attrs;
  // Sizes of the packed blocks along split dimension `dim` of tensor `tensor` (inputs first, then outputs; an
  // input's gradient is packed as the input), each split over the ranks separately (null or empty: one block).
  std::function<std::vector<int64_t>(const std::string& rule, int tensor, int dim, const Shape& shape,
                                     const std::vector<AttrValue>& attrs)>
      blocks;
  // Ops whose backward runs inside the forward call (softmax_xent, classifier: they save nothing). `fused` is
  // called like the forward, its outputs being the op's outputs followed by one gradient per input (data NULL
  // where none is wanted), and writes the gradients of dscale·Σ output 0, dscale being attribute
  // `fused_dscale_attr` (overwritten, or added to where the input accumulates).
  AqKernelFn fused = nullptr;
  int fused_dscale_attr = -1;
  // check name ("shape", "backward", "determinism", "cuda", "sharding") -> why it does not apply
  std::map<std::string, std::string> not_applicable;
};

// The adapter of a built-in op, or null when it has none (the op then runs only through its typed kernels).
const BuiltinAdapter* builtin_adapter(const std::string& op);

// The ops the adapter table names (aq-op check fails on a name that no built-in declares: a typo or a removed op).
std::vector<std::string> builtin_adapter_ops();

// The built-in ops that have no adapter, each with the reason (printed by aq-op check).
const std::map<std::string, std::string>& builtin_without_adapter();

}  // namespace aq::ops
