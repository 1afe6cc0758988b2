#include "model/ops.h"

#include <algorithm>
#include <array>

#include "core/check.h"

namespace sy {

namespace {

// Grow-only buffers of a backend's memory for the bf16 recipe's rounded
// operands, per thread; after the first steps they stop growing.
class RoundScratch {
 public:
  ~RoundScratch() {
    for (Slot& s : slots_)
      if (s.p) s.be->allocator().deallocate(s.p, s.n * sizeof(float), 256);
  }
  float* get(const Backend& be, int slot, size_t n) {
    Slot& s = slots_[static_cast<size_t>(slot)];
    if (s.n < n || s.be != &be) {
      if (s.p) s.be->allocator().deallocate(s.p, s.n * sizeof(float), 256);
      s.n = std::max(n, s.n + s.n / 2), s.be = &be;
      s.p = static_cast<float*>(be.allocator().allocate(s.n * sizeof(float), 256));
    }
    return s.p;
  }

 private:
  struct Slot {
    float* p = nullptr;
    size_t n = 0;
    const Backend* be = nullptr;
  };
  std::array<Slot, 3> slots_;
};
thread_local RoundScratch t_round;
thread_local std::vector<const float*> t_round_w;
enum : int { kInput = 0, kWeight = 1, kGrad = 2 };

// src rows [r0, r1) of `cols` rounded to BF16, at the same rows of a scratch slot.
const float* rounded(const Ops& ops, int slot, const float* src, int64_t r0, int64_t r1, int64_t cols) {
  float* dst = t_round.get(ops.b(), slot, static_cast<size_t>(r1 * cols));
  ops.b().round_bf16(dst + r0 * cols, src + r0 * cols, (r1 - r0) * cols, ops.stream);
  return dst;
}
// Each group's weight (O, I) rounded, one after another in the weight slot.
const float* const* rounded_weights(const Ops& ops, const float* const* w, int64_t groups, int64_t I, int64_t O) {
  float* dst = t_round.get(ops.b(), kWeight, static_cast<size_t>(groups * O * I));
  t_round_w.resize(static_cast<size_t>(groups));
  for (int64_t e = 0; e < groups; ++e) {
    ops.b().round_bf16(dst + e * O * I, w[e], O * I, ops.stream);
    t_round_w[static_cast<size_t>(e)] = dst + e * O * I;
  }
  return t_round_w.data();
}

}  // namespace

void WgradQueue::add(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O, bool round_inp) {
  const size_t at = store_.size();
  store_.insert(store_.end(), dout, dout + N * O);
  tasks_.push_back({dw, at, inp, N, I, O, round_inp});
}

void WgradQueue::run(const Backend& be, Stream s) {
  Ops ops;
  ops.be = &be, ops.stream = s, ops.bf16 = true;
  for (const Task& t : tasks_) {
    const float* x = t.round_inp ? rounded(ops, kInput, t.inp, 0, t.N, t.I) : t.inp;
    be.linear_wgrad(t.dw, store_.data() + t.dout, x, t.N, t.I, t.O, s);
  }
  tasks_.clear();
  store_.clear();  // keeps its capacity for the next micro-batch
}

void mm_forward(const Ops& ops, Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I,
                int64_t O, Fp8Saved* save) {
  SY_CHECK(ops.fp8 || !save, "activations saved in FP8 ({} layer) need an FP8 recipe", to_string(g));
  if (ops.bf16) {
    SY_CHECK(!save, "activations saved in FP8 ({} layer) need an FP8 recipe, not bf16", to_string(g));
    const float* x = rounded(ops, kInput, inp, 0, N, I);
    return ops.b().linear_forward(out, x, rounded(ops, kWeight, w, 0, O, I), N, I, O, ops.stream);
  }
  if (!ops.fp8) return ops.b().linear_forward(out, inp, w, N, I, O, ops.stream);
  if (save) save->reset();
  ops.fp8->forward(g, out, inp, w, N, I, O, save, 0);
}

void linear_backward(const Ops& ops, float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp) {
  if (dinp) ops.b().linear_dgrad(dinp, dout, w, N, I, O, accumulate_dinp, ops.stream);
  if (ops.defer) return ops.defer->add(dw, dout, inp, N, I, O);
  ops.b().linear_wgrad(dw, dout, inp, N, I, O, ops.stream);
}

void mm_backward(const Ops& ops, Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp,
                 const float* w, int64_t N, int64_t I, int64_t O, bool accumulate_dinp, const Fp8Saved* saved) {
  SY_CHECK(ops.fp8 || !saved, "activations saved in FP8 ({} layer) need an FP8 recipe", to_string(g));
  if (ops.bf16) {  // dx = bf16(dy) . bf16(W);  dW += bf16(dy)^T . bf16(x)
    SY_CHECK(inp && !saved, "activations saved in FP8 ({} layer) need an FP8 recipe, not bf16", to_string(g));
    const float* dy = rounded(ops, kGrad, dout, 0, N, O);
    if (dinp) ops.b().linear_dgrad(dinp, dy, rounded(ops, kWeight, w, 0, O, I), N, I, O, accumulate_dinp, ops.stream);
    if (ops.defer) return ops.defer->add(dw, dy, inp, N, I, O, true);
    return ops.b().linear_wgrad(dw, dy, rounded(ops, kInput, inp, 0, N, I), N, I, O, ops.stream);
  }
  if (!ops.fp8) return linear_backward(ops, dinp, dw, dout, inp, w, N, I, O, accumulate_dinp);
  ops.fp8->backward(g, dinp, dw, dout, inp, w, N, I, O, accumulate_dinp, saved, 0);
}

void grouped_forward(const Ops& ops, float* out, const float* inp, const float* const* w, const int64_t* offsets,
                     int64_t groups, int64_t I, int64_t O, Fp8Saved* save) {
  SY_CHECK(ops.fp8 || !save, "expert activations saved in FP8 need an FP8 recipe");
  if (ops.bf16) {
    const float* x = rounded(ops, kInput, inp, offsets[0], offsets[groups], I);
    return ops.b().grouped_linear_forward(out, x, rounded_weights(ops, w, groups, I, O), offsets, groups, I, O,
                                          ops.stream);
  }
  if (!ops.fp8) return ops.b().grouped_linear_forward(out, inp, w, offsets, groups, I, O, ops.stream);
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    ops.fp8->forward(Fp8Group::experts, out + offsets[e] * O, inp + offsets[e] * I, w[e], n, I, O, save, offsets[e]);
  }
}

void grouped_backward(const Ops& ops, float* dinp, float* const* dw, const float* dout, const float* inp,
                      const float* const* w, const int64_t* offsets, int64_t groups, int64_t I, int64_t O,
                      const Fp8Saved* saved) {
  if (offsets[groups] == offsets[0]) return;  // no rows: no buffers to read (a rank whose experts got none)
  if (ops.fp8) {
    for (int64_t e = 0; e < groups; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n == 0) continue;
      const float* inp_e = inp ? inp + offsets[e] * I : nullptr;  // null: saved in FP8
      ops.fp8->backward(Fp8Group::experts, dinp + offsets[e] * I, dw[e], dout + offsets[e] * O, inp_e, w[e], n, I,
                        O, false, saved, offsets[e]);
    }
    return;
  }
  SY_CHECK(inp && !saved, "expert activations saved in FP8 need an FP8 recipe");
  if (ops.bf16) {
    const float* dy = rounded(ops, kGrad, dout, offsets[0], offsets[groups], O);
    ops.b().grouped_linear_dgrad(dinp, dy, rounded_weights(ops, w, groups, I, O), offsets, groups, I, O, ops.stream);
    if (!ops.defer) {
      const float* x = rounded(ops, kInput, inp, offsets[0], offsets[groups], I);
      return ops.b().grouped_linear_wgrad(dw, dy, x, offsets, groups, I, O, ops.stream);
    }
    for (int64_t e = 0; e < groups; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n > 0) ops.defer->add(dw[e], dy + offsets[e] * O, inp + offsets[e] * I, n, I, O, true);
    }
    return;
  }
  ops.b().grouped_linear_dgrad(dinp, dout, w, offsets, groups, I, O, ops.stream);
  if (!ops.defer) return ops.b().grouped_linear_wgrad(dw, dout, inp, offsets, groups, I, O, ops.stream);
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t n = offsets[e + 1] - offsets[e];
    if (n > 0) ops.defer->add(dw[e], dout + offsets[e] * O, inp + offsets[e] * I, n, I, O);
  }
}

}  // namespace sy
