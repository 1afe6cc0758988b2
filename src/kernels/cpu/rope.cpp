#include "kernels/cpu/rope.h"

#include "core/parallel.h"

namespace sy {

void rope_table(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta) {
  int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      double inv_freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(D));
      double angle = static_cast<double>(t) * inv_freq;
      cos_t[t * half + i] = static_cast<float>(std::cos(angle));
      sin_t[t * half + i] = static_cast<float>(std::sin(angle));
    }
}

namespace {
void rope_rotate(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T,
                 int64_t heads, int64_t D, int64_t stride, float sign) {
  int64_t half = D / 2;
  parallel_for(N, [&](int64_t n) {
    int64_t t = n % T;
    const float* c = cos_t + t * half;
    const float* s = sin_t + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* a = x + n * stride + h * D;
      float* b = a + half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        float ai = a[i], bi = b[i], si = sign * s[i];
        a[i] = ai * c[i] - bi * si;
        b[i] = bi * c[i] + ai * si;
      }
    }
  });
}
}  // namespace

void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T,
                  int64_t heads, int64_t D, int64_t stride) {
  rope_rotate(x, cos_t, sin_t, N, T, heads, D, stride, 1.f);
}

void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int64_t T,
                   int64_t heads, int64_t D, int64_t stride) {
  rope_rotate(dx, cos_t, sin_t, N, T, heads, D, stride, -1.f);
}

}  // namespace sy
