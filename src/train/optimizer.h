// Learning-rate schedule, gradient norm and clipping, AdamW over the
// parameter layout (FP32 master weights, FP32 moments).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/layout.h"
#include "train/config.h"

namespace sy {

// Linear warm-up to lr over warmup_steps, then cosine decay to
// lr * min_lr_ratio at the last step. `step` is 0-based.
double lr_at(const TrainSection& t, int64_t step);

struct GradNorm {
  double norm = 0;            // global L2 norm
  std::string nonfinite;      // first parameter with a NaN/Inf gradient, "" if none
};
// Per-tensor sums of squares in double, in layout order.
GradNorm grad_norm(const float* grads, const ParamLayout& layout);

// PyTorch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)); 1 when
// max_norm <= 0 (clipping off). AdamW::update applies it.
double clip_coef(double norm, double max_norm);

class AdamW {
 public:
  AdamW(const ParamLayout& layout, const TrainSection& t);
  // One update at 0-based `step` with learning rate lr, on grads * grad_scale
  // (the clipping factor, applied in the same pass).
  void update(float* params, const float* grads, int64_t step, double lr, double grad_scale = 1.0);
  const FloatBuffer& m() const { return m_; }
  const FloatBuffer& v() const { return v_; }
  FloatBuffer& m() { return m_; }
  FloatBuffer& v() { return v_; }

 private:
  const ParamLayout& layout_;
  TrainSection t_;
  FloatBuffer m_, v_;
};

}  // namespace sy
