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

namespace sy {

enum class Fp8Format : uint8_t { e4m3, e5m2 };

constexpr float fp8_max(Fp8Format f) { return f == Fp8Format::e4m3 ? 448.f : 57344.f; }
std::string to_string(Fp8Format f);

uint8_t fp8_encode(float x, Fp8Format f, bool saturate = true);
float fp8_decode(uint8_t code, Fp8Format f);
// The 256 decoded values of a format (exact in float).
const float* fp8_table(Fp8Format f);

struct QuantStats {
  float amax = 0;          // max |x| before scaling (finite values)
  int64_t saturated = 0;   // |x * scale| beyond the format's largest finite value
};

// out[i] = encode(x[i] * scale); returns the amax of x and how many scaled
// values saturated. Parallel over i.
QuantStats fp8_quantize(uint8_t* out, const float* x, int64_t n, float scale, Fp8Format f, bool saturate = true);
// out[i] = decode(q[i]) * scale_inv.
void fp8_dequantize(float* out, const uint8_t* q, int64_t n, float scale_inv, Fp8Format f);
// max |x| over n values (NaN-free input).
float amax_of(const float* x, int64_t n);

}  // namespace sy
