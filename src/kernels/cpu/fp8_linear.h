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

class Fp8Linear {
 public:
  explicit Fp8Linear(const Fp8Recipe& r) : recipe_(r) {}
  const Fp8Recipe& recipe() const { return recipe_; }

  void forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O);
  // dinp (N, I) overwritten (or added to with accumulate_dinp; may be null); dw (O, I) added to.
  void backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                int64_t I, int64_t O, bool accumulate_dinp = false);

  // Statistics since the last call, per group; resets them. Delayed scaling
  // moves its amax histories one step on.
  std::vector<Fp8GroupStats> take_stats();

 private:
  enum Role : int { act = 0, weight = 1, grad = 2 };
  QuantOptions options(Role role, Fp8Format f, const float* key, float* scale_out);
  void note(Fp8Group g, Role role, const QuantStats& s, const float* key);

  Fp8Recipe recipe_;
  std::mutex mu_;
  std::vector<Fp8GroupStats> stats_ = std::vector<Fp8GroupStats>(static_cast<size_t>(Fp8Group::count));
  struct History {
    std::vector<float> amax;  // ring of past steps
    float current = 0;        // this step's amax so far
  };
  std::map<std::pair<const float*, int>, History> history_;
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
// else linear_forward / linear_backward.
void mm_forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O);
void mm_backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w, int64_t N,
                 int64_t I, int64_t O, bool accumulate_dinp = false);

}  // namespace sy
