#include "train/optimizer.h"

#include <cmath>

#include "core/parallel.h"
#include "kernels/cpu/adamw.h"

namespace sy {

double lr_at(const TrainSection& t, int64_t step) {
  if (step < t.warmup_steps) return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  double min_lr = t.lr * t.min_lr_ratio;
  int64_t decay_steps = std::max<int64_t>(1, t.steps - t.warmup_steps);
  double progress = std::min(1.0, static_cast<double>(step - t.warmup_steps) / static_cast<double>(decay_steps));
  return min_lr + 0.5 * (t.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

GradNorm grad_norm(const float* grads, const ParamLayout& layout) {
  GradNorm out;
  double total = 0;
  for (const ParamInfo& p : layout.params()) {
    const float* g = grads + p.offset;
    int64_t n = p.numel();
    int64_t chunks = chunk_count(n, 1 << 15);
    std::vector<double> part(static_cast<size_t>(chunks), 0.0);
    parallel_chunks(n, chunks, [&](int64_t b, int64_t e, int64_t c) {
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = b; i < e; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      part[static_cast<size_t>(c)] = s;
    });
    double s = 0;
    for (double x : part) s += x;
    if (!std::isfinite(s) && out.nonfinite.empty()) out.nonfinite = p.name;
    total += s;
  }
  out.norm = std::sqrt(total);
  return out;
}

double clip_coef(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

AdamW::AdamW(const ParamLayout& layout, const TrainSection& t)
    : layout_(layout), t_(t), m_(static_cast<size_t>(layout.total())), v_(static_cast<size_t>(layout.total())) {}

void AdamW::update(float* params, const float* grads, int64_t step, double lr, double grad_scale) {
  for (const ParamInfo& p : layout_.params()) {
    AdamWParams a{static_cast<float>(lr), static_cast<float>(t_.beta1), static_cast<float>(t_.beta2),
                  static_cast<float>(t_.eps), p.decay ? static_cast<float>(t_.weight_decay) : 0.f, step + 1,
                  static_cast<float>(grad_scale)};
    adamw_update(params + p.offset, grads + p.offset, m_.data() + p.offset, v_.data() + p.offset, p.numel(), a);
  }
}

}  // namespace sy
