// Rotary position embedding, the "rotate half" convention (as Hugging Face
// Llama): within each head of D, element i pairs with i + D/2 and the pair is
// rotated by angle pos * theta^(-2i/D).
//   x: (N, heads, D) rows with row stride `stride` floats; position of row n
//   is n % T. Applied in place; backward rotates the gradient back.
#pragma once

#include <cmath>
#include <cstdint>

namespace sy {

// cos, sin: (T, D/2), computed in double and rounded once.
void rope_table(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta);

void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T,
                  int64_t heads, int64_t D, int64_t stride);
void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int64_t T,
                   int64_t heads, int64_t D, int64_t stride);

// Reference: sign = +1 rotates forward, -1 applies the inverse (backward).
template <class T>
void rope_apply_ref(T* x, const T* cos_t, const T* sin_t, int64_t N, int64_t Tn, int64_t heads,
                    int64_t D, int64_t stride, int sign) {
  int64_t half = D / 2;
  for (int64_t n = 0; n < N; ++n) {
    int64_t t = n % Tn;
    for (int64_t h = 0; h < heads; ++h) {
      T* v = x + n * stride + h * D;
      for (int64_t i = 0; i < half; ++i) {
        T c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
        T a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

}  // namespace sy
