// FP8 recipes: what scales each operand of an FP8 GEMM gets (TransformerEngine's
// recipe/: the scaling policy, kept apart from the GEMM that uses it).
//   block            1 x 128 tiles for activations and gradients, 128 x 128
//                    blocks for weights (DeepSeek-V3), scales from the tile
//   tensor_current   one scale per tensor from this tensor's amax
//   tensor_delayed   one scale per tensor from the max amax of the last
//                    amax_history steps (per weight and role), histories
//                    reduced over ranks and checkpointed
// An Fp8Scaler holds a run's recipe state: the scale choice per operand, the
// amax histories and the per-group statistics. The trainer owns it (through
// the Fp8Linear that uses it) and passes it to the model; nothing is global.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kernels/fp8_types.h"

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

// The operand an FP8 GEMM quantizes.
enum class Fp8Role : int { act = 0, weight = 1, grad = 2 };

class Fp8Scaler {
 public:
  explicit Fp8Scaler(const Fp8Recipe& r) : recipe_(r) {}
  const Fp8Recipe& recipe() const { return recipe_; }

  // How to quantize operand `role` of the GEMMs of weight `key` in format f
  // (forward and dgrad GEMMs: along K of the weight's layout).
  QuantOptions options(Fp8Role role, Fp8Format f, const float* key);
  // The wgrad GEMM reads both operands quantized along the tokens: block
  // recipes use 1 x 128 tiles there (the weight's 128 x 128 blocks do not apply).
  QuantOptions wgrad_options(Fp8Role role, Fp8Format f, const float* key);
  // Records a quantization's statistics (group statistics; this step's amax
  // for delayed scaling).
  void note(Fp8Group g, Fp8Role role, const QuantStats& s, const float* key);

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
  struct History {
    std::vector<float> amax;  // ring of past steps
    float current = 0;        // this step's amax so far
  };
  History& history(const float* key, int role);  // (mu_ held)

  Fp8Recipe recipe_;
  mutable std::mutex mu_;
  std::vector<Fp8GroupStats> stats_ = std::vector<Fp8GroupStats>(static_cast<size_t>(Fp8Group::count));
  std::map<std::pair<const float*, int>, History> history_;  // unnamed weights
  std::map<const float*, int64_t> ids_;
  int64_t n_ids_ = 0;
  std::vector<History> named_;  // (n_ids, 3)
};

}  // namespace sy
