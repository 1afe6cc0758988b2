#include "kernels/cpu/linear.h"

#include "kernels/cpu/blas.h"

namespace sy {

void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
  sgemm(false, true, N, O, I, 1.f, inp, I, w, I, 0.f, out, O);
}

void linear_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp) {
  if (dinp) sgemm(false, false, N, I, O, 1.f, dout, O, w, I, accumulate_dinp ? 1.f : 0.f, dinp, I);
  if (WgradDefer* d = active_wgrad_defer()) return d->add(dw, dout, inp, N, I, O);
  sgemm(true, false, O, I, N, 1.f, dout, O, inp, I, 1.f, dw, I);
}

namespace {
thread_local WgradDefer* g_defer = nullptr;
}

WgradDefer* active_wgrad_defer() { return g_defer; }
WgradScope::WgradScope(WgradDefer* d) : prev_(g_defer) { g_defer = d; }
WgradScope::~WgradScope() { g_defer = prev_; }

void WgradDefer::add(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O) {
  const size_t at = store_.size();
  store_.insert(store_.end(), dout, dout + N * O);
  tasks_.push_back({dw, at, inp, N, I, O});
}

void WgradDefer::run() {
  for (const Task& t : tasks_) sgemm(true, false, t.O, t.I, t.N, 1.f, store_.data() + t.dout, t.O, t.inp, t.I, 1.f, t.dw, t.I);
  tasks_.clear();
  store_.clear();  // keeps its capacity for the next micro-batch
}

}  // namespace sy
