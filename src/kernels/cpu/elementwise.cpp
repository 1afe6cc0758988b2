#include "kernels/cpu/elementwise.h"

#include "core/parallel.h"
#include "kernels/math.h"

namespace sy {

void add_vectors(float* z, const float* x, const float* y, int64_t n) {
  constexpr int64_t kChunk = 4096;  // elements per task
  parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c) {
    const int64_t b = c * kChunk, e = b + kChunk < n ? b + kChunk : n;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) z[i] = x[i] + y[i];
  });
}

void round_to_bf16(float* dst, const float* src, int64_t n) {
  constexpr int64_t kChunk = 4096;
  parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c) {
    const int64_t b = c * kChunk, e = b + kChunk < n ? b + kChunk : n;
    for (int64_t i = b; i < e; ++i) dst[i] = math::bf16_rounded(src[i]);
  });
}

}  // namespace sy
