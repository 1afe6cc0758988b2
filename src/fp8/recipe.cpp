#include "fp8/recipe.h"

#include <algorithm>

#include "core/check.h"

namespace sy {

const char* to_string(Fp8Group g) {
  static const char* names[] = {"attn_qkv", "attn_out", "mlp", "experts", "shared"};
  return names[static_cast<int>(g)];
}

QuantOptions Fp8Scaler::options(Fp8Role role, Fp8Format f, const float* key) {
  QuantOptions o;
  o.fmt = f;
  o.pow2 = recipe_.pow2_scales;
  o.saturate = recipe_.saturate;
  switch (recipe_.scaling) {
    case Fp8Scaling::block:
      o.mode = role == Fp8Role::weight ? ScaleMode::blocks_128x128 : ScaleMode::rows_1x128;
      break;
    case Fp8Scaling::tensor_current:
      o.mode = ScaleMode::tensor;
      break;
    case Fp8Scaling::tensor_delayed: {
      o.mode = ScaleMode::tensor;
      std::lock_guard<std::mutex> lk(mu_);
      const History& h = history(key, static_cast<int>(role));
      float amax = 0;
      for (float a : h.amax) amax = std::max(amax, a);
      o.scale = amax > 0 ? fp8_scale_for(amax, f, o.pow2) : 0;  // no history yet: this tensor's own amax
      break;
    }
  }
  return o;
}

void Fp8Scaler::note(Fp8Group g, Fp8Role role, const QuantStats& s, const float* key) {
  std::lock_guard<std::mutex> lk(mu_);
  Fp8GroupStats& st = stats_[static_cast<size_t>(g)];
  float& slot = role == Fp8Role::act ? st.amax_act : role == Fp8Role::weight ? st.amax_weight : st.amax_grad;
  slot = std::max(slot, s.amax);
  st.saturated += s.saturated;
  if (recipe_.scaling == Fp8Scaling::tensor_delayed) {
    History& h = history(key, static_cast<int>(role));
    h.current = std::max(h.current, s.amax);
  }
}

QuantOptions Fp8Scaler::wgrad_options(Fp8Role role, Fp8Format f, const float* key) {
  QuantOptions o = options(role, f, key);
  if (o.mode == ScaleMode::blocks_128x128) o.mode = ScaleMode::rows_1x128;
  return o;
}

Fp8Scaler::History& Fp8Scaler::history(const float* key, int role) {
  auto it = ids_.find(key);
  if (it != ids_.end()) return named_[static_cast<size_t>(it->second * 3 + role)];
  return history_[{key, role}];
}

namespace {
void push(std::vector<float>& ring, float amax, int64_t cap) {
  ring.push_back(amax);
  if (static_cast<int64_t>(ring.size()) > cap) ring.erase(ring.begin());
}
}  // namespace

std::vector<Fp8GroupStats> Fp8Scaler::take_stats(const std::function<void(float*, size_t)>& reduce_max) {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<Fp8GroupStats> out = stats_;
  std::fill(stats_.begin(), stats_.end(), Fp8GroupStats{});
  if (recipe_.scaling != Fp8Scaling::tensor_delayed) return out;
  for (auto& [key, h] : history_) push(h.amax, h.current, recipe_.amax_history), h.current = 0;
  if (n_ids_ > 0) {
    std::vector<float> cur(named_.size());
    for (size_t i = 0; i < named_.size(); ++i) cur[i] = named_[i].current;
    if (reduce_max) reduce_max(cur.data(), cur.size());
    for (size_t i = 0; i < named_.size(); ++i) push(named_[i].amax, cur[i], recipe_.amax_history), named_[i].current = 0;
  }
  return out;
}

void Fp8Scaler::name_weights(const std::vector<std::pair<const float*, int64_t>>& ids, int64_t n_ids) {
  std::lock_guard<std::mutex> lk(mu_);
  ids_.clear();
  for (const auto& [w, id] : ids) {
    SY_CHECK(id >= 0 && id < n_ids, "FP8 weight id {} outside [0, {})", id, n_ids);
    ids_[w] = id;
  }
  n_ids_ = n_ids;
  named_.assign(static_cast<size_t>(n_ids * 3), History{});
}

std::vector<float> Fp8Scaler::histories(int64_t* len) const {
  std::lock_guard<std::mutex> lk(mu_);
  const size_t n = named_.empty() ? 0 : named_[0].amax.size();
  std::vector<float> out;
  out.reserve(named_.size() * n);
  for (const History& h : named_) {
    SY_CHECK(h.amax.size() == n, "FP8 amax histories of different lengths ({} and {})", h.amax.size(), n);
    out.insert(out.end(), h.amax.begin(), h.amax.end());
  }
  *len = static_cast<int64_t>(n);
  return out;
}

void Fp8Scaler::set_histories(const std::vector<float>& h, int64_t len) {
  std::lock_guard<std::mutex> lk(mu_);
  SY_CHECK(static_cast<int64_t>(h.size()) == static_cast<int64_t>(named_.size()) * len,
           "FP8 amax histories: {} values for {} weights x 3 roles x {} steps", h.size(), n_ids_, len);
  const int64_t keep = std::min(len, recipe_.amax_history);
  for (size_t i = 0; i < named_.size(); ++i) {
    const auto b = h.begin() + static_cast<std::ptrdiff_t>(static_cast<int64_t>(i) * len);
    named_[i].amax.assign(b + (len - keep), b + len);
    named_[i].current = 0;
  }
}

}  // namespace sy
