// Scaled FP8 matrices and the FP8 GEMM as Hopper tensor cores compute it.
//
// A matrix is quantized along its rows' K dimension with one of three
// scaling modes (the mode travels with the tensor; TransformerEngine's shape):
//   tensor          one scale for the whole tensor (per-tensor recipes);
//   rows_1x128      one scale per row per 128 columns (DeepSeek-V3's tiles
//                   for activations and gradients);
//   blocks_128x128  one scale per 128 x 128 block (DeepSeek-V3's weights).
// q = encode(x * scale), x ~ decode(q) * scale_inv; scale = fmt_max / amax
// of the group (1 for an all-zero group), optionally rounded down to a power
// of two so scale_inv is exact.
//
// fp8_gemm: C (M, N) = A (M, K) * B (N, K)^T, FP32 accumulation. FP8 values
// are exact in FP32, so the CPU decodes 128-wide K blocks exactly and runs
// them through OpenBLAS; with block scales each 128-K partial sum is
// promoted to FP32 and multiplied by its two scales before it is added
// (DeepGEMM / cuBLASLt VEC128 / BLK128x128 semantics). Per-tensor scales
// multiply the whole product once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/fp8.h"

namespace sy {

// Quantizes x (rows, cols) row-major. With `transpose`, quantizes x^T (cols,
// rows) instead (the K dimension of the GEMM that reads it is `rows`).
// The codes and scales go to `mem` (host memory: the CPU writes them).
QuantStats quantize_matrix(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                           bool transpose = false, Allocator& mem = host_allocator());
// out (rows, cols) = decode(q) * scale_inv.
void dequantize_matrix(float* out, const Fp8Matrix& m);

// C (M, N) (+)= A (M, K) * B (N, K)^T. A.cols == B.cols == K.
void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate = false);

// Naive reference: every product of decoded values summed in double per
// 128-K block, each block's sum times its two scales.
void fp8_gemm_ref(double* C, const Fp8Matrix& A, const Fp8Matrix& B);

}  // namespace sy
