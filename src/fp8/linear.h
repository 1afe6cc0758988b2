// The one dispatch point of the linear layers' precision (TransformerEngine's
// shape: the recipe's scaling policy, fp8/recipe.h, kept apart from the GEMM).
// The model passes an Fp8Linear to the linear layers that may run in FP8
// (attention projections, dense FFN, routed and shared experts; see
// model/ops.h); their three GEMMs then go through it:
//   forward  out = x W^T        x: E4M3 (activations), W: E4M3 (weights)
//   dgrad    dx  = dy W         dy: the recipe's gradient format
//   wgrad    dW += dy^T x       dy^T, x^T quantized along the token axis
// Quantization and the FP8 GEMM run on the backend it was made with.
// Everything else (router, LM head, attention core, norms, loss) runs in
// FP32. Master weights and gradients stay FP32.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "fp8/recipe.h"
#include "kernels/backend.h"

namespace sy {

// Inputs of FP8 linear layers kept for the weight-gradient GEMM in FP8
// instead of FP32: x^T quantized along the token axis, exactly the operand
// the wgrad GEMM reads (so the gradients are bit-identical to quantizing
// the FP32 copy in backward). One part per GEMM call (a grouped GEMM saves
// one per expert segment, found again by its first row).
// The pools are the memory of the backend that quantized the parts (device
// memory on a GPU), copied within it.
struct Fp8Saved {
  // Appends a part (copied from m, be's memory, on stream s) saved for the GEMM call at `row`.
  void add(int64_t row, const Fp8Matrix& m, const Backend& be, Stream s);
  // The part saved at `row`, into m.
  void get(int64_t row, Fp8Matrix& m, const Backend& be, Stream s) const;
  void reset() { parts_.clear(), q_used_ = 0, s_used_ = 0; }
  size_t bytes() const { return q_.capacity() + s_.capacity() * sizeof(float); }  // held

 private:
  struct Part {
    int64_t row, rows, cols;
    Fp8Format fmt;
    ScaleMode mode;
    size_t q, s, ns;  // offsets into q_ and s_, scale count
  };
  std::vector<Part> parts_;
  GrowBuffer<uint8_t> q_;  // all parts' codes, one pool: held memory follows the
  GrowBuffer<float> s_;    // total saved per step, not the sum of each part's maximum
  size_t q_used_ = 0, s_used_ = 0;
};

class Fp8Linear {
 public:
  Fp8Linear(const Fp8Recipe& r, const Backend& be, Stream stream = {}) : scaler_(r), be_(be), stream_(stream) {}
  const Fp8Recipe& recipe() const { return scaler_.recipe(); }
  Fp8Scaler& scaler() { return scaler_; }

  // save: also keep inp^T quantized for the wgrad GEMM there, at save_row.
  void forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
               Fp8Saved* save = nullptr, int64_t save_row = 0);
  // dinp (N, I) overwritten (or added to with accumulate_dinp; may be null); dw (O, I) added to.
  // saved: inp^T as forward saved it at save_row (then inp is not read).
  void backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                int64_t I, int64_t O, bool accumulate_dinp = false, const Fp8Saved* saved = nullptr,
                int64_t save_row = 0);

  // The same GEMMs with the rows' operand quantized already (the experts'
  // rows, quantized once per row by whoever quantized them: the sender of
  // an FP8 dispatch payload, or quantize_operand). x_q: inp quantized as
  // options(act, e4m3, w) makes it; inp: x_q's values (decode(q) *
  // scale_inv), which the weight-gradient GEMM reads (quantized along the
  // tokens; DeepSeek-V3 re-quantizes its 1x128 FP8 activations the same way).
  void forward_quantized(Fp8Group g, float* out, const Fp8Matrix& x_q, const float* inp, const float* w, int64_t N,
                         int64_t I, int64_t O, Fp8Saved* save = nullptr, int64_t save_row = 0);
  // dout_q: dout quantized as options(grad, grad_format, w) makes it; dout: its values.
  void backward_quantized(Fp8Group g, float* dinp, float* dw, const Fp8Matrix& dout_q, const float* dout,
                          const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                          const Fp8Saved* saved = nullptr, int64_t save_row = 0);
  // Quantizes x (N, K) as operand `role` of weight w's forward (act) or
  // dgrad (grad) GEMM would, and notes its statistics.
  void quantize_operand(Fp8Group g, Fp8Role role, Fp8Matrix& m, const float* x, int64_t N, int64_t K, const float* w);

  // The recipe state's (fp8/recipe.h).
  std::vector<Fp8GroupStats> take_stats(const std::function<void(float*, size_t)>& reduce_max = {}) {
    return scaler_.take_stats(reduce_max);
  }
  void name_weights(const std::vector<std::pair<const float*, int64_t>>& ids, int64_t n_ids) {
    scaler_.name_weights(ids, n_ids);
  }
  int64_t named() const { return scaler_.named(); }
  std::vector<float> histories(int64_t* len) const { return scaler_.histories(len); }
  void set_histories(const std::vector<float>& h, int64_t len) { scaler_.set_histories(h, len); }

 private:
  QuantStats quantize(Fp8Matrix& m, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                      bool transpose = false) {
    return be_.fp8_quantize(m, x, rows, cols, o, transpose, stream_);
  }
  // dW (O, I) += dy^T . x, both quantized along the tokens (x from saved, or inp).
  void wgrad(Fp8Group g, float* dw, const float* dout, const float* inp, const float* w, int64_t N, int64_t I,
             int64_t O, const Fp8Saved* saved, int64_t save_row);
  Fp8Scaler scaler_;
  const Backend& be_;
  Stream stream_;
};

}  // namespace sy
