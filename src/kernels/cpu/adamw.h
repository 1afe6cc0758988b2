// AdamW with decoupled weight decay, in exactly PyTorch's order of
// operations (torch.optim.AdamW, single-tensor path), on g = grad * grad_scale
// (gradient clipping folded into the same pass):
//   p *= 1 - lr * wd
//   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "kernels/types.h"

namespace sy {

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a);

// The same update with moments stored in BF16: read, updated in FP32 (the
// weight step uses the FP32 values), stored rounded to nearest even.
void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWParams& a);

// The squared L2 norm of each of `ranges` runs of x (run r: x[offsets[r],
// offsets[r] + counts[r])), in double, into out[r]: the gradient norm's
// terms. Each run is cut into fixed chunks of about 2^15 (their number
// depends on the run's length alone), summed per chunk and the chunks in
// order, so the result does not depend on the thread count. A NaN or Inf in
// a run makes its sum non-finite.
void sum_squares(double* out, const float* x, const int64_t* offsets, const int64_t* counts, int64_t ranges);

template <class T>
void adamw_update_ref(T* p, const T* g, T* m, T* v, int64_t n, const AdamWParams& a) {
  double bc1 = 1.0 - std::pow(double(a.beta1), double(a.step));
  double bc2 = 1.0 - std::pow(double(a.beta2), double(a.step));
  T step_size = T(a.lr / bc1), bc2_sqrt = T(std::sqrt(bc2));
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i] * T(a.grad_scale);
    p[i] *= T(1) - T(a.lr) * T(a.weight_decay);
    m[i] = T(a.beta1) * m[i] + (T(1) - T(a.beta1)) * gi;
    v[i] = T(a.beta2) * v[i] + (T(1) - T(a.beta2)) * gi * gi;
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + T(a.eps));
  }
}

}  // namespace sy
