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

inline constexpr int64_t kFp8Block = 128;

enum class ScaleMode : uint8_t { tensor, rows_1x128, blocks_128x128 };
std::string to_string(ScaleMode m);

struct Fp8Matrix {
  int64_t rows = 0, cols = 0;
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  std::vector<uint8_t> q;          // (rows, cols)
  std::vector<float> scale_inv;    // tensor: 1; rows: rows x kb; blocks: ceil(rows/128) x kb
  int64_t kblocks() const { return (cols + kFp8Block - 1) / kFp8Block; }
  float sinv(int64_t r, int64_t kb) const {
    switch (mode) {
      case ScaleMode::tensor: return scale_inv[0];
      case ScaleMode::rows_1x128: return scale_inv[static_cast<size_t>(r * kblocks() + kb)];
      default: return scale_inv[static_cast<size_t>((r / kFp8Block) * kblocks() + kb)];
    }
  }
  size_t bytes() const { return q.size() + scale_inv.size() * sizeof(float); }
};

struct QuantOptions {
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  bool pow2 = false;          // scales rounded down to powers of two
  bool saturate = true;
  float scale = 0;            // tensor mode: a given scale (delayed scaling); 0 = from this tensor's amax
};

// The scale that maps amax to the format's largest value.
float fp8_scale_for(float amax, Fp8Format f, bool pow2);

// Quantizes x (rows, cols) row-major. With `transpose`, quantizes x^T (cols,
// rows) instead (the K dimension of the GEMM that reads it is `rows`).
QuantStats quantize_matrix(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                           bool transpose = false);
// out (rows, cols) = decode(q) * scale_inv.
void dequantize_matrix(float* out, const Fp8Matrix& m);

// C (M, N) (+)= A (M, K) * B (N, K)^T. A.cols == B.cols == K.
void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate = false);

// Naive reference: every product of decoded values summed in double per
// 128-K block, each block's sum times its two scales.
void fp8_gemm_ref(double* C, const Fp8Matrix& A, const Fp8Matrix& B);

}  // namespace sy
