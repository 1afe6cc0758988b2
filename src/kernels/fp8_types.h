// FP8 data as every backend holds it: the two formats (OCP FP8, as Hopper
// tensor cores use them), the three scaling modes, and a scaled matrix
// (codes + inverse scales). Device-neutral: the CPU backend quantizes into
// these on the host; the CUDA backend's are the same layout on the device.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"  // GrowBuffer: codes and scales in a backend's memory

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

// A scaled FP8 matrix in one backend's memory (the backend that quantized
// into it: host memory on the CPU, device memory on a GPU; nothing here
// assumes the host can read it). Scales are laid out as cuBLASLt reads
// them, on every backend, so a matrix means the same bytes everywhere:
//   tensor:          scale_inv[0];
//   rows_1x128:      scale_inv[kb * scale_ld + r]          (VEC128_32F);
//   blocks_128x128:  scale_inv[kb * scale_ld + r / 128]    (BLK128x128_32F);
// scale_ld is the scaled rows rounded up to a multiple of 4 (16-byte
// aligned columns); the padding holds zeros.
struct Fp8Matrix {
  int64_t rows = 0, cols = 0;
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  int64_t scale_ld = 1;
  GrowBuffer<uint8_t> q;         // (rows, cols) codes, row-major
  GrowBuffer<float> scale_inv;   // scale_count() inverse scales

  int64_t kblocks() const { return (cols + kFp8Block - 1) / kFp8Block; }
  // Rows of scales: one (tensor), one per row (1 x 128), one per 128 rows (128 x 128).
  int64_t scaled_rows() const {
    return mode == ScaleMode::tensor ? 1 : mode == ScaleMode::rows_1x128 ? rows : (rows + kFp8Block - 1) / kFp8Block;
  }
  size_t code_count() const { return static_cast<size_t>(rows * cols); }
  size_t scale_count() const { return mode == ScaleMode::tensor ? 1 : static_cast<size_t>(scale_ld * kblocks()); }
  size_t bytes() const { return code_count() + scale_count() * sizeof(float); }
  // Gives the matrix this shape, its codes and scales room in `mem` (contents not kept).
  void shape(int64_t r, int64_t c, Fp8Format f, ScaleMode m, Allocator& mem) {
    rows = r, cols = c, fmt = f, mode = m;
    scale_ld = m == ScaleMode::tensor ? 1 : (scaled_rows() + 3) / 4 * 4;
    q.ensure(std::max<size_t>(code_count(), 1), mem);
    scale_inv.ensure(scale_count(), mem);
  }
  // Host memory only (the CPU backend, tests): code (r, k) and the inverse
  // scale of row r's K block kb.
  uint8_t code(int64_t r, int64_t k) const { return q.data()[r * cols + k]; }
  float sinv(int64_t r, int64_t kb) const {
    switch (mode) {
      case ScaleMode::tensor: return scale_inv.data()[0];
      case ScaleMode::rows_1x128: return scale_inv.data()[kb * scale_ld + r];
      default: return scale_inv.data()[kb * scale_ld + r / kFp8Block];
    }
  }
};

// Words (4 bytes) of one packed row of C values (Backend::pack_bf16_rows,
// fp8_pack_rows; kernels/cpu/pack.h): BF16 values; FP8 codes, then the
// row's 1 x 128 inverse scales.
inline int64_t bf16_row_words(int64_t C) { return (C + 1) / 2; }
inline int64_t fp8_code_words(int64_t C) { return (C + 3) / 4; }
inline int64_t fp8_row_words(int64_t C) { return fp8_code_words(C) + (C + kFp8Block - 1) / kFp8Block; }

struct QuantOptions {
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  bool pow2 = false;          // scales rounded down to powers of two
  bool saturate = true;
  float scale = 0;            // tensor mode: a given scale (delayed scaling); 0 = from this tensor's amax
};

}  // namespace sy
