#include "kernels/cpu/permute.h"

#include <cstring>

#include "core/parallel.h"

namespace sy {

void moe_gather(RowMap dst, const float* x, const int32_t* row_token, int64_t M, int64_t C) {
  parallel_for(M, [&](int64_t r) {
    std::memcpy(dst.at(r, C), x + int64_t{row_token[r]} * C, static_cast<size_t>(C) * sizeof(float));
  });
}

void moe_gather_backward(float* dx, RowMap src, const int32_t* pos, int64_t N, int64_t K, int64_t C) {
  parallel_for(N, [&](int64_t t) {
    float* d = dx + t * C;
    for (int64_t k = 0; k < K; ++k) {
      int32_t r = pos[t * K + k];
      if (r < 0) continue;
      const float* s = src.at(r, C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] += s[c];
    }
  });
}

void moe_combine(float* out, RowMap y, float* y_copy, const float* gates, const int32_t* pos, int64_t N, int64_t K,
                 int64_t C) {
  parallel_for(N, [&](int64_t t) {
    float* o = out + t * C;
    for (int64_t k = 0; k < K; ++k) {
      int32_t r = pos[t * K + k];
      if (r < 0) continue;
      const float* s = y.at(r, C);
      float g = gates[t * K + k];
      if (y_copy) {
        float* cp = y_copy + int64_t{r} * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) cp[c] = s[c], o[c] += g * s[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += g * s[c];
      }
    }
  });
}

void moe_combine_backward(RowMap dy, float* dgates, const float* dout, RowMap y, const float* gates,
                          const int32_t* pos, int64_t N, int64_t K, int64_t C) {
  parallel_for(N, [&](int64_t t) {
    const float* d = dout + t * C;
    for (int64_t k = 0; k < K; ++k) {
      int32_t r = pos[t * K + k];
      float dot = 0.f;
      if (r >= 0) {
        const float* s = y.at(r, C);
        float* dd = dy.at(r, C);
        float g = gates[t * K + k];
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < C; ++c) {
          dd[c] = g * d[c];
          dot += d[c] * s[c];
        }
      }
      dgates[t * K + k] = dot;
    }
  });
}

}  // namespace sy
