// RMSNorm: out = inp * rstd * w, rstd = 1 / sqrt(mean(inp^2) + eps).
//   forward:  out (N, C), rstd (N) from inp (N, C), w (C)
//   backward: dinp (N, C) += ..., dw (C) += ...
#pragma once

#include <cmath>
#include <cstdint>

namespace sy {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int64_t N,
                     int64_t C, float eps);
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int64_t N, int64_t C);

template <class T>
void rmsnorm_forward_ref(T* out, T* rstd, const T* inp, const T* w, int64_t N, int64_t C, T eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    T ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
    T r = T(1) / std::sqrt(ss / T(C) + eps);
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = x[c] * r * w[c];
  }
}

template <class T>
void rmsnorm_backward_ref(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd,
                          int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    const T* dy = dout + n * C;
    T r = rstd[n];
    T dot = 0;  // sum_c w_c dy_c x_c
    for (int64_t c = 0; c < C; ++c) dot += w[c] * dy[c] * x[c];
    for (int64_t c = 0; c < C; ++c) {
      dinp[n * C + c] += r * w[c] * dy[c] - r * r * r / T(C) * dot * x[c];
      dw[c] += dy[c] * x[c] * r;
    }
  }
}

}  // namespace sy
