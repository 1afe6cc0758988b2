#include "kernels/cpu/linear.h"

#include "kernels/cpu/blas.h"

namespace sy {

void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
  sgemm(false, true, N, O, I, 1.f, inp, I, w, I, 0.f, out, O);
}

void linear_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp) {
  if (dinp) sgemm(false, false, N, I, O, 1.f, dout, O, w, I, accumulate_dinp ? 1.f : 0.f, dinp, I);
  sgemm(true, false, O, I, N, 1.f, dout, O, inp, I, 1.f, dw, I);
}

}  // namespace sy
