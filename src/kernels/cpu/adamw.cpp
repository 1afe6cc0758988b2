#include "kernels/cpu/adamw.h"

#include "core/parallel.h"

namespace sy {

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a) {
  double bc1 = 1.0 - std::pow(double(a.beta1), double(a.step));
  double bc2 = 1.0 - std::pow(double(a.beta2), double(a.step));
  const float step_size = static_cast<float>(a.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.f - a.lr * a.weight_decay;
  const float b1 = a.beta1, b2 = a.beta2, eps = a.eps, scale = a.grad_scale;
  parallel_chunks(n, chunk_count(n, 1 << 14), [&](int64_t i0, int64_t i1, int64_t) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      float gi = g[i] * scale;
      float pi = p[i] * decay;
      float mi = b1 * m[i] + (1.f - b1) * gi;
      float vi = b2 * v[i] + (1.f - b2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = pi - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
    }
  });
}

void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWParams& a) {
  double bc1 = 1.0 - std::pow(double(a.beta1), double(a.step));
  double bc2 = 1.0 - std::pow(double(a.beta2), double(a.step));
  const float step_size = static_cast<float>(a.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.f - a.lr * a.weight_decay;
  const float b1 = a.beta1, b2 = a.beta2, eps = a.eps, scale = a.grad_scale;
  parallel_chunks(n, chunk_count(n, 1 << 14), [&](int64_t i0, int64_t i1, int64_t) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      float gi = g[i] * scale;
      float pi = p[i] * decay;
      float mi = b1 * bf16_to_float(m[i]) + (1.f - b1) * gi;
      float vi = b2 * bf16_to_float(v[i]) + (1.f - b2) * gi * gi;
      m[i] = bf16_from_float(mi);
      v[i] = bf16_from_float(vi);
      p[i] = pi - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
    }
  });
}

}  // namespace sy
