// SwiGLU activation on a fused up-projection.
//   inp (N, 2F): row = [a (F) | b (F)], a = x W_gate^T, b = x W_up^T
//   forward:  out (N, F) = silu(a) * b,  silu(a) = a * sigmoid(a)
//   backward: dinp (N, 2F) overwritten
#pragma once

#include <cmath>
#include <cstdint>

namespace sy {

void swiglu_forward(float* out, const float* inp, int64_t N, int64_t F);
void swiglu_backward(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F);

template <class T>
void swiglu_forward_ref(T* out, const T* inp, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f) {
      T a = inp[n * 2 * F + f], b = inp[n * 2 * F + F + f];
      T sig = T(1) / (T(1) + std::exp(-a));
      out[n * F + f] = a * sig * b;
    }
}

template <class T>
void swiglu_backward_ref(T* dinp, const T* dout, const T* inp, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f) {
      T a = inp[n * 2 * F + f], b = inp[n * 2 * F + F + f];
      T sig = T(1) / (T(1) + std::exp(-a));
      T dy = dout[n * F + f];
      dinp[n * 2 * F + f] = dy * b * sig * (T(1) + a * (T(1) - sig));
      dinp[n * 2 * F + F + f] = dy * a * sig;
    }
}

}  // namespace sy
