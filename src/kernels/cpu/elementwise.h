// Elementwise arithmetic over flat float arrays (the residual stream's adds).
#pragma once

#include <cstdint>

namespace sy {

// z (n) = x + y; z may alias x or y.
void add_vectors(float* z, const float* x, const float* y, int64_t n);

// dst (n) = src rounded to the nearest BF16 (ties to even; NaN stays NaN), as FP32.
void round_to_bf16(float* dst, const float* src, int64_t n);

}  // namespace sy
