#include "kernels/cpu/grouped_gemm.h"

#include "kernels/cpu/blas.h"

namespace sy {

void grouped_linear_forward(float* out, const float* inp, const float* const* w,
                            const int64_t* offsets, int64_t groups, int64_t I, int64_t O) {
  for (int64_t e = 0; e < groups; ++e) {
    int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    sgemm(false, true, n, O, I, 1.f, inp + offsets[e] * I, I, w[e], I, 0.f, out + offsets[e] * O, O);
  }
}

void grouped_linear_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                          int64_t groups, int64_t I, int64_t O) {
  for (int64_t e = 0; e < groups; ++e) {
    int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    sgemm(false, false, n, I, O, 1.f, dout + offsets[e] * O, O, w[e], I, 0.f, dinp + offsets[e] * I, I);
  }
}

void grouped_linear_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                          int64_t groups, int64_t I, int64_t O) {
  for (int64_t e = 0; e < groups; ++e) {
    int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    sgemm(true, false, O, I, n, 1.f, dout + offsets[e] * O, O, inp + offsets[e] * I, I, 1.f, dw[e], I);
  }
}

void grouped_linear_backward(float* dinp, float* const* dw, const float* dout, const float* inp,
                             const float* const* w, const int64_t* offsets, int64_t groups,
                             int64_t I, int64_t O) {
  grouped_linear_dgrad(dinp, dout, w, offsets, groups, I, O);
  grouped_linear_wgrad(dw, dout, inp, offsets, groups, I, O);
}

}  // namespace sy
