// Packed rows: the MoE payloads that travel between expert-parallel ranks
// (moe/payload.h says which and why). n rows of C values; packed row r
// starts at word r * row_words (4-byte words, the unit the all-to-all-v
// moves; row_words is at least the format's need: bf16_row_words,
// fp8_row_words in kernels/fp8_types.h).
//   bf16: C BF16 values, nearest even (kernels/math.h bf16_round), the
//         last half-word zero when C is odd: (C + 1) / 2 words.
//   fp8:  the C codes of a 1 x 128-scaled Fp8Matrix, zero-padded to whole
//         words, then its ceil(C / 128) inverse scales (FP32):
//         (C + 3) / 4 + ceil(C / 128) words.
// The CPU reference of the backend ops of the same names (kernels/backend.h);
// the CUDA kernels compute the same bytes.
#pragma once

#include <cstdint>

#include "kernels/fp8_types.h"

namespace sy {

void pack_bf16_rows(void* packed, int64_t row_words, const float* x, int64_t n, int64_t C);
void unpack_bf16_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C);
// m: rows_1x128, host memory.
void fp8_pack_rows(void* packed, int64_t row_words, const Fp8Matrix& m);
// m (n, C, fmt, rows_1x128), its codes and scales in `mem` (host memory).
void fp8_unpack_rows(Fp8Matrix& m, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt,
                     Allocator& mem = host_allocator());
// x (n, C) = decode(code) * scale_inv of packed FP8 rows.
void fp8_decode_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt);

}  // namespace sy
