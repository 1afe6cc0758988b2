// The bf16 recipe's linears on the CPU, the reference of every backend's
// BF16 GEMMs: both operands rounded to BF16 (nearest even, round_to_bf16),
// then the FP32 GEMM of linear.h / grouped_gemm.h on the rounded copies.
// Products of BF16 values are exact in FP32 (8 x 8 significand bits), so
// this is what a BF16 tensor-core GEMM with FP32 accumulation computes, up
// to the order of the FP32 sums. Shapes and the overwrite/accumulate rules
// are those of the FP32 functions of the same name without _bf16.
//
// The rounded copies go to grow-only scratch of the calling thread (host
// memory, 256-byte aligned), so after the first steps nothing is allocated.
#pragma once

#include <cstdint>

namespace sy {

void linear_forward_bf16(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O);
void linear_dgrad_bf16(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                       bool accumulate_dinp = false);
void linear_wgrad_bf16(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O);

// Rows [offsets[0], offsets[groups]) are read (the rounded copy keeps their
// row positions), each group's weight is rounded once.
void grouped_linear_forward_bf16(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                                 int64_t groups, int64_t I, int64_t O);
void grouped_linear_dgrad_bf16(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                               int64_t groups, int64_t I, int64_t O);
void grouped_linear_wgrad_bf16(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                               int64_t groups, int64_t I, int64_t O);

}  // namespace sy
