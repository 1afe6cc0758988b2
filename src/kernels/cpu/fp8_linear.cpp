#include "kernels/cpu/fp8_linear.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/cpu/linear.h"

namespace sy {

const char* to_string(Fp8Group g) {
  static const char* names[] = {"attn_qkv", "attn_out", "mlp", "experts", "shared"};
  return names[static_cast<int>(g)];
}

namespace {
Fp8Linear* g_active = nullptr;
thread_local Fp8Matrix t_a, t_b;
}  // namespace

namespace {
// Grows v to hold n, by a quarter at a time once it holds anything: after the
// first steps a pool stops growing, a little above the largest step's need.
template <class T>
void pool_fit(std::vector<T>& v, size_t n) {
  if (n > v.capacity()) v.reserve(std::max(n, v.capacity() + v.capacity() / 4));
  if (n > v.size()) v.resize(n);
}
}  // namespace

void Fp8Saved::add(int64_t row, const Fp8Matrix& m) {
  Part p{row, m.rows, m.cols, m.fmt, m.mode, q_used_, s_used_, m.scale_inv.size()};
  pool_fit(q_, q_used_ + m.q.size());
  pool_fit(s_, s_used_ + m.scale_inv.size());
  std::copy(m.q.begin(), m.q.end(), q_.begin() + static_cast<std::ptrdiff_t>(q_used_));
  std::copy(m.scale_inv.begin(), m.scale_inv.end(), s_.begin() + static_cast<std::ptrdiff_t>(s_used_));
  q_used_ += m.q.size(), s_used_ += m.scale_inv.size();
  parts_.push_back(p);
}

void Fp8Saved::get(int64_t row, Fp8Matrix& m) const {
  for (const Part& p : parts_) {
    if (p.row != row) continue;
    m.rows = p.rows, m.cols = p.cols, m.fmt = p.fmt, m.mode = p.mode;
    const auto q0 = q_.begin() + static_cast<std::ptrdiff_t>(p.q);
    m.q.assign(q0, q0 + p.rows * p.cols);
    const auto s0 = s_.begin() + static_cast<std::ptrdiff_t>(p.s);
    m.scale_inv.assign(s0, s0 + static_cast<std::ptrdiff_t>(p.ns));
    return;
  }
  SY_CHECK(false, "no FP8-saved activation starting at row {} ({} parts saved): forward and backward disagree", row,
           parts_.size());
}

Fp8Linear* active_fp8() { return g_active; }
Fp8Scope::Fp8Scope(Fp8Linear* f) : prev_(g_active) { g_active = f; }
Fp8Scope::~Fp8Scope() { g_active = prev_; }

QuantOptions Fp8Linear::options(Role role, Fp8Format f, const float* key, float* scale_out) {
  QuantOptions o;
  o.fmt = f;
  o.pow2 = recipe_.pow2_scales;
  o.saturate = recipe_.saturate;
  switch (recipe_.scaling) {
    case Fp8Scaling::block:
      o.mode = role == weight ? ScaleMode::blocks_128x128 : ScaleMode::rows_1x128;
      break;
    case Fp8Scaling::tensor_current:
      o.mode = ScaleMode::tensor;
      break;
    case Fp8Scaling::tensor_delayed: {
      o.mode = ScaleMode::tensor;
      std::lock_guard<std::mutex> lk(mu_);
      const History& h = history(key, role);
      float amax = 0;
      for (float a : h.amax) amax = std::max(amax, a);
      o.scale = amax > 0 ? fp8_scale_for(amax, f, o.pow2) : 0;  // no history yet: this tensor's own amax
      break;
    }
  }
  if (scale_out) *scale_out = o.scale;
  return o;
}

void Fp8Linear::note(Fp8Group g, Role role, const QuantStats& s, const float* key) {
  std::lock_guard<std::mutex> lk(mu_);
  Fp8GroupStats& st = stats_[static_cast<size_t>(g)];
  float& slot = role == act ? st.amax_act : role == weight ? st.amax_weight : st.amax_grad;
  slot = std::max(slot, s.amax);
  st.saturated += s.saturated;
  if (recipe_.scaling == Fp8Scaling::tensor_delayed) {
    History& h = history(key, role);
    h.current = std::max(h.current, s.amax);
  }
}

// The wgrad GEMM reads both operands quantized along the tokens: block
// recipes use 1 x 128 tiles there (the weight's 128 x 128 blocks do not apply).
QuantOptions Fp8Linear::wgrad_options(Role role, Fp8Format f, const float* key) {
  QuantOptions o = options(role, f, key, nullptr);
  if (o.mode == ScaleMode::blocks_128x128) o.mode = ScaleMode::rows_1x128;
  return o;
}

void Fp8Linear::forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                        Fp8Saved* save, int64_t save_row) {
  note(g, act, quantize_matrix(t_a, inp, N, I, options(act, Fp8Format::e4m3, w, nullptr)), w);
  note(g, weight, quantize_matrix(t_b, w, O, I, options(weight, Fp8Format::e4m3, w, nullptr)), w);
  fp8_gemm(out, t_a, t_b);
  if (save) {
    quantize_matrix(t_b, inp, N, I, wgrad_options(act, Fp8Format::e4m3, w), true);
    save->add(save_row, t_b);
  }
}

void Fp8Linear::backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                         int64_t N, int64_t I, int64_t O, bool accumulate_dinp, const Fp8Saved* saved,
                         int64_t save_row) {
  SY_CHECK(inp || saved, "FP8 linear backward ({}): no input (FP32 or saved in FP8) for the weight gradient",
           to_string(g));
  const Fp8Format gf = recipe_.grad_format;
  if (dinp) {  // dx (N, I) = dy (N, O) . W (O, I): K = O
    note(g, grad, quantize_matrix(t_a, dout, N, O, options(grad, gf, w, nullptr)), w);
    quantize_matrix(t_b, w, O, I, options(weight, Fp8Format::e4m3, w, nullptr), true);  // W^T (I, O)
    fp8_gemm(dinp, t_a, t_b, accumulate_dinp);
  }
  // dW (O, I) += dy^T (O, N) . x (N, I): K = N, both quantized along the tokens.
  quantize_matrix(t_a, dout, N, O, wgrad_options(grad, gf, w), true);
  if (saved) {
    saved->get(save_row, t_b);
    SY_CHECK(t_b.rows == I && t_b.cols == N, "FP8-saved input is {}x{}, the weight gradient needs {}x{}", t_b.rows,
             t_b.cols, I, N);
  } else {
    quantize_matrix(t_b, inp, N, I, wgrad_options(act, Fp8Format::e4m3, w), true);
  }
  fp8_gemm(dw, t_a, t_b, true);
}

Fp8Linear::History& Fp8Linear::history(const float* key, int role) {
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

std::vector<Fp8GroupStats> Fp8Linear::take_stats(const std::function<void(float*, size_t)>& reduce_max) {
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

void Fp8Linear::name_weights(const std::vector<std::pair<const float*, int64_t>>& ids, int64_t n_ids) {
  std::lock_guard<std::mutex> lk(mu_);
  ids_.clear();
  for (const auto& [w, id] : ids) {
    SY_CHECK(id >= 0 && id < n_ids, "FP8 weight id {} outside [0, {})", id, n_ids);
    ids_[w] = id;
  }
  n_ids_ = n_ids;
  named_.assign(static_cast<size_t>(n_ids * 3), History{});
}

std::vector<float> Fp8Linear::histories(int64_t* len) const {
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

void Fp8Linear::set_histories(const std::vector<float>& h, int64_t len) {
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

void mm_forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                Fp8Saved* save) {
  Fp8Linear* f = active_fp8();
  SY_CHECK(f || !save, "activations saved in FP8 ({} layer) need an active FP8 recipe", to_string(g));
  if (!f) return linear_forward(out, inp, w, N, I, O);
  if (save) save->reset();
  f->forward(g, out, inp, w, N, I, O, save, 0);
}

void mm_backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                 int64_t I, int64_t O, bool accumulate_dinp, const Fp8Saved* saved) {
  Fp8Linear* f = active_fp8();
  SY_CHECK(f || !saved, "activations saved in FP8 ({} layer) need an active FP8 recipe", to_string(g));
  if (!f) return linear_backward(dinp, dw, dout, inp, w, N, I, O, accumulate_dinp);
  f->backward(g, dinp, dw, dout, inp, w, N, I, O, accumulate_dinp, saved, 0);
}

}  // namespace sy
