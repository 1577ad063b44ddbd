// memory_estimate.h — what a training job will hold per rank, before anything is allocated, and the host
// memory it may use: so a model that cannot fit is refused with the numbers instead of meeting the OOM killer.
//
// The estimate counts the flat buffers exactly as the model lays them out (parameters, an fp32 master copy for
// bf16, fp32 gradients, AdamW's two moments on this rank's slice, DiLoCo's global copy and momentum) and the
// activations the backward pass keeps, per block: about (12 + 4·4)/tp·C plus (3 + 4)·C values per token, the
// attention statistics, and the classifier's chunk. It is meant to be within a few tens of percent; the check
// refuses only jobs whose estimate exceeds what the machine offers.
#pragma once

#include <cstdint>
#include <string>

#include "model/transformer.h"

namespace aq {

struct MemoryEstimate {
  double params = 0, grads = 0, optimizer = 0, activations = 0, outer = 0;  // bytes per rank
  double total() const { return params + grads + optimizer + activations + outer; }
};

// cfg: the model; B, T: micro-batch; tp; optimizer_share: the fraction of the buffer whose AdamW state this
// rank keeps (1, or 1/dp under ZeRO-1); bf16: a bf16 model (fp32 master copy); diloco: + θ_global, momentum.
MemoryEstimate estimate_memory(const ModelConfig& cfg, int B, int T, int tp, double optimizer_share, bool bf16,
                               bool diloco);

// Host memory this process may still use: MemAvailable, bounded by a cgroup limit (v2 memory.max or v1
// memory.limit_in_bytes, minus current usage) when one is set. 0 when unknown.
double available_host_bytes();

std::string gib(double bytes);  // "3.2 GiB", or "412.0 MiB" below a GiB

}  // namespace aq
