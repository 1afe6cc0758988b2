// The one dispatch point of the linear layers' precision (TransformerEngine's
// shape: the recipe is a scaling mode per operand plus a scale-update policy
// kept apart). While an Fp8Linear is active (Fp8Scope), the linear layers
// that may run in FP8 (attention projections, dense FFN, routed and shared
// experts) route their three GEMMs through it:
//   forward  out = x W^T        x: E4M3 (activations), W: E4M3 (weights)
//   dgrad    dx  = dy W         dy: the recipe's gradient format
//   wgrad    dW += dy^T x       dy^T, x^T quantized along the token axis
// Everything else (router, LM head, attention core, norms, loss) calls the
// FP32 kernels directly. Master weights and gradients stay FP32.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cpu/fp8_gemm.h"

namespace sy {

enum class Fp8Scaling : uint8_t { tensor_current, tensor_delayed, block };

struct Fp8Recipe {
  Fp8Scaling scaling = Fp8Scaling::block;
  Fp8Format grad_format = Fp8Format::e5m2;
  int64_t amax_history = 16;  // delayed scaling: scale from the max over this many steps
  bool pow2_scales = false;
  bool saturate = true;
};

// Which layers a GEMM belongs to, for statistics.
enum class Fp8Group : uint8_t { attn_qkv, attn_out, mlp, experts, shared, count };
const char* to_string(Fp8Group g);

struct Fp8GroupStats {
  float amax_act = 0, amax_weight = 0, amax_grad = 0;
  int64_t saturated = 0;  // values clamped to the format's largest (per-tensor scales only)
};

// Inputs of FP8 linear layers kept for the weight-gradient GEMM in FP8
// instead of FP32: x^T quantized along the token axis, exactly the operand
// the wgrad GEMM reads (so the gradients are bit-identical to quantizing
// the FP32 copy in backward). One part per GEMM call (a grouped GEMM saves
// one per expert segment, found again by its first row).
struct Fp8Saved {
  // Appends a part (copied from m) saved for the GEMM call at `row`.
  void add(int64_t row, const Fp8Matrix& m);
  // The part saved at `row`, into m.
  void get(int64_t row, Fp8Matrix& m) const;
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
  std::vector<uint8_t> q_;  // all parts' codes, one pool: held memory follows the
  std::vector<float> s_;    // total saved per step, not the sum of each part's maximum
  size_t q_used_ = 0, s_used_ = 0;
};

class Fp8Linear {
 public:
  explicit Fp8Linear(const Fp8Recipe& r) : recipe_(r) {}
  const Fp8Recipe& recipe() const { return recipe_; }

  // save_t: also keep inp^T quantized for the wgrad GEMM there.
  void forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
               Fp8Saved* save = nullptr, int64_t save_row = 0);
  // dinp (N, I) overwritten (or added to with accumulate_dinp; may be null); dw (O, I) added to.
  // saved: inp^T as forward saved it at save_row (then inp is not read).
  void backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                int64_t I, int64_t O, bool accumulate_dinp = false, const Fp8Saved* saved = nullptr,
                int64_t save_row = 0);

  // Statistics since the last call, per group; resets them. Delayed scaling
  // moves its amax histories one step on: with named weights, this step's
  // amaxes are first reduced by reduce_max (over ranks, so every rank keeps
  // the same histories, TransformerEngine's amax reduction).
  std::vector<Fp8GroupStats> take_stats(const std::function<void(float*, size_t)>& reduce_max = {});

  // Delayed scaling keyed by a global id per weight (its index in the full
  // model) rather than by address: the same on every rank and layout, so
  // histories can be reduced over ranks, saved and resumed. ids: (weight, id).
  void name_weights(const std::vector<std::pair<const float*, int64_t>>& ids, int64_t n_ids);
  int64_t named() const { return n_ids_; }
  // Amax histories of the named weights, (n_ids, 3 roles: act, weight,
  // grad, len) oldest first; every history has the same length len.
  std::vector<float> histories(int64_t* len) const;
  // Restores them (the newest amax_history steps of len are kept).
  void set_histories(const std::vector<float>& h, int64_t len);

 private:
  enum Role : int { act = 0, weight = 1, grad = 2 };
  QuantOptions options(Role role, Fp8Format f, const float* key, float* scale_out);
  QuantOptions wgrad_options(Role role, Fp8Format f, const float* key);
  void note(Fp8Group g, Role role, const QuantStats& s, const float* key);

  Fp8Recipe recipe_;
  mutable std::mutex mu_;
  std::vector<Fp8GroupStats> stats_ = std::vector<Fp8GroupStats>(static_cast<size_t>(Fp8Group::count));
  struct History {
    std::vector<float> amax;  // ring of past steps
    float current = 0;        // this step's amax so far
  };
  History& history(const float* key, int role);  // (mu_ held)
  std::map<std::pair<const float*, int>, History> history_;  // unnamed weights
  std::map<const float*, int64_t> ids_;
  int64_t n_ids_ = 0;
  std::vector<History> named_;  // (n_ids, 3)
};

// The active Fp8Linear of this process (null: FP32), set for a scope.
Fp8Linear* active_fp8();
class Fp8Scope {
 public:
  explicit Fp8Scope(Fp8Linear* f);
  ~Fp8Scope();
  Fp8Scope(const Fp8Scope&) = delete;
  Fp8Scope& operator=(const Fp8Scope&) = delete;

 private:
  Fp8Linear* prev_;
};

// Linear layers that may run in FP8: through the active Fp8Linear if any,
// else linear_forward / linear_backward. With `save` (FP8 only) the input is
// kept in FP8 for backward, which then reads `saved` instead of inp.
void mm_forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                Fp8Saved* save = nullptr);
void mm_backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                 int64_t I, int64_t O, bool accumulate_dinp = false, const Fp8Saved* saved = nullptr);

}  // namespace sy
