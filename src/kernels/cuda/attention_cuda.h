// The CUDA backend's tiled attention forward (attention_cuda.cu): causal,
// grouped-query, the layout and math of kernels/cpu/attention.h, without a
// T x T matrix. A block takes kAttnQueries (16) queries of one (batch, head),
// a warp 4 of them; keys and values stream through shared memory in tiles of
// 16 rows, and each query keeps the online softmax (kernels/math.h
// OnlineSoftmax, the CPU-tested math of the simple kernel) and its output
// row in registers, a warp's 32 lanes splitting the head dimension (at most
// 256: 8 values per lane). Scores are warp-shuffle sums, so they differ from
// the CPU and the simple kernel only in the order of the dot product's sums.
//
// Status: compiled in every CI run; not yet run on a GPU
// (CudaBackend.TiledAttentionForwardMatchesTheSimpleKernel compares it).
#pragma once

#include <cstdint>

#include "core/device.h"

namespace sy::cuda {

inline constexpr int64_t kAttnMaxHead = 256;

void attention_forward_tiled(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                             int64_t D, Stream s);

}  // namespace sy::cuda
