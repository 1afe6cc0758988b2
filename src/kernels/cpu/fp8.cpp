#include "kernels/cpu/fp8.h"

#include <array>
#include <cmath>
#include <cstring>

#include "core/parallel.h"

namespace sy {

std::string to_string(Fp8Format f) { return f == Fp8Format::e4m3 ? "e4m3" : "e5m2"; }

namespace {

struct Format {
  int mant;          // mantissa bits
  int bias;
  uint32_t minnorm;  // float bits of the smallest normal
  uint32_t half_min_denorm;  // float bits of half the smallest subnormal (ties to even: rounds to 0)
  uint32_t overflow;         // float bits of max + half an ulp: larger magnitudes overflow
  uint8_t maxnorm;           // code of the largest finite value
  float denorm_scale;        // 1 / smallest subnormal
};

Format format(Fp8Format f) {
  if (f == Fp8Format::e4m3)  // max 448 = 1.75 * 2^8, half ulp 16; min normal 2^-6, min subnormal 2^-9
    return {3, 7, 0x3C800000u, 0x3A800000u, 0x43E80000u, 0x7E, 512.f};
  // max 57344 = 1.75 * 2^15, half ulp 4096: 61440 is a tie that rounds to 2^16 (even), so it overflows too.
  return {2, 15, 0x38800000u, 0x37000000u, 0x476FFFFFu, 0x7B, 65536.f};
}

}  // namespace

uint8_t fp8_encode(float x, Fp8Format f, bool saturate) {
  const Format F = format(f);
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const auto sign = static_cast<uint8_t>((bits >> 31) << 7);
  const uint32_t a = bits & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;  // NaN: the canonical positive NaN code in both formats (as NVIDIA's)
  if (a > F.overflow)  // includes infinity
    return static_cast<uint8_t>(sign | (saturate ? F.maxnorm : (f == Fp8Format::e4m3 ? 0x7F : 0x7C)));
  if (a <= F.half_min_denorm) return sign;
  if (a >= F.minnorm) {
    const int shift = 23 - F.mant;
    const uint32_t exp = (a >> 23) - 127 + static_cast<uint32_t>(F.bias);
    uint32_t code = (exp << F.mant) | ((a >> shift) & ((1u << F.mant) - 1));
    const uint32_t rest = a & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (code & 1u))) ++code;
    return static_cast<uint8_t>(sign | code);
  }
  // Subnormal range: the code is the value in units of the smallest subnormal,
  // rounded to nearest even (exact: scaling by a power of two).
  float ax;
  std::memcpy(&ax, &a, 4);
  return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(ax * F.denorm_scale)));
}

float fp8_decode(uint8_t code, Fp8Format f) { return fp8_table(f)[code]; }

namespace {
std::array<float, 256> make_table(Fp8Format f) {
  const Format F = format(f);
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const int e = (c & 0x7F) >> F.mant, m = c & ((1 << F.mant) - 1);
    float v;
    if (f == Fp8Format::e4m3 && (c & 0x7F) == 0x7F)
      v = NAN;
    else if (f == Fp8Format::e5m2 && e == 31)
      v = m == 0 ? INFINITY : NAN;
    else if (e == 0)
      v = std::ldexp(static_cast<float>(m), 1 - F.bias - F.mant);
    else
      v = std::ldexp(1.f + static_cast<float>(m) / static_cast<float>(1 << F.mant), e - F.bias);
    t[static_cast<size_t>(c)] = (c & 0x80) ? -v : v;
  }
  return t;
}
}  // namespace

const float* fp8_table(Fp8Format f) {
  static const std::array<float, 256> e4m3 = make_table(Fp8Format::e4m3), e5m2 = make_table(Fp8Format::e5m2);
  return f == Fp8Format::e4m3 ? e4m3.data() : e5m2.data();
}

float amax_of(const float* x, int64_t n) {
  float m = 0.f;
#pragma omp parallel for reduction(max : m) schedule(static)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

QuantStats fp8_quantize(uint8_t* out, const float* x, int64_t n, float scale, Fp8Format f, bool saturate) {
  const float limit = fp8_max(f);
  float amax = 0.f;
  int64_t sat = 0;
#pragma omp parallel for reduction(max : amax) reduction(+ : sat) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] * scale;
    amax = std::max(amax, std::fabs(x[i]));
    sat += std::fabs(v) > limit ? 1 : 0;
    out[i] = fp8_encode(v, f, saturate);
  }
  return {amax, sat};
}

void fp8_dequantize(float* out, const uint8_t* q, int64_t n, float scale_inv, Fp8Format f) {
  const float* t = fp8_table(f);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = t[q[i]] * scale_inv;
}

}  // namespace sy
