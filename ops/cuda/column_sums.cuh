// column_sums.cuh — deterministic per-column sums over the rows of a matrix: bias and LayerNorm weight gradients.
//
// No float atomics: blocks of columns × fixed chunks of kRowsPerPartial rows write one partial per (chunk, term,
// column), summed in row order; a second pass adds the partials in chunk order into the outputs (+=). The
// order is fixed by the shape alone, so results repeat bit for bit on every run and GPU.
#pragma once

#include <cstdint>

#include "ops/cuda/common.cuh"

namespace aq::cuda {

constexpr int64_t kRowsPerPartial = 256;

// The K output vectors (C) of one call, each accumulated into with +=.
template <int K>
struct ColumnOutputs {
  float* out[K];
};

// partial (parts, K, C): Σ over the rows of chunk p of the K terms term(row, c, acc) adds for column c.
template <int K, typename Term>
__global__ void column_partials_kernel(float* partial, int64_t N, int C, Term term) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (c >= C) return;
  float acc[K] = {};
  for (int64_t row = p * kRowsPerPartial; row < min(N, (p + 1) * kRowsPerPartial); ++row) term(row, c, acc);
#pragma unroll
  for (int k = 0; k < K; ++k) partial[(p * K + k) * C + c] = acc[k];
}

// outs.out[k][c] += Σ_p partial[p, k, c], in p order
template <int K>
__global__ void column_total_kernel(ColumnOutputs<K> outs, const float* partial, int64_t parts, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float acc = 0;
    for (int64_t p = 0; p < parts; ++p) acc += partial[(p * K + k) * C + c];
    outs.out[k][c] += acc;
  }
}

// For every column c of an N-row matrix: outs.out[k][c] += Σ_rows term k, where term is a device functor
// `void operator()(int64_t row, int c, float (&acc)[K]) const` that adds its K terms to acc.
template <int K, typename Term>
void column_sums(ColumnOutputs<K> outs, int64_t N, int C, Term term) {
  const int64_t parts = (N + kRowsPerPartial - 1) / kRowsPerPartial;
  if (parts == 0 || C == 0) return;
  DeviceScratch scratch(static_cast<size_t>(parts * K * C) * sizeof(float));
  const unsigned col_blocks = static_cast<unsigned>((C + 127) / 128);
  column_partials_kernel<K><<<dim3(col_blocks, static_cast<unsigned>(parts)), 128>>>(scratch.as<float>(), N, C, term);
  AQ_CUDA_LAUNCH_CHECK();
  column_total_kernel<K><<<col_blocks, 128>>>(outs, scratch.as<float>(), parts, C);
  AQ_CUDA_LAUNCH_CHECK();
}

}  // namespace aq::cuda
