#include "kernels/cpu/adamw.h"

#include <vector>

#include "core/parallel.h"

namespace sy {

namespace {
// One loop for both moment storages: load/store convert (identity for FP32).
template <class T, class Load, class Store>
void adamw_loop(float* p, const float* g, T* m, T* v, int64_t n, const AdamWParams& a, Load load, Store store) {
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
      float mi = b1 * load(m[i]) + (1.f - b1) * gi;
      float vi = b2 * load(v[i]) + (1.f - b2) * gi * gi;
      m[i] = store(mi);
      v[i] = store(vi);
      p[i] = pi - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
    }
  });
}
}  // namespace

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a) {
  adamw_loop(p, g, m, v, n, a, [](float x) { return x; }, [](float x) { return x; });
}

void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWParams& a) {
  adamw_loop(p, g, m, v, n, a, bf16_to_f32, f32_to_bf16);
}

void sum_squares(double* out, const float* x, const int64_t* offsets, const int64_t* counts, int64_t ranges) {
  for (int64_t r = 0; r < ranges; ++r) {
    const float* g = x + offsets[r];
    const int64_t n = counts[r];
    const int64_t chunks = chunk_count(n, 1 << 15);
    std::vector<double> part(static_cast<size_t>(chunks), 0.0);
    parallel_chunks(n, chunks, [&](int64_t b, int64_t e, int64_t c) {
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = b; i < e; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      part[static_cast<size_t>(c)] = s;
    });
    double s = 0;
    for (double v : part) s += v;
    out[r] = s;
  }
}

}  // namespace sy
