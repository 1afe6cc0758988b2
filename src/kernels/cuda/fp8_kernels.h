// Launchers of the FP8 device kernels (fp8_kernels.cu); plain types only, so
// the host side (fp8_cuda.cpp) is ordinary C++. Each runs on `stream` (a
// cudaStream_t; null: the default stream); pointers are device pointers.
#pragma once

#include <cstdint>

namespace sy::cuda::detail {

// dst (cols, rows) = src (rows, cols)^T
void transpose(float* dst, const float* src, int64_t rows, int64_t cols, void* stream);
// *amax_dev = max(*amax_dev, max |x|) (NaN ignored); *amax_dev starts at 0.
void amax(const float* x, int64_t n, float* amax_dev, void* stream);
// q = encode(x * scale); *sat_dev += values that saturate.
void quantize_tensor(uint8_t* q, const float* x, int64_t n, float scale, bool e4, bool saturate,
                     unsigned long long* sat_dev, void* stream);
// 1 x 128 tiles: sinv[kb * ld + r]; 128 x 128 blocks: sinv[kb * ld + r / 128]. *amax_dev as amax().
void quantize_rows(uint8_t* q, float* sinv, int64_t ld, const float* x, int64_t rows, int64_t cols, bool e4,
                   bool pow2, bool saturate, float* amax_dev, void* stream);
void quantize_blocks(uint8_t* q, float* sinv, int64_t ld, const float* x, int64_t rows, int64_t cols, bool e4,
                     bool pow2, bool saturate, float* amax_dev, void* stream);

}  // namespace sy::cuda::detail
