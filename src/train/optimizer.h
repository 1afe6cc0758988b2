// Learning-rate schedule, gradient norm and clipping, AdamW on the ranges a
// rank updates (FP32 master weights, FP32 moments).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"
#include "kernels/backend.h"
#include "model/layout.h"
#include "config/run.h"
#include "train/grad_sync.h"

namespace sy {

// Linear warm-up to lr over warmup_steps, then cosine decay to
// lr * min_lr_ratio at the last step. `step` is 0-based.
double lr_at(const TrainSection& t, int64_t step);

struct GradNormPart {
  double sumsq = 0;            // this rank's share of the squared global norm
  int64_t nonfinite = -1;      // smallest full-model index (ParamInfo::index) of a tensor with NaN/Inf, or -1
};
// Sums squares over `owned` (gradients found at their state offsets), in
// double, per tensor, in a fixed order, by the backend whose memory holds
// the gradients (Backend::sum_squares: one call, the sums come back).
GradNormPart grad_norm_part(const Backend& be, Stream s, const float* grads_by_state,
                            const std::vector<OptRange>& owned, const ParamLayout& layout);

// PyTorch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)); 1 when
// max_norm <= 0 (clipping off). AdamW::update applies it.
double clip_coef(double norm, double max_norm);

class AdamW {
 public:
  // bf16_moments: m and v stored in BF16 (half the optimizer memory); the
  // update computes in FP32. Checkpoints hold them as FP32 (exact).
  // The update runs on `be` (the moments live in its memory).
  AdamW(std::vector<OptRange> ranges, int64_t state_size, const TrainSection& t, bool bf16_moments = false,
        const Backend& be = backend(Device::cpu), Stream stream = {});
  // One update at 0-based `step` with learning rate lr, on gradients
  // (found at state offsets) times grad_scale, the clipping factor.
  void update(float* params, const float* grads_by_state, int64_t step, double lr, double grad_scale = 1.0);
  bool bf16_moments() const { return bf16_; }
  // Learning-rate multipliers per tensor, by OptRange::param (train.lr_groups):
  // a range is updated with lr x scale, its decoupled weight decay
  // (p *= 1 - lr x scale x weight_decay) with it. Empty: 1 everywhere.
  void set_lr_scales(std::vector<double> per_param) { lr_scale_ = std::move(per_param); }
  // Moments `which` ('m' or 'v') at state offsets [state, state + n), as FP32.
  void get_moments(char which, int64_t state, int64_t n, float* out) const;
  void set_moments(char which, int64_t state, int64_t n, const float* in);
  // The live FP32 moments (FP32 storage only).
  const float* fp32_moments(char which) const { return (which == 'm' ? m_ : v_).data(); }
  const std::vector<OptRange>& ranges() const { return ranges_; }
  // A device backend (run.device = "cuda"): update() reads and writes the
  // moments in the backend's memory, and the accessors above read the host
  // copies; to_host() copies the device moments there (before a checkpoint
  // save), to_device() copies the host ones back (after a load). One copy
  // per moment array. On the CPU both do nothing: the host arrays are live.
  void to_host();
  void to_device();
  bool on_device() const { return be_->device() != Device::cpu; }

 private:
  void transfer(bool to_device);  // the moments between host and device (to_host / to_device)
  std::vector<OptRange> ranges_;
  std::vector<double> lr_scale_;       // by OptRange::param; empty = 1
  TrainSection t_;
  bool bf16_ = false;
  const Backend* be_;
  Stream stream_;
  FloatBuffer m_, v_;                  // FP32 moments
  std::vector<uint16_t> m16_, v16_;    // BF16 moments
  GrowBuffer<float> dm_, dv_;          // a device backend's FP32 moments
  GrowBuffer<uint16_t> dm16_, dv16_;   // a device backend's BF16 moments
};

}  // namespace sy
