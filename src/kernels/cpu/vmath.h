// Vectorisable float exp and sigmoid (branch-free, so `omp simd` loops
// compile to AVX code without -ffast-math). exp: Cody-Waite range reduction
// and Cephes' degree-6 polynomial, within 2 ulp of std::exp on
// [-87.3, 88.7]; inputs are clamped to that range (exp(-inf) gives ~1e-38,
// not 0; callers that need exact zeros mask explicitly).
#pragma once

#include <bit>
#include <cstdint>

namespace sy {

#pragma omp declare simd
inline float fast_exp(float x) {
  x = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  float t = x * 1.44269504088896341f + kMagic;
  float n = t - kMagic;
  int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kMagic);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  // n in [-126, 128]: build 2^n in two halves so 2^128 does not overflow the exponent field.
  int32_t n1 = ni >> 1, n2 = ni - n1;
  float s1 = std::bit_cast<float>((n1 + 127) << 23);
  float s2 = std::bit_cast<float>((n2 + 127) << 23);
  return p * s1 * s2;
}

#pragma omp declare simd
inline float fast_sigmoid(float x) { return 1.f / (1.f + fast_exp(-x)); }

}  // namespace sy
