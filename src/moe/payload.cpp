#include "moe/payload.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/dtype.h"

namespace sy {

const char* to_string(Payload p) {
  switch (p) {
    case Payload::fp32: return "fp32";
    case Payload::bf16: return "bf16";
    case Payload::fp8: return "fp8";
  }
  return "?";
}

namespace {
int64_t code_words(int64_t C) { return (C + 3) / 4; }
int64_t kblocks(int64_t C) { return (C + kFp8Block - 1) / kFp8Block; }

// The 256 values of an FP8 format (exact in float; OCP FP8 as kernels/cpu/fp8.h).
std::array<float, 256> make_table(Fp8Format f) {
  const bool e4 = f == Fp8Format::e4m3;
  const int mant = e4 ? 3 : 2, bias = e4 ? 7 : 15;
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const int e = (c & 0x7F) >> mant, m = c & ((1 << mant) - 1);
    float v;
    if (e4 && (c & 0x7F) == 0x7F)
      v = NAN;
    else if (!e4 && e == 31)
      v = m == 0 ? INFINITY : NAN;
    else if (e == 0)
      v = std::ldexp(static_cast<float>(m), 1 - bias - mant);
    else
      v = std::ldexp(1.f + static_cast<float>(m) / static_cast<float>(1 << mant), e - bias);
    t[static_cast<size_t>(c)] = (c & 0x80) ? -v : v;
  }
  return t;
}
const float* table(Fp8Format f) {
  static const std::array<float, 256> e4 = make_table(Fp8Format::e4m3), e5 = make_table(Fp8Format::e5m2);
  return f == Fp8Format::e4m3 ? e4.data() : e5.data();
}

thread_local Fp8Matrix t_q;  // the quantized rows being packed (reused)
}  // namespace

int64_t payload_row_words(Payload p, int64_t C) {
  switch (p) {
    case Payload::fp32: return C;
    case Payload::bf16: return (C + 1) / 2;
    case Payload::fp8: return code_words(C) + kblocks(C);
  }
  return C;
}

int64_t payload_row_bytes(Payload p, int64_t C) {
  switch (p) {
    case Payload::fp32: return 4 * C;
    case Payload::bf16: return 2 * C;
    case Payload::fp8: return C + 4 * kblocks(C);
  }
  return 4 * C;
}

PayloadCodec make_payload_codec(Payload p, Payload back, const Backend& be, Fp8Format grad_format, bool pow2,
                                bool saturate) {
  SY_CHECK(back != Payload::fp8, "MoE rows back from the experts travel as fp32 or bf16, not fp8");
  PayloadCodec c;
  c.out = p;
  c.back = back;
  c.act = {Fp8Format::e4m3, ScaleMode::rows_1x128, pow2, saturate, 0};
  c.grad = {grad_format, ScaleMode::rows_1x128, pow2, saturate, 0};
  c.be = &be;
  return c;
}

QuantStats payload_encode(Payload p, void* packed, const float* x, int64_t n, int64_t C, const QuantOptions& o,
                          const Backend* be) {
  auto* out = static_cast<unsigned char*>(packed);
  const int64_t W = payload_row_words(p, C);
  switch (p) {
    case Payload::fp32:
      if (n > 0) std::memcpy(out, x, static_cast<size_t>(n * C) * sizeof(float));
      return {};
    case Payload::bf16:
      for (int64_t r = 0; r < n; ++r) {
        unsigned char* row = out + r * W * 4;
        for (int64_t k = 0; k < C; ++k) {
          const uint16_t h = f32_to_bf16(x[r * C + k]);
          std::memcpy(row + 2 * k, &h, 2);
        }
        if (C % 2) std::memset(row + 2 * C, 0, 2);
      }
      return {};
    case Payload::fp8: {
      SY_CHECK(be && o.mode == ScaleMode::rows_1x128, "FP8 MoE payload needs a backend and 1x128 scales");
      if (n == 0) return {};
      const QuantStats st = be->fp8_quantize(t_q, x, n, C, o, false, Stream{});
      const int64_t kb = kblocks(C), cw = code_words(C);
      for (int64_t r = 0; r < n; ++r) {
        unsigned char* row = out + r * W * 4;
        std::memcpy(row, t_q.q.data() + r * C, static_cast<size_t>(C));
        std::memset(row + C, 0, static_cast<size_t>(cw * 4 - C));
        std::memcpy(row + cw * 4, t_q.scale_inv.data() + r * kb, static_cast<size_t>(kb) * sizeof(float));
      }
      return st;
    }
  }
  return {};
}

void payload_decode(Payload p, float* x, const void* packed, int64_t n, int64_t C, Fp8Format fmt) {
  const auto* in = static_cast<const unsigned char*>(packed);
  const int64_t W = payload_row_words(p, C);
  switch (p) {
    case Payload::fp32:
      if (n > 0) std::memcpy(x, in, static_cast<size_t>(n * C) * sizeof(float));
      return;
    case Payload::bf16:
      for (int64_t r = 0; r < n; ++r) {
        const unsigned char* row = in + r * W * 4;
        for (int64_t k = 0; k < C; ++k) {
          uint16_t h;
          std::memcpy(&h, row + 2 * k, 2);
          x[r * C + k] = bf16_to_f32(h);
        }
      }
      return;
    case Payload::fp8: {
      const float* t = table(fmt);
      const int64_t kb = kblocks(C), cw = code_words(C);
      for (int64_t r = 0; r < n; ++r) {
        const unsigned char* row = in + r * W * 4;
        for (int64_t b = 0; b < kb; ++b) {
          float sinv;
          std::memcpy(&sinv, row + cw * 4 + b * 4, sizeof(float));
          for (int64_t k = b * kFp8Block; k < std::min(C, (b + 1) * kFp8Block); ++k) x[r * C + k] = t[row[k]] * sinv;
        }
      }
      return;
    }
  }
}

void payload_fp8_matrix(Fp8Matrix& m, const void* packed, int64_t n, int64_t C, Fp8Format fmt) {
  const auto* in = static_cast<const unsigned char*>(packed);
  const int64_t W = payload_row_words(Payload::fp8, C), kb = kblocks(C), cw = code_words(C);
  m.rows = n, m.cols = C, m.fmt = fmt, m.mode = ScaleMode::rows_1x128;
  m.q.resize(static_cast<size_t>(n * C));
  m.scale_inv.resize(static_cast<size_t>(n * kb));
  for (int64_t r = 0; r < n; ++r) {
    const unsigned char* row = in + r * W * 4;
    std::memcpy(m.q.data() + r * C, row, static_cast<size_t>(C));
    std::memcpy(m.scale_inv.data() + r * kb, row + cw * 4, static_cast<size_t>(kb) * sizeof(float));
  }
}

void fp8_dequantize_rows(float* x, const Fp8Matrix& m) {
  SY_CHECK(m.mode == ScaleMode::rows_1x128, "fp8_dequantize_rows: 1x128 scales expected, got {}", to_string(m.mode));
  const float* t = table(m.fmt);
  const int64_t kb = m.kblocks();
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t k = 0; k < m.cols; ++k)
      x[r * m.cols + k] = t[m.q[static_cast<size_t>(r * m.cols + k)]] * m.scale_inv[static_cast<size_t>(r * kb + k / kFp8Block)];
}

}  // namespace sy
