#include "kernels/cpu/fp8_linear.h"

#include <algorithm>

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
      const History& h = history_[{key, role}];
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
    History& h = history_[{key, role}];
    h.current = std::max(h.current, s.amax);
  }
}

void Fp8Linear::forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
  note(g, act, quantize_matrix(t_a, inp, N, I, options(act, Fp8Format::e4m3, w, nullptr)), w);
  note(g, weight, quantize_matrix(t_b, w, O, I, options(weight, Fp8Format::e4m3, w, nullptr)), w);
  fp8_gemm(out, t_a, t_b);
}

void Fp8Linear::backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                         int64_t N, int64_t I, int64_t O, bool accumulate_dinp) {
  const Fp8Format gf = recipe_.grad_format;
  if (dinp) {  // dx (N, I) = dy (N, O) . W (O, I): K = O
    note(g, grad, quantize_matrix(t_a, dout, N, O, options(grad, gf, w, nullptr)), w);
    quantize_matrix(t_b, w, O, I, options(weight, Fp8Format::e4m3, w, nullptr), true);  // W^T (I, O)
    fp8_gemm(dinp, t_a, t_b, accumulate_dinp);
  }
  // dW (O, I) += dy^T (O, N) . x (N, I): K = N, both quantized along the tokens.
  QuantOptions og = options(grad, gf, w, nullptr), oa = options(act, Fp8Format::e4m3, w, nullptr);
  if (og.mode == ScaleMode::blocks_128x128) og.mode = ScaleMode::rows_1x128;
  if (oa.mode == ScaleMode::blocks_128x128) oa.mode = ScaleMode::rows_1x128;
  quantize_matrix(t_a, dout, N, O, og, true);
  quantize_matrix(t_b, inp, N, I, oa, true);
  fp8_gemm(dw, t_a, t_b, true);
}

std::vector<Fp8GroupStats> Fp8Linear::take_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<Fp8GroupStats> out = stats_;
  std::fill(stats_.begin(), stats_.end(), Fp8GroupStats{});
  for (auto& [key, h] : history_) {
    h.amax.push_back(h.current);
    if (static_cast<int64_t>(h.amax.size()) > recipe_.amax_history) h.amax.erase(h.amax.begin());
    h.current = 0;
  }
  return out;
}

void mm_forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
  if (Fp8Linear* f = active_fp8())
    f->forward(g, out, inp, w, N, I, O);
  else
    linear_forward(out, inp, w, N, I, O);
}

void mm_backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                 int64_t I, int64_t O, bool accumulate_dinp) {
  if (Fp8Linear* f = active_fp8())
    f->backward(g, dinp, dw, dout, inp, w, N, I, O, accumulate_dinp);
  else
    linear_backward(dinp, dw, dout, inp, w, N, I, O, accumulate_dinp);
}

}  // namespace sy
