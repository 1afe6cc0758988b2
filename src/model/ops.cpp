#include "model/ops.h"

#include "core/check.h"

namespace sy {

void WgradQueue::add(const Backend& be, Stream s, float* dw, const float* dout, const float* inp, int64_t N,
                     int64_t I, int64_t O, bool bf16) {
  if (be.device() == Device::cpu) {
    const size_t at = store_.size();
    store_.insert(store_.end(), dout, dout + N * O);
    tasks_.push_back({dw, at, inp, N, I, O, bf16, false});
    return;
  }
  const size_t k = tasks_.size();  // the k-th task of a micro-batch reuses the k-th buffer
  while (dev_.size() <= k) dev_.emplace_back();
  float* copy = dev_[k].ensure(static_cast<size_t>(N * O), be.allocator());
  be.copy(copy, dout, static_cast<size_t>(N * O) * sizeof(float), s);
  tasks_.push_back({dw, k, inp, N, I, O, bf16, true});
}

void WgradQueue::run(const Backend& be, Stream s) {
  for (const Task& t : tasks_) {
    const float* dout = t.device ? dev_[t.dout].data() : store_.data() + t.dout;
    if (t.bf16)
      be.linear_wgrad_bf16(t.dw, dout, t.inp, t.N, t.I, t.O, s);
    else
      be.linear_wgrad(t.dw, dout, t.inp, t.N, t.I, t.O, s);
  }
  tasks_.clear();
  store_.clear();  // keeps its capacity for the next micro-batch
}

void mm_forward(const Ops& ops, Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I,
                int64_t O, Fp8Saved* save) {
  SY_CHECK(ops.fp8 || !save, "activations saved in FP8 ({} layer) need an FP8 recipe", to_string(g));
  if (ops.bf16) {
    SY_CHECK(!save, "activations saved in FP8 ({} layer) need an FP8 recipe, not bf16", to_string(g));
    return ops.b().linear_forward_bf16(out, inp, w, N, I, O, ops.stream);
  }
  if (!ops.fp8) return ops.b().linear_forward(out, inp, w, N, I, O, ops.stream);
  if (save) save->reset();
  ops.fp8->forward(g, out, inp, w, N, I, O, save, 0);
}

void linear_backward(const Ops& ops, float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp) {
  if (dinp) ops.b().linear_dgrad(dinp, dout, w, N, I, O, accumulate_dinp, ops.stream);
  if (ops.defer) return ops.defer->add(ops.b(), ops.stream, dw, dout, inp, N, I, O);
  ops.b().linear_wgrad(dw, dout, inp, N, I, O, ops.stream);
}

void mm_backward(const Ops& ops, Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp,
                 const float* w, int64_t N, int64_t I, int64_t O, bool accumulate_dinp, const Fp8Saved* saved) {
  SY_CHECK(ops.fp8 || !saved, "activations saved in FP8 ({} layer) need an FP8 recipe", to_string(g));
  if (ops.bf16) {  // dx = bf16(dy) . bf16(W);  dW += bf16(dy)^T . bf16(x)
    SY_CHECK(inp && !saved, "activations saved in FP8 ({} layer) need an FP8 recipe, not bf16", to_string(g));
    if (dinp) ops.b().linear_dgrad_bf16(dinp, dout, w, N, I, O, accumulate_dinp, ops.stream);
    if (ops.defer) return ops.defer->add(ops.b(), ops.stream, dw, dout, inp, N, I, O, true);
    return ops.b().linear_wgrad_bf16(dw, dout, inp, N, I, O, ops.stream);
  }
  if (!ops.fp8) return linear_backward(ops, dinp, dw, dout, inp, w, N, I, O, accumulate_dinp);
  ops.fp8->backward(g, dinp, dw, dout, inp, w, N, I, O, accumulate_dinp, saved, 0);
}

void grouped_forward(const Ops& ops, float* out, const float* inp, const float* const* w, const int64_t* offsets,
                     int64_t groups, int64_t I, int64_t O, Fp8Saved* save) {
  SY_CHECK(ops.fp8 || !save, "expert activations saved in FP8 need an FP8 recipe");
  if (ops.bf16) return ops.b().grouped_linear_forward_bf16(out, inp, w, offsets, groups, I, O, ops.stream);
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
    ops.b().grouped_linear_dgrad_bf16(dinp, dout, w, offsets, groups, I, O, ops.stream);
    if (!ops.defer) return ops.b().grouped_linear_wgrad_bf16(dw, dout, inp, offsets, groups, I, O, ops.stream);
    for (int64_t e = 0; e < groups; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n > 0) ops.defer->add(ops.b(), ops.stream, dw[e], dout + offsets[e] * O, inp + offsets[e] * I, n, I, O, true);
    }
    return;
  }
  ops.b().grouped_linear_dgrad(dinp, dout, w, offsets, groups, I, O, ops.stream);
  if (!ops.defer) return ops.b().grouped_linear_wgrad(dw, dout, inp, offsets, groups, I, O, ops.stream);
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t n = offsets[e + 1] - offsets[e];
    if (n > 0) ops.defer->add(ops.b(), ops.stream, dw[e], dout + offsets[e] * O, inp + offsets[e] * I, n, I, O);
  }
}

}  // namespace sy
