#include "kernels/cpu/pack.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/parallel.h"
#include "kernels/cpu/fp8.h"
#include "kernels/math.h"

namespace sy {

namespace {
void check_words(int64_t row_words, int64_t need, const char* what, int64_t C) {
  SY_CHECK(row_words >= need, "{}: packed rows of {} words cannot hold {} values ({} words)", what, row_words, C, need);
}

// One row each, on pointers that do not overlap (byte stores through an
// alias of the floats, or of the captured sizes, would keep the compiler
// from vectorizing the loop).
void pack_bf16_row(unsigned char* __restrict row, const float* __restrict x, int64_t C) {
  for (int64_t k = 0; k < C; ++k) {
    const uint16_t h = math::bf16_round(x[k]);
    std::memcpy(row + 2 * k, &h, 2);
  }
}
void unpack_bf16_row(float* __restrict x, const unsigned char* __restrict row, int64_t C) {
  for (int64_t k = 0; k < C; ++k) {
    uint16_t h;
    std::memcpy(&h, row + 2 * k, 2);
    x[k] = math::bf16_value(h);
  }
}
void fp8_decode_row(float* __restrict x, const unsigned char* __restrict row, const float* __restrict t, int64_t C,
                    int64_t cw) {
  for (int64_t b = 0; b * kFp8Block < C; ++b) {
    float sinv;
    std::memcpy(&sinv, row + (cw + b) * 4, sizeof(float));
    const int64_t k1 = std::min(C, (b + 1) * kFp8Block);
    for (int64_t k = b * kFp8Block; k < k1; ++k) x[k] = t[row[k]] * sinv;
  }
}
}  // namespace

void pack_bf16_rows(void* packed, int64_t row_words, const float* x, int64_t n, int64_t C) {
  check_words(row_words, bf16_row_words(C), "pack_bf16_rows", C);
  auto* out = static_cast<unsigned char*>(packed);
  parallel_for(n, [&](int64_t r) {
    unsigned char* row = out + r * row_words * 4;
    pack_bf16_row(row, x + r * C, C);
    std::memset(row + 2 * C, 0, static_cast<size_t>(row_words * 4 - 2 * C));
  });
}

void unpack_bf16_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C) {
  check_words(row_words, bf16_row_words(C), "unpack_bf16_rows", C);
  const auto* in = static_cast<const unsigned char*>(packed);
  parallel_for(n, [&](int64_t r) { unpack_bf16_row(x + r * C, in + r * row_words * 4, C); });
}

void fp8_pack_rows(void* packed, int64_t row_words, const Fp8Matrix& m) {
  SY_CHECK(m.mode == ScaleMode::rows_1x128, "fp8_pack_rows: the rows need 1x128 scales, got {}", to_string(m.mode));
  const int64_t C = m.cols, kb = m.kblocks(), cw = fp8_code_words(C);
  check_words(row_words, fp8_row_words(C), "fp8_pack_rows", C);
  auto* out = static_cast<unsigned char*>(packed);
  parallel_for(m.rows, [&](int64_t r) {
    unsigned char* row = out + r * row_words * 4;
    std::memcpy(row, m.q.data() + r * C, static_cast<size_t>(C));
    std::memset(row + C, 0, static_cast<size_t>(cw * 4 - C));
    for (int64_t b = 0; b < kb; ++b) {
      const float s = m.sinv(r, b);
      std::memcpy(row + (cw + b) * 4, &s, sizeof(float));
    }
    std::memset(row + (cw + kb) * 4, 0, static_cast<size_t>((row_words - cw - kb) * 4));
  });
}

void fp8_unpack_rows(Fp8Matrix& m, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt,
                     Allocator& mem) {
  check_words(row_words, fp8_row_words(C), "fp8_unpack_rows", C);
  m.shape(n, C, fmt, ScaleMode::rows_1x128, mem);
  const int64_t kb = m.kblocks(), cw = fp8_code_words(C), ld = m.scale_ld;
  const auto* in = static_cast<const unsigned char*>(packed);
  float* sinv = m.scale_inv.data();
  std::fill(sinv, sinv + m.scale_count(), 0.f);  // the padding rows
  uint8_t* q = m.q.data();
  parallel_for(n, [&](int64_t r) {
    const unsigned char* row = in + r * row_words * 4;
    std::memcpy(q + r * C, row, static_cast<size_t>(C));
    for (int64_t b = 0; b < kb; ++b) std::memcpy(sinv + b * ld + r, row + (cw + b) * 4, sizeof(float));
  });
}

void fp8_decode_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt) {
  check_words(row_words, fp8_row_words(C), "fp8_decode_rows", C);
  const float* t = fp8_table(fmt);
  const int64_t cw = fp8_code_words(C);
  const auto* in = static_cast<const unsigned char*>(packed);
  parallel_for(n, [&](int64_t r) { fp8_decode_row(x + r * C, in + r * row_words * 4, t, C, cw); });
}

}  // namespace sy
