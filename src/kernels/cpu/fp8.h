// FP8 numbers as Hopper tensor cores use them (OCP FP8):
//   E4M3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, NaN is
//         S.1111.111; largest finite 448; subnormals down to 2^-9.
//   E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; IEEE-like with
//         infinities and NaNs; largest finite 57344; subnormals down to 2^-16.
// Encoding rounds to nearest, ties to even. Values beyond the largest
// finite number saturate to it (`saturate`), or else become NaN (E4M3) /
// infinity (E5M2); infinities saturate too; NaN encodes as 0x7F. Bit-exact with NVIDIA's
// __nv_cvt_float_to_fp8 (tested against cuda_fp8.h on the host).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/fp8_types.h"

namespace sy {

// Encoding of one format, inlined into the quantization loops.
template <Fp8Format F>
inline uint8_t fp8_encode_as(float x, bool saturate) {
  constexpr bool e4 = F == Fp8Format::e4m3;
  constexpr int mant = e4 ? 3 : 2, bias = e4 ? 7 : 15, shift = 23 - mant;
  constexpr uint32_t minnorm = e4 ? 0x3C800000u : 0x38800000u;          // 2^-6, 2^-14
  constexpr uint32_t half_min_denorm = e4 ? 0x3A800000u : 0x37000000u;  // 2^-10, 2^-17
  constexpr uint32_t overflow = e4 ? 0x43E80000u : 0x476FFFFFu;         // max + half ulp (E5M2: its tie overflows)
  constexpr uint8_t maxnorm = e4 ? 0x7E : 0x7B, nosat = e4 ? 0x7F : 0x7C;
  constexpr float denorm_scale = e4 ? 512.f : 65536.f;                   // 1 / smallest subnormal
  uint32_t bits;
  __builtin_memcpy(&bits, &x, 4);
  const auto sign = static_cast<uint8_t>((bits >> 31) << 7);
  const uint32_t a = bits & 0x7FFFFFFFu;
  if (a >= minnorm) [[likely]] {
    if (a > overflow) [[unlikely]] {
      if (a > 0x7F800000u) return 0x7F;  // NaN: the canonical positive NaN code (as NVIDIA's)
      return static_cast<uint8_t>(sign | (saturate ? maxnorm : nosat));
    }
    // Round to nearest even at the FP8 mantissa width, then rebias the exponent.
    const uint32_t r = a + ((1u << (shift - 1)) - 1) + ((a >> shift) & 1u);
    return static_cast<uint8_t>(sign | ((r >> shift) - (static_cast<uint32_t>(127 - bias) << mant)));
  }
  if (a <= half_min_denorm) return sign;
  // Subnormal: the value in units of the smallest subnormal, rounded to nearest
  // even by the 1.5 * 2^23 trick (exact: scaling by a power of two).
  float ax;
  __builtin_memcpy(&ax, &a, 4);
  const float k = (ax * denorm_scale + 12582912.f) - 12582912.f;
  return static_cast<uint8_t>(sign | static_cast<uint8_t>(k));
}

inline uint8_t fp8_encode(float x, Fp8Format f, bool saturate = true) {
  return f == Fp8Format::e4m3 ? fp8_encode_as<Fp8Format::e4m3>(x, saturate)
                              : fp8_encode_as<Fp8Format::e5m2>(x, saturate);
}
float fp8_decode(uint8_t code, Fp8Format f);
// The 256 decoded values of a format (exact in float).
const float* fp8_table(Fp8Format f);


}  // namespace sy
