#include "moe/payload.h"

#include "core/check.h"

namespace sy {

const char* to_string(Payload p) {
  switch (p) {
    case Payload::fp32: return "fp32";
    case Payload::bf16: return "bf16";
    case Payload::fp8: return "fp8";
  }
  return "?";
}

int64_t payload_row_words(Payload p, int64_t C) {
  switch (p) {
    case Payload::fp32: return C;
    case Payload::bf16: return bf16_row_words(C);
    case Payload::fp8: return fp8_row_words(C);
  }
  return C;
}

int64_t payload_row_bytes(Payload p, int64_t C) {
  switch (p) {
    case Payload::fp32: return 4 * C;
    case Payload::bf16: return 2 * C;
    case Payload::fp8: return C + 4 * ((C + kFp8Block - 1) / kFp8Block);
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

namespace {
thread_local Fp8Matrix t_q;  // the quantized rows being packed (reused)
}  // namespace

QuantStats payload_encode(Payload p, void* packed, const float* x, int64_t n, int64_t C, const QuantOptions& o,
                          const Backend* be, Stream s) {
  const Backend& b = be ? *be : backend(Device::cpu);
  if (n == 0) return {};
  const int64_t W = payload_row_words(p, C);
  switch (p) {
    case Payload::fp32:
      b.copy(packed, x, static_cast<size_t>(n * C) * sizeof(float), s);
      return {};
    case Payload::bf16:
      b.pack_bf16_rows(packed, W, x, n, C, s);
      return {};
    case Payload::fp8: {
      SY_CHECK(o.mode == ScaleMode::rows_1x128, "FP8 MoE payload needs 1x128 scales, got {}", to_string(o.mode));
      const QuantStats st = b.fp8_quantize(t_q, x, n, C, o, false, s);
      b.fp8_pack_rows(packed, W, t_q, s);
      return st;
    }
  }
  return {};
}

void payload_decode(Payload p, float* x, const void* packed, int64_t n, int64_t C, Fp8Format fmt, const Backend* be,
                    Stream s) {
  const Backend& b = be ? *be : backend(Device::cpu);
  if (n == 0) return;
  const int64_t W = payload_row_words(p, C);
  switch (p) {
    case Payload::fp32: b.copy(x, packed, static_cast<size_t>(n * C) * sizeof(float), s); return;
    case Payload::bf16: b.unpack_bf16_rows(x, packed, W, n, C, s); return;
    case Payload::fp8: b.fp8_decode_rows(x, packed, W, n, C, fmt, s); return;
  }
}

}  // namespace sy
