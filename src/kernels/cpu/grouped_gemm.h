// Grouped linear layer: one weight per group (expert), each group's rows
// contiguous. Rows [offsets[e], offsets[e+1]) belong to group e.
//   forward:  out_e (n_e, O) = inp_e (n_e, I) . W_e^T,  W_e (O, I) at w[e]
//   backward: dinp_e = dout_e . W_e (overwritten),  dW_e += dout_e^T . inp_e
#pragma once

#include <cstdint>

#include "kernels/cpu/linear.h"

namespace sy {

// With `save` (FP8 only) each group's input is kept in FP8 for backward,
// which then reads `saved` instead of inp.
struct Fp8Saved;
void grouped_linear_forward(float* out, const float* inp, const float* const* w,
                            const int64_t* offsets, int64_t groups, int64_t I, int64_t O,
                            Fp8Saved* save = nullptr);
void grouped_linear_backward(float* dinp, float* const* dw, const float* dout, const float* inp,
                             const float* const* w, const int64_t* offsets, int64_t groups,
                             int64_t I, int64_t O, const Fp8Saved* saved = nullptr);

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
