#include "kernels/cpu/linear_bf16.h"

#include <array>
#include <vector>

#include "core/arena.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/linear.h"

namespace sy {

namespace {

// Grow-only host buffers for the rounded operands, one set per thread.
thread_local std::array<GrowBuffer<float>, 3> t_scratch;
thread_local std::vector<const float*> t_weights;
enum : int { kA = 0, kB = 1, kW = 2 };

// src rows [r0, r1) of `cols` rounded, at the same rows of a scratch slot.
const float* rounded(int slot, const float* src, int64_t r0, int64_t r1, int64_t cols) {
  float* dst = t_scratch[static_cast<size_t>(slot)].ensure(static_cast<size_t>(r1 * cols));
  round_to_bf16(dst + r0 * cols, src + r0 * cols, (r1 - r0) * cols);
  return dst;
}
// Each group's weight (O, I) rounded, one after another in the weight slot.
const float* const* rounded_weights(const float* const* w, int64_t groups, int64_t I, int64_t O) {
  float* dst = t_scratch[kW].ensure(static_cast<size_t>(groups * O * I));
  t_weights.resize(static_cast<size_t>(groups));
  for (int64_t e = 0; e < groups; ++e) {
    round_to_bf16(dst + e * O * I, w[e], O * I);
    t_weights[static_cast<size_t>(e)] = dst + e * O * I;
  }
  return t_weights.data();
}

}  // namespace

void linear_forward_bf16(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
  linear_forward(out, rounded(kA, inp, 0, N, I), rounded(kB, w, 0, O, I), N, I, O);
}

void linear_dgrad_bf16(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                       bool accumulate_dinp) {
  linear_dgrad(dinp, rounded(kA, dout, 0, N, O), rounded(kB, w, 0, O, I), N, I, O, accumulate_dinp);
}

void linear_wgrad_bf16(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O) {
  linear_wgrad(dw, rounded(kA, dout, 0, N, O), rounded(kB, inp, 0, N, I), N, I, O);
}

void grouped_linear_forward_bf16(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                                 int64_t groups, int64_t I, int64_t O) {
  if (offsets[groups] == offsets[0]) return;
  const float* x = rounded(kA, inp, offsets[0], offsets[groups], I);
  grouped_linear_forward(out, x, rounded_weights(w, groups, I, O), offsets, groups, I, O);
}

void grouped_linear_dgrad_bf16(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                               int64_t groups, int64_t I, int64_t O) {
  if (offsets[groups] == offsets[0]) return;
  const float* dy = rounded(kA, dout, offsets[0], offsets[groups], O);
  grouped_linear_dgrad(dinp, dy, rounded_weights(w, groups, I, O), offsets, groups, I, O);
}

void grouped_linear_wgrad_bf16(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                               int64_t groups, int64_t I, int64_t O) {
  if (offsets[groups] == offsets[0]) return;
  const float* dy = rounded(kA, dout, offsets[0], offsets[groups], O);
  grouped_linear_wgrad(dw, dy, rounded(kB, inp, offsets[0], offsets[groups], I), offsets, groups, I, O);
}

}  // namespace sy
