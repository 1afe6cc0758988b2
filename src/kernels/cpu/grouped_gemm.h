// Grouped linear layer: one weight per group (expert), each group's rows
// contiguous. Rows [offsets[e], offsets[e+1]) belong to group e.
//   forward:  out_e (n_e, O) = inp_e (n_e, I) . W_e^T,  W_e (O, I) at w[e]
//   backward: dinp_e = dout_e . W_e (overwritten),  dW_e += dout_e^T . inp_e
#pragma once

#include <cstdint>

#include "kernels/cpu/linear.h"

namespace sy {

// FP32. (The FP8 path runs each group through the FP8 linear: fp8/linear.h.)
void grouped_linear_forward(float* out, const float* inp, const float* const* w,
                            const int64_t* offsets, int64_t groups, int64_t I, int64_t O);
void grouped_linear_backward(float* dinp, float* const* dw, const float* dout, const float* inp,
                             const float* const* w, const int64_t* offsets, int64_t groups,
                             int64_t I, int64_t O);
// The halves of backward (grouped_linear_backward is exactly both).
void grouped_linear_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                          int64_t groups, int64_t I, int64_t O);
void grouped_linear_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                          int64_t groups, int64_t I, int64_t O);

template <class T>
void grouped_linear_forward_ref(T* out, const T* inp, const T* const* w, const int64_t* offsets,
                                int64_t groups, int64_t I, int64_t O) {
  for (int64_t e = 0; e < groups; ++e)
    linear_forward_ref(out + offsets[e] * O, inp + offsets[e] * I, w[e], offsets[e + 1] - offsets[e], I, O);
}

template <class T>
void grouped_linear_backward_ref(T* dinp, T* const* dw, const T* dout, const T* inp,
                                 const T* const* w, const int64_t* offsets, int64_t groups,
                                 int64_t I, int64_t O) {
  for (int64_t e = 0; e < groups; ++e)
    linear_backward_ref(dinp + offsets[e] * I, dw[e], dout + offsets[e] * O, inp + offsets[e] * I,
                        w[e], offsets[e + 1] - offsets[e], I, O);
}

}  // namespace sy
