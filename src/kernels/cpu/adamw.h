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
