#include "kernels/cpu/fp8.h"

#include <array>
#include <cmath>
#include <cstring>

#include "core/parallel.h"

namespace sy {


float fp8_decode(uint8_t code, Fp8Format f) { return fp8_table(f)[code]; }

namespace {
std::array<float, 256> make_table(Fp8Format f) {
  struct {
    int mant, bias;
  } F = f == Fp8Format::e4m3 ? decltype(F){3, 7} : decltype(F){2, 15};
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

}  // namespace sy
