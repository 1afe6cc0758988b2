// The parameter layout table: every parameter's global name, shape, where it
// lives in the flat buffer, and how it is initialised and decayed. Order is
// layer-major, and within a layer the non-expert tensors come first, then
// the routed experts one after another, so a layer (gradient bucket) or an
// expert shard is one contiguous range. Init, gradients, the optimizer and
// checkpoints all walk this one table.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/shape.h"
#include "config/layout.h"  // ExpertSlice, StageSpec
#include "config/model.h"

namespace sy {

enum class ParamKind : uint8_t {
  embed, attn_norm, wqkv, wo, ffn_norm, mlp_w13, mlp_w2, router, shared_w13, shared_w2,
  expert_w13, expert_w2, final_norm, lm_head
};

struct ParamInfo {
  std::string name;     // global name: the same on every rank and in checkpoints
  Shape shape;
  ParamKind kind;
  int64_t layer = -1;   // -1 for embedding, final norm and head
  int64_t expert = -1;  // routed expert index, -1 otherwise
  bool decay = true;    // weight decay applies (matrices yes, norm gains no)
  bool ones = false;    // initialised to 1 (norm gains), else normal(0, init_std)
  double init_std = 0;
  bool replica = false;  // a second copy (tied embedding on the last pipeline stage): its
                        // gradient is summed with the first stage's, it is not saved or
                        // counted twice in the gradient norm
  int64_t offset = 0;   // into this rank's flat buffer
  int64_t index = 0;    // position in the full model's table (all experts)
  int64_t numel() const { return shape.numel(); }
};

// A contiguous range of the flat buffer whose gradients are final at one
// point of backward and are reduced together: the head (final norm, LM
// head), then per block from the last: its dense tensors and its routed
// experts, then the embedding. Dense buckets reduce over the data-parallel
// group, expert buckets over the expert-data-parallel group.
struct Bucket {
  std::string name;
  int64_t begin = 0, end = 0;
  bool expert = false;
  int64_t ready = 0;  // backward readiness key: n_layers = head, l = block l, -1 = embedding
};

// Offsets of one block's tensors in the flat buffer (-1 if absent).
struct BlockOffsets {
  int64_t attn_norm = -1, wqkv = -1, wo = -1, ffn_norm = -1;
  int64_t mlp_w13 = -1, mlp_w2 = -1;                 // dense FFN
  int64_t router = -1, shared_w13 = -1, shared_w2 = -1;
  std::vector<int64_t> expert_w13, expert_w2;        // per local routed expert
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg, ExpertSlice experts = {}, StageSpec stage = {});

  const std::vector<ParamInfo>& params() const { return params_; }
  int64_t total() const { return total_; }
  const ParamInfo& find(std::string_view name) const;  // throws if unknown
  const BlockOffsets& block(int64_t layer) const { return blocks_[static_cast<size_t>(layer)]; }
  int64_t embed() const { return embed_; }
  int64_t final_norm() const { return final_norm_; }
  int64_t lm_head() const { return lm_head_; }  // == embed() when tied
  const ExpertSlice& experts() const { return experts_; }
  const StageSpec& stage() const { return stage_; }
  bool has_embed() const { return embed_ >= 0; }
  bool has_head() const { return final_norm_ >= 0; }
  // Buckets in the order backward finishes them.
  const std::vector<Bucket>& buckets() const { return buckets_; }

 private:
  int64_t add(std::string name, Shape shape, ParamKind kind, int64_t layer, int64_t expert,
              bool ones, double std, bool local = true);
  std::vector<ParamInfo> params_;
  std::vector<BlockOffsets> blocks_;
  std::vector<Bucket> buckets_;
  ExpertSlice experts_;
  StageSpec stage_;
  int64_t total_ = 0, index_ = 0, embed_ = -1, final_norm_ = -1, lm_head_ = -1;
};

// Fills params (layout.total() floats) from the counter-based RNG keyed by
// (seed, parameter name, element index): any slice of any tensor can be
// initialised on its own and equals the same slice of a full init.
void init_params(float* params, const ParamLayout& layout, uint64_t seed);
void init_param_slice(float* dst, const ParamInfo& p, uint64_t seed, int64_t begin, int64_t end);

}  // namespace sy
