// Moving token rows to expert order and back (the local half of MoE dispatch).
//   row_token (M): the token each send row comes from
//   pos (N, K): the send row of token t's k-th pick, or -1 if that pick was dropped
// The expert-side copy of send row r is found through a RowMap: either a
// contiguous buffer (row r at r * C), or rows scattered over other ranks'
// shared-memory segments (base[rank[r]] + row[r] * C), so that a gather
// writes a token row straight into the expert's buffer and a combine reads
// expert outputs straight from it.
//   gather:   y-side[r] = x (N, C) [row_token[r]]
//   gather backward: dx (N, C) += sum_k y-side[pos[t][k]]      (token-major, no races)
//   combine:  out (N, C) += sum_k gates[t][k] * y-side[pos[t][k]]   (optionally copying the rows out)
//   combine backward: y-side[pos] = gates * dout[token], dgates (N, K) = <dout[t], y[pos]>
#pragma once

#include <cstdint>

#include "kernels/types.h"

namespace sy {


void moe_gather(RowMap dst, const float* x, const int32_t* row_token, int64_t M, int64_t C);
void moe_gather_backward(float* dx, RowMap src, const int32_t* pos, int64_t N, int64_t K, int64_t C);
// y_copy (M, C), if not null, receives a contiguous copy of every row read.
void moe_combine(float* out, RowMap y, float* y_copy, const float* gates, const int32_t* pos, int64_t N, int64_t K,
                 int64_t C);
void moe_combine_backward(RowMap dy, float* dgates, const float* dout, RowMap y, const float* gates,
                          const int32_t* pos, int64_t N, int64_t K, int64_t C);

template <class T>
void moe_gather_ref(T* xp, const T* x, const int32_t* row_token, int64_t M, int64_t C) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < C; ++c) xp[r * C + c] = x[int64_t{row_token[r]} * C + c];
}

template <class T>
void moe_gather_backward_ref(T* dx, const T* dxp, const int32_t* pos, int64_t N, int64_t K, int64_t C) {
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (pos[t * K + k] >= 0)
        for (int64_t c = 0; c < C; ++c) dx[t * C + c] += dxp[int64_t{pos[t * K + k]} * C + c];
}

template <class T>
void moe_combine_ref(T* out, const T* y, const T* gates, const int32_t* pos, int64_t N, int64_t K, int64_t C) {
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (pos[t * K + k] >= 0)
        for (int64_t c = 0; c < C; ++c)
          out[t * C + c] += gates[t * K + k] * y[int64_t{pos[t * K + k]} * C + c];
}

template <class T>
void moe_combine_backward_ref(T* dy, T* dgates, const T* dout, const T* y, const T* gates,
                              const int32_t* pos, int64_t N, int64_t K, int64_t C) {
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k) {
      int64_t r = pos[t * K + k];
      T dot = 0;
      if (r >= 0)
        for (int64_t c = 0; c < C; ++c) {
          dy[r * C + c] = gates[t * K + k] * dout[t * C + c];
          dot += dout[t * C + c] * y[r * C + c];
        }
      dgates[t * K + k] = dot;
    }
}

}  // namespace sy
