// Moving token rows to expert order and back (the local half of MoE dispatch).
//   row_token (M): the token each expert-ordered row comes from
//   pos (N, K): the row of token t's k-th pick, or -1 if that pick was dropped
//   gather:   xp (M, C) = x (N, C) [row_token]
//   gather backward: dx (N, C) += sum_k dxp[pos[t][k]]      (token-major, no races)
//   combine:  out (N, C) += sum_k gates[t][k] * y[pos[t][k]]
//   combine backward: dy (M, C) = gates * dout[token], dgates (N, K) = <dout[t], y[pos]>
#pragma once

#include <cstdint>

namespace sy {

void moe_gather(float* xp, const float* x, const int32_t* row_token, int64_t M, int64_t C);
void moe_gather_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N, int64_t K, int64_t C);
void moe_combine(float* out, const float* y, const float* gates, const int32_t* pos, int64_t N,
                 int64_t K, int64_t C);
void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                          const float* gates, const int32_t* pos, int64_t N, int64_t K, int64_t C);

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
