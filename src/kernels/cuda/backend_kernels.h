// The CUDA backend's kernels (backend_kernels.cu), launched by the backend
// (cuda_backend.cu) on its stream with blocks_for(n) blocks of kThreads:
// simple, correct kernels first (one thread per element, row or query,
// grid-stride loops). Reductions whose order the CPU fixes use atomics.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/math.h"
#include "kernels/types.h"

namespace sy::cuda::kern {

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>((n + kThreads - 1) / kThreads, 1), 65535));
}
constexpr int kSumParts = 32;       // sum_squares_kernel: partial sums per run (gridDim.x)
constexpr int64_t kMaxHead = 256;   // head size the attention kernels' per-thread accumulators hold

__global__ void add_kernel(float* z, const float* x, const float* y, int64_t n);
__global__ void round_bf16_kernel(float* dst, const float* src, int64_t n);
// Packed rows (kernels/cpu/pack.h): one thread per 4-byte word of the packed rows.
__global__ void pack_bf16_kernel(uint32_t* packed, int64_t W, const float* x, int64_t n, int64_t C);
__global__ void unpack_bf16_kernel(float* x, const uint32_t* packed, int64_t W, int64_t n, int64_t C);
// m's codes q (n, C) and 1 x 128 scales sinv[kb * ld + r].
__global__ void fp8_pack_kernel(uint32_t* packed, int64_t W, const uint8_t* q, const float* sinv, int64_t ld,
    int64_t n, int64_t C);
__global__ void fp8_unpack_kernel(uint8_t* q, float* sinv, int64_t ld, const uint32_t* packed, int64_t W, int64_t n,
    int64_t C);
// One thread per value: x (n, C) = decode(code) * scale_inv, from packed rows or from a matrix (any mode:
// the scale of row r's block kb is sinv[kb * ld + r / rows_per_scale], ld 0 for one tensor scale).
__global__ void fp8_decode_rows_kernel(float* x, const uint32_t* packed, int64_t W, int64_t n, int64_t C, bool e4);
__global__ void fp8_dequantize_kernel(float* x, const uint8_t* q, const float* sinv, int64_t ld,
    int64_t rows_per_scale, int64_t rows, int64_t cols, bool e4);
__global__ void embedding_fwd_kernel(float* out, const int32_t* tok, const float* wte, int64_t N, int64_t C);
__global__ void embedding_bwd_kernel(float* dwte, const float* dout, const int32_t* tok, int64_t N, int64_t C);
__global__ void swiglu_fwd_kernel(float* out, const float* inp, int64_t N, int64_t F);
__global__ void swiglu_bwd_kernel(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F);
__global__ void rope_table_kernel(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta);
__global__ void rope_kernel(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads,
    int64_t D, int64_t stride, float sign);
__global__ void sum_squares_kernel(double* partial, const float* x, const int64_t* offsets, const int64_t* counts);
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, math::AdamWConsts k);
__global__ void adamw_bf16_kernel(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n,
    math::AdamWConsts k);
__global__ void rmsnorm_fwd_kernel(float* out, float* rstd, const float* inp, const float* w, int64_t C, float eps);
__global__ void rmsnorm_bwd_kernel(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
    const float* rstd, int64_t C);
__global__ void cross_entropy_kernel(float* losses, float* dlogits, const float* logits, const int32_t* targets,
    int64_t V, float dscale);
__global__ void attention_fwd_kernel(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
    int64_t Hkv, int64_t D);
__global__ void attention_bwd_kernel(float* dqkv, const float* dout, const float* qkv, const float* out,
    const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D);
__global__ void attention_cached_kernel(float* out, const float* q, int64_t q_stride, const float* kc, const float* vc,
    int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D);
__global__ void router_scores_kernel(float* scores, float* probs, const float* logits, int64_t N, int64_t E,
    bool softmax);
__global__ void router_topk_kernel(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N,
    int64_t E, int64_t K, bool renormalize, int64_t G, int64_t limit);
__global__ void router_bwd_kernel(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
    const float* scores, const float* probs, const float* daux, float* scratch,
    int64_t N, int64_t E, int64_t K, bool softmax, bool renormalize, float inv_n,
    float c_entropy, float c_z);
__global__ void gather_kernel(float* dst, const float* x, const int32_t* row_token, int64_t M, int64_t C);
__global__ void gather_bwd_kernel(float* dx, const float* src, const int32_t* pos, int64_t N, int64_t K, int64_t C);
__global__ void combine_kernel(float* out, const float* y, float* y_copy, const float* gates, const int32_t* pos,
    int64_t N, int64_t K, int64_t C);
__global__ void combine_bwd_rows_kernel(float* dy, const float* dout, const float* gates, const int32_t* pos,
    int64_t N, int64_t K, int64_t C);
__global__ void combine_bwd_gates_kernel(float* dgates, const float* dout, const float* y, const int32_t* pos,
    int64_t N, int64_t K, int64_t C);

}  // namespace sy::cuda::kern
