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

namespace sy {

struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based step count, for bias correction
  float grad_scale = 1.f;
};

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a);

// BF16 storage (the upper half of an FP32, rounded to nearest even; NaN stays NaN).
inline uint16_t bf16_from_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

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
