// What MoE rows travel as between expert-parallel ranks (parallel.dispatch_dtype),
// in one place every transport calls (mpi, mpi-overlapped; the
// hierarchical transport's network level can call the same functions).
//
//   fp32  rows as computed: C floats.
//   bf16  C BF16 values, rounded to nearest even (NaN stays NaN, Inf Inf).
//   fp8   C FP8 codes (E4M3 for the forward rows, the recipe's gradient
//         format for the backward ones) and one FP32 inverse scale per
//         1 x 128 block of the row, in the same packed row:
//           [C codes, zero-padded to a multiple of 4][kb = ceil(C / 128) floats]
//         Encoded by the backend's fp8_quantize (rows_1x128): exactly the
//         operand the FP8 expert GEMM would quantize from the same rows.
//         Decoded as decode(code) * scale_inv, as the FP8 GEMM computes.
//
// Packed rows are a whole number of 4-byte words (the unit the all-to-all-v
// moves), so rows of any payload travel through the float all-to-all-v of
// comm/ unchanged, `payload_row_words` floats a row.
//
// DeepSeek-V3's choice, parallel.dispatch_dtype = "fp8": rows to the experts
// (forward: tokens; backward: output gradients) in FP8, rows back (expert
// outputs; input gradients) in BF16.
#pragma once

#include <cstdint>

#include "kernels/backend.h"  // Backend::fp8_quantize, the quantizer of the FP8 GEMM
#include "kernels/fp8_types.h"

namespace sy {

enum class Payload : uint8_t { fp32, bf16, fp8 };
const char* to_string(Payload p);

// 4-byte words of one packed row of C values, and the bytes of it that carry data.
int64_t payload_row_words(Payload p, int64_t C);
int64_t payload_row_bytes(Payload p, int64_t C);

// How one dispatcher's rows travel: to the experts (`out`) and back (`back`).
struct PayloadCodec {
  Payload out = Payload::fp32;   // forward rows and backward output gradients to the experts
  Payload back = Payload::fp32;  // expert outputs and input gradients back (fp32 or bf16)
  // fp8: how the forward rows (act, E4M3) and the backward rows (grad) are
  // quantized; mode rows_1x128. From the FP8 recipe when there is one.
  QuantOptions act, grad;
  const Backend* be = nullptr;   // packs and unpacks the rows, in its memory (the expert GEMM's backend)
  bool any() const { return out != Payload::fp32 || back != Payload::fp32; }
};

// The codec of parallel.dispatch_dtype = p, rows back as `back` (fp32 or
// bf16), with the FP8 recipe's pow2 / saturate / gradient format.
PayloadCodec make_payload_codec(Payload p, Payload back, const Backend& be, Fp8Format grad_format = Fp8Format::e4m3,
                                bool pow2 = false, bool saturate = true);

// Packs rows x (n, C) into packed (n, payload_row_words(p, C) words) by
// be's ops on stream s (x and packed in be's memory; null: the CPU's).
// fp8 quantizes with o (be's fp8_quantize, rows_1x128); returns the
// quantization's statistics (amax of the rows), zero for the other payloads.
QuantStats payload_encode(Payload p, void* packed, const float* x, int64_t n, int64_t C, const QuantOptions& o = {},
                          const Backend* be = nullptr, Stream s = {});
// Unpacks packed rows into x (n, C) floats. fmt: the FP8 format they were encoded in.
void payload_decode(Payload p, float* x, const void* packed, int64_t n, int64_t C, Fp8Format fmt = Fp8Format::e4m3,
                    const Backend* be = nullptr, Stream s = {});

}  // namespace sy
