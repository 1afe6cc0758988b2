// Token embedding.
//   forward:  out (N, C) = wte (V, C) [tokens (N)]
//   backward: dwte (V, C) [tokens[n]] += dout (N, C) [n]
#pragma once

#include <cstdint>

namespace sy {

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C);
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C);

template <class T>
void embedding_forward_ref(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = wte[int64_t{tokens[n]} * C + c];
}

template <class T>
void embedding_backward_ref(T* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) dwte[int64_t{tokens[n]} * C + c] += dout[n * C + c];
}

}  // namespace sy
