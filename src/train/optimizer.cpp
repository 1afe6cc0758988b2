#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"

namespace sy {

double lr_at(const TrainSection& t, int64_t step) {
  if (step < t.warmup_steps) return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  double min_lr = t.lr * t.min_lr_ratio;
  int64_t decay_steps = std::max<int64_t>(1, t.steps - t.warmup_steps);
  double progress = std::min(1.0, static_cast<double>(step - t.warmup_steps) / static_cast<double>(decay_steps));
  return min_lr + 0.5 * (t.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

GradNormPart grad_norm_part(const Backend& be, Stream stream, const float* grads, const std::vector<OptRange>& owned,
                            const ParamLayout& layout) {
  const size_t R = owned.size();
  std::vector<int64_t> offsets(R), counts(R);
  for (size_t i = 0; i < R; ++i) offsets[i] = owned[i].state, counts[i] = owned[i].end - owned[i].begin;
  std::vector<double> sums(R, 0.0);
  for (size_t b = 0; b < R; b += 65535)  // the most one call takes
    be.sum_squares(sums.data() + b, grads, offsets.data() + b, counts.data() + b,
                   static_cast<int64_t>(std::min<size_t>(65535, R - b)), stream);
  GradNormPart out;
  for (size_t i = 0; i < R; ++i) {
    const int64_t index = layout.params()[static_cast<size_t>(owned[i].param)].index;
    if (!std::isfinite(sums[i]) && (out.nonfinite < 0 || index < out.nonfinite)) out.nonfinite = index;
    out.sumsq += sums[i];
  }
  return out;
}

double clip_coef(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

AdamW::AdamW(std::vector<OptRange> ranges, int64_t state_size, const TrainSection& t, bool bf16_moments,
             const Backend& be, Stream stream)
    : ranges_(std::move(ranges)), t_(t), bf16_(bf16_moments), be_(&be), stream_(stream) {
  const size_t n = static_cast<size_t>(state_size);
  if (bf16_)
    m16_.assign(n, 0), v16_.assign(n, 0);
  else
    m_.resize(n), v_.resize(n);
  if (on_device()) {  // the moments the update runs on, zero as on the host
    Allocator& mem = be_->allocator();
    const size_t bytes = n * (bf16_ ? sizeof(uint16_t) : sizeof(float));
    void* m = bf16_ ? static_cast<void*>(dm16_.ensure(n, mem)) : static_cast<void*>(dm_.ensure(n, mem));
    void* v = bf16_ ? static_cast<void*>(dv16_.ensure(n, mem)) : static_cast<void*>(dv_.ensure(n, mem));
    be_->zero(m, bytes, stream_);
    be_->zero(v, bytes, stream_);
  }
}

void AdamW::to_host() { transfer(false); }
void AdamW::to_device() { transfer(true); }

void AdamW::transfer(bool to_device) {
  if (!on_device()) return;
  auto move = [&](void* host, void* dev, size_t bytes) {
    be_->copy(to_device ? dev : host, to_device ? host : dev, bytes, stream_);
  };
  if (bf16_) {
    move(m16_.data(), dm16_.data(), m16_.size() * sizeof(uint16_t));
    move(v16_.data(), dv16_.data(), v16_.size() * sizeof(uint16_t));
  } else {
    move(m_.data(), dm_.data(), m_.size() * sizeof(float));
    move(v_.data(), dv_.data(), v_.size() * sizeof(float));
  }
  be_->synchronize(stream_);
}

void AdamW::get_moments(char which, int64_t state, int64_t n, float* out) const {
  if (!bf16_) {
    const float* src = (which == 'm' ? m_ : v_).data() + state;
    std::copy(src, src + n, out);
    return;
  }
  const uint16_t* src = (which == 'm' ? m16_ : v16_).data() + state;
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(src[i]);
}

void AdamW::set_moments(char which, int64_t state, int64_t n, const float* in) {
  if (!bf16_) {
    std::copy(in, in + n, (which == 'm' ? m_ : v_).data() + state);
    return;
  }
  uint16_t* dst = (which == 'm' ? m16_ : v16_).data() + state;
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(in[i]);
}

void AdamW::update(float* params, const float* grads, int64_t step, double lr, double grad_scale) {
  for (const OptRange& r : ranges_) {
    // lr x 1.0 is lr exactly: without groups the update is bit for bit the same.
    const double lr_r = lr_scale_.empty() ? lr : lr * lr_scale_[static_cast<size_t>(r.param)];
    AdamWParams a{static_cast<float>(lr_r), static_cast<float>(t_.beta1), static_cast<float>(t_.beta2),
                  static_cast<float>(t_.eps), r.decay ? static_cast<float>(t_.weight_decay) : 0.f, step + 1,
                  static_cast<float>(grad_scale)};
    const bool dev = on_device();
    if (bf16_)
      be_->adamw_update_bf16(params + r.begin, grads + r.state, (dev ? dm16_.data() : m16_.data()) + r.state,
                             (dev ? dv16_.data() : v16_.data()) + r.state, r.end - r.begin, a, stream_);
    else
      be_->adamw_update(params + r.begin, grads + r.state, (dev ? dm_.data() : m_.data()) + r.state,
                        (dev ? dv_.data() : v_.data()) + r.state, r.end - r.begin, a, stream_);
  }
}

}  // namespace sy
