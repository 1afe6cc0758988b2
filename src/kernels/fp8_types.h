// FP8 data as every backend holds it: the two formats (OCP FP8, as Hopper
// tensor cores use them), the three scaling modes, and a scaled matrix
// (codes + inverse scales). Device-neutral: the CPU backend quantizes into
// these on the host; the CUDA backend's are the same layout on the device.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

enum class Fp8Format : uint8_t { e4m3, e5m2 };

constexpr float fp8_max(Fp8Format f) { return f == Fp8Format::e4m3 ? 448.f : 57344.f; }
// Magnitudes that saturate (or overflow): beyond what rounds to the largest
// finite value, i.e. above max + half an ulp (E5M2: from it, the tie rounds up).
constexpr bool fp8_overflows(float a, Fp8Format f) { return f == Fp8Format::e4m3 ? a > 464.f : a >= 61440.f; }
inline std::string to_string(Fp8Format f) { return f == Fp8Format::e4m3 ? "e4m3" : "e5m2"; }

// The scale that maps amax to the format's largest value (1 for an all-zero
// or non-finite amax), optionally rounded down to a power of two.
inline float fp8_scale_for(float amax, Fp8Format f, bool pow2) {
  if (!(amax > 0) || !std::isfinite(amax)) return 1.f;
  float s = fp8_max(f) / amax;
  if (!std::isfinite(s)) s = 0x1p126f;  // amax is tiny: the largest sensible scale
  if (pow2) {  // round down to a power of two, exactly (log2 in float can round up just below one)
    int e = 0;
    std::frexp(s, &e);
    s = std::ldexp(1.f, e - 1);
  }
  return s;
}

struct QuantStats {
  float amax = 0;          // max |x| before scaling (finite values)
  int64_t saturated = 0;   // |x * scale| beyond what rounds to the largest finite value (fp8_overflows)
};

inline constexpr int64_t kFp8Block = 128;

// tensor: one scale for the whole tensor; rows_1x128: one per row per 128
// columns (DeepSeek-V3's activation/gradient tiles); blocks_128x128: one per
// 128 x 128 block (DeepSeek-V3's weights).
enum class ScaleMode : uint8_t { tensor, rows_1x128, blocks_128x128 };
inline std::string to_string(ScaleMode m) {
  switch (m) {
    case ScaleMode::tensor: return "tensor";
    case ScaleMode::rows_1x128: return "1x128";
    default: return "128x128";
  }
}

struct Fp8Matrix {
  int64_t rows = 0, cols = 0;
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  std::vector<uint8_t> q;          // (rows, cols)
  std::vector<float> scale_inv;    // tensor: 1; rows: rows x kb; blocks: ceil(rows/128) x kb
  int64_t kblocks() const { return (cols + kFp8Block - 1) / kFp8Block; }
  float sinv(int64_t r, int64_t kb) const {
    switch (mode) {
      case ScaleMode::tensor: return scale_inv[0];
      case ScaleMode::rows_1x128: return scale_inv[static_cast<size_t>(r * kblocks() + kb)];
      default: return scale_inv[static_cast<size_t>((r / kFp8Block) * kblocks() + kb)];
    }
  }
  size_t bytes() const { return q.size() + scale_inv.size() * sizeof(float); }
};

struct QuantOptions {
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  bool pow2 = false;          // scales rounded down to powers of two
  bool saturate = true;
  float scale = 0;            // tensor mode: a given scale (delayed scaling); 0 = from this tensor's amax
};

}  // namespace sy
