#include "kernels/cpu/grouped_gemm.h"

#include "core/check.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/fp8_linear.h"

namespace sy {

// Each group is one multi-threaded sgemm. Groups with no rows still get their
// (zero) weight gradient left untouched.
void grouped_linear_forward(float* out, const float* inp, const float* const* w,
                            const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Fp8Saved* save) {
  SY_CHECK(active_fp8() || !save, "expert activations saved in FP8 need an active FP8 recipe");
  for (int64_t e = 0; e < groups; ++e) {
    int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    if (Fp8Linear* f = active_fp8())
      f->forward(Fp8Group::experts, out + offsets[e] * O, inp + offsets[e] * I, w[e], n, I, O,
                 save, offsets[e]);
    else
      sgemm(false, true, n, O, I, 1.f, inp + offsets[e] * I, I, w[e], I, 0.f, out + offsets[e] * O, O);
  }
}

void grouped_linear_backward(float* dinp, float* const* dw, const float* dout, const float* inp,
                             const float* const* w, const int64_t* offsets, int64_t groups,
                             int64_t I, int64_t O, const Fp8Saved* saved) {
  for (int64_t e = 0; e < groups; ++e) {
    int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    const float* dout_e = dout + offsets[e] * O;
    const float* inp_e = inp ? inp + offsets[e] * I : nullptr;  // null: saved in FP8
    if (Fp8Linear* f = active_fp8()) {
      f->backward(Fp8Group::experts, dinp + offsets[e] * I, dw[e], dout_e, inp_e, w[e], n, I, O, false,
                  saved, offsets[e]);
      continue;
    }
    SY_CHECK(inp && !saved, "expert activations saved in FP8 need an active FP8 recipe");
    sgemm(false, false, n, I, O, 1.f, dout_e, O, w[e], I, 0.f, dinp + offsets[e] * I, I);
    if (WgradDefer* d = active_wgrad_defer())
      d->add(dw[e], dout_e, inp_e, n, I, O);
    else
      sgemm(true, false, O, I, n, 1.f, dout_e, O, inp_e, I, 1.f, dw[e], I);
  }
}

}  // namespace sy
