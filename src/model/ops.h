// What every op of a forward or backward needs, passed down by the caller:
// the backend the ops run on, its stream, the FP8 recipe state (null: FP32
// GEMMs) and, for zero-bubble schedules, the queue that takes the weight-
// gradient GEMMs. No layer finds any of these through a global.
//
// mm_forward / mm_backward are the one place the linear layers' precision
// is decided: FP8 through the Fp8Linear; BF16 (Ops::bf16: the backend's
// *_bf16 linears, both operands of each GEMM rounded to BF16, FP32
// accumulation, as a BF16 tensor-core GEMM computes it); else FP32, through
// the backend. The grouped (expert)
// versions the same per expert segment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fp8/linear.h"
#include "core/arena.h"
#include "kernels/backend.h"

namespace sy {

// Split backward (zero-bubble pipeline schedules): with a queue in Ops, the
// FP32 linear layers compute the input gradient at once and queue the
// weight-gradient GEMM dW += dout^T . inp, keeping a copy of dout; inp must
// stay alive until run(). run() does the queued GEMMs, the same calls in the
// same order as without deferral. The pipeline executor owns one queue per
// (chunk, micro-batch slot).
class WgradQueue {
 public:
  // bf16: the bf16 recipe's GEMM (Backend::linear_wgrad_bf16, which rounds
  // both operands when the queue runs; dout is copied as given).
  // dout is copied where `be` keeps memory (host memory on the CPU backend).
  void add(const Backend& be, Stream s, float* dw, const float* dout, const float* inp, int64_t N, int64_t I,
           int64_t O, bool bf16 = false);
  void run(const Backend& be, Stream s = {});
  bool empty() const { return tasks_.empty(); }
  size_t capacity_bytes() const {
    size_t n = store_.capacity();
    for (const auto& b : dev_) n += b.capacity();
    return n * sizeof(float);
  }

 private:
  struct Task {
    float* dw;
    size_t dout;  // offset into store_, or (on a device) index into dev_
    const float* inp;
    int64_t N, I, O;
    bool bf16, device;
  };
  std::vector<Task> tasks_;
  std::vector<float> store_;               // the CPU backend's copies of dout
  std::vector<GrowBuffer<float>> dev_;     // a device's copies, one per task (kept for the next micro-batch)
};

struct Ops {
  const Backend* be = &backend(Device::cpu);
  Fp8Linear* fp8 = nullptr;     // FP8 recipe: the FP8-capable linear layers' GEMMs go through it
  WgradQueue* defer = nullptr;  // zero-bubble: weight-gradient GEMMs are queued here
  bool bf16 = false;            // bf16 recipe: GEMM operands of the linear layers rounded to BF16
  Stream stream{};

  const Backend& b() const { return *be; }
  Ops with_defer(WgradQueue* q) const {
    Ops o = *this;
    o.defer = q;
    return o;
  }
};

// out (N, O) = inp . W^T in the precision the Ops give; with `save` (FP8
// only) inp^T is also kept in FP8 for backward, which then reads `saved`.
void mm_forward(const Ops& ops, Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I,
                int64_t O, Fp8Saved* save = nullptr);
void mm_backward(const Ops& ops, Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp,
                 const float* w, int64_t N, int64_t I, int64_t O, bool accumulate_dinp = false,
                 const Fp8Saved* saved = nullptr);
// An FP32 linear layer's backward (router, LM head): honours the wgrad queue.
void linear_backward(const Ops& ops, float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                     int64_t N, int64_t I, int64_t O, bool accumulate_dinp = false);
// The experts: rows [offsets[e], offsets[e+1]) use w[e] (grouped GEMM).
void grouped_forward(const Ops& ops, float* out, const float* inp, const float* const* w, const int64_t* offsets,
                     int64_t groups, int64_t I, int64_t O, Fp8Saved* save = nullptr);
void grouped_backward(const Ops& ops, float* dinp, float* const* dw, const float* dout, const float* inp,
                      const float* const* w, const int64_t* offsets, int64_t groups, int64_t I, int64_t O,
                      const Fp8Saved* saved = nullptr);

}  // namespace sy
