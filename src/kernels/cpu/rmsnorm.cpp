#include "kernels/cpu/rmsnorm.h"

#include <vector>

#include "core/parallel.h"

namespace sy {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int64_t N,
                     int64_t C, float eps) {
  parallel_for(N, [&](int64_t n) {
    const float* x = inp + n * C;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
    float r = 1.f / std::sqrt(ss / static_cast<float>(C) + eps);
    rstd[n] = r;
    float* y = out + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[c] = x[c] * r * w[c];
  });
}

void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int64_t N, int64_t C) {
  // dw is a sum over rows: per-chunk partials, added in chunk order.
  int64_t chunks = chunk_count(N, 64);
  std::vector<float> partial(static_cast<size_t>(chunks * C), 0.f);
  parallel_chunks(N, chunks, [&](int64_t n0, int64_t n1, int64_t chunk) {
    float* pdw = partial.data() + chunk * C;
    for (int64_t n = n0; n < n1; ++n) {
      const float* x = inp + n * C;
      const float* dy = dout + n * C;
      float r = rstd[n];
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < C; ++c) dot += w[c] * dy[c] * x[c];
      float k = r * r * r / static_cast<float>(C) * dot;
      float* dx = dinp + n * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        dx[c] += r * w[c] * dy[c] - k * x[c];
        pdw[c] += dy[c] * x[c] * r;
      }
    }
  });
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const float* pdw = partial.data() + chunk * C;
    for (int64_t c = 0; c < C; ++c) dw[c] += pdw[c];
  }
}

}  // namespace sy
