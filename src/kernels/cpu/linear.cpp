#include "kernels/cpu/linear.h"

#include "kernels/cpu/blas.h"

namespace sy {

void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
  sgemm(false, true, N, O, I, 1.f, inp, I, w, I, 0.f, out, O);
}

void linear_dgrad(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                  bool accumulate_dinp) {
  sgemm(false, false, N, I, O, 1.f, dout, O, w, I, accumulate_dinp ? 1.f : 0.f, dinp, I);
}

void linear_wgrad(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O) {
  sgemm(true, false, O, I, N, 1.f, dout, O, inp, I, 1.f, dw, I);
}

void linear_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp) {
  if (dinp) linear_dgrad(dinp, dout, w, N, I, O, accumulate_dinp);
  linear_wgrad(dw, dout, inp, N, I, O);
}

}  // namespace sy
