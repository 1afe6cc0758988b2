#include "kernels/cpu/cross_entropy.h"

#include "core/parallel.h"
#include "kernels/cpu/vmath.h"

namespace sy {

void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                   int64_t N, int64_t V, float dscale) {
  parallel_for(N, [&](int64_t n) {
    const float* z = logits + n * V;
    float m = z[0];
    for (int64_t v = 1; v < V; ++v) m = z[v] > m ? z[v] : m;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < V; ++v) s += fast_exp(z[v] - m);
    float lse = m + std::log(s);
    int32_t t = targets[n];
    losses[n] = lse - z[t];
    if (dlogits) {
      float* d = dlogits + n * V;
      float inv = 1.f / s;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) d[v] = fast_exp(z[v] - m) * inv * dscale;
      d[t] -= dscale;
    }
  });
}

}  // namespace sy
