// Linear layer without bias, PyTorch's convention: W is (O, I).
//   forward:  out (N, O) = inp (N, I) . W^T
//   backward: dinp (N, I) = dout . W   (overwritten, or added when accumulate)
//             dW   (O, I) += dout^T . inp
#pragma once

#include <cstddef>
#include <cstdint>

namespace sy {

void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O);
// dinp may be null (no input gradient wanted).
void linear_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp = false);
// The two halves of backward, for callers that run them apart (zero-bubble
// schedules defer the weight gradient): linear_backward is exactly both.
void linear_dgrad(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                  bool accumulate_dinp = false);
void linear_wgrad(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O);

template <class T>
void linear_forward_ref(T* out, const T* inp, const T* w, int64_t N, int64_t I, int64_t O) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      T acc = 0;
      for (int64_t i = 0; i < I; ++i) acc += inp[n * I + i] * w[o * I + i];
      out[n * O + o] = acc;
    }
}

template <class T>
void linear_backward_ref(T* dinp, T* dw, const T* dout, const T* inp, const T* w, int64_t N,
                         int64_t I, int64_t O, bool accumulate_dinp = false) {
  if (dinp)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < I; ++i) {
        T acc = 0;
        for (int64_t o = 0; o < O; ++o) acc += dout[n * O + o] * w[o * I + i];
        dinp[n * I + i] = accumulate_dinp ? dinp[n * I + i] + acc : acc;
      }
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      T acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += dout[n * O + o] * inp[n * I + i];
      dw[o * I + i] += acc;
    }
}

}  // namespace sy
