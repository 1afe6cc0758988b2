// Generation with a KV cache: the model's forward pass over a few new tokens
// at a time, keys and values of every past token kept per layer.
//
// The cache holds, per layer, K and V rows of n_kv_heads x head_dim floats
// for each position (with grouped-query attention that is n_kv_heads, not
// n_heads), so a token costs 2 * L * Hkv * D * 4 bytes. MoE layers route
// every token (dropless: capacity limits are a training device), using the
// balancing bias the checkpoint carries.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/blocks.h"
#include "config/model.h"
#include "model/layout.h"
#include "model/moe_block.h"
#include "model/ops.h"
#include "config/run.h"

namespace sy {

class Decoder {
 public:
  // params: the whole model (all experts) in ParamLayout(cfg) order; bias:
  // (moe_layers, E) or empty. context: positions the cache holds.
  // ops: the backend it decodes on. The weights, the bias, the KV cache and
  // every activation live in that backend's memory (the host vectors given
  // are copied there and released); extend() takes host tokens and returns
  // host logits.
  Decoder(const ModelConfig& cfg, std::vector<float> params, std::vector<float> bias, int64_t context,
          Ops ops = {});
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Runs tokens at positions position() .. position() + n - 1, appending their
  // keys and values to the cache; returns their logits (n, V), valid until
  // the next call. Chunks longer than context() - position() are an error.
  const float* extend(const int32_t* tokens, int64_t n);
  void reset() { pos_ = 0; }  // forget the cached sequence
  int64_t position() const { return pos_; }
  int64_t context() const { return context_; }

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  const Backend& backend() const { return ops_.b(); }
  // New weights and bias (as the constructor takes them) for the same model, copied to the backend's memory.
  void set_weights(const std::vector<float>& params, const std::vector<float>& bias);
  int64_t cache_bytes_per_token() const { return 2 * cfg_.n_layers * cfg_.n_kv_heads * cfg_.head_size() * 4; }
  int64_t cache_bytes() const { return cache_bytes_per_token() * context_; }
  double flops() const { return flops_; }             // forward FLOPs of every extend() so far

 private:
  template <class A>
  void bind(A& a);

  ModelConfig cfg_;
  ParamLayout layout_;
  GrowBuffer<float> params_, bias_;  // in the backend's memory
  bool has_bias_ = false;
  int64_t context_, pos_ = 0;
  Dims d_;  // sized for a chunk of `context_` tokens
  Ops ops_;
  Arena arena_;
  std::vector<BlockActs> layers_;
  float *x_, *out_, *hf_, *rstdf_, *logits_, *rope_cos_, *rope_sin_;
  GrowBuffer<float> k_cache_, v_cache_;  // (L, context, Hkv, D), in the backend's memory
  GrowBuffer<int32_t> tokens_;           // (context) the chunk's tokens, in the backend's memory
  std::vector<float> logits_host_;       // (context, V) what extend() returns
  Scratch scratch_;
  MoeContext moe_ctx_;                   // one rank; its rows in the backend's memory
  MoeScratch moe_scratch_;
  double flops_ = 0;
};

// Next-token choice from logits: temperature 0 is greedy (argmax, lowest id
// on ties); otherwise softmax(logits / T), restricted to the top_k most
// likely tokens (0 = all) and then to the smallest set whose probability
// reaches top_p (1 = all), renormalised and sampled with a uniform that is a
// pure function of (seed, position): the same seed gives the same text.
struct SamplingOptions {
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
};
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, int64_t position);

// A model from a checkpoint: its configuration (the run's resolved TOML) and
// whole weights, whichever layout wrote it.
struct LoadedModel {
  RunConfig config;
  std::vector<float> params;  // ParamLayout(config.model) order
  std::vector<float> bias;    // (moe_layers, E)
  int64_t step = 0;
  int64_t dp = 1;             // data-parallel ranks of the run that wrote it (its validation batch: dp x micro_batch)
  std::string path;
  std::string tokenizer_model;  // the SentencePiece model it was trained with; "" = none
};
LoadedModel load_model(const std::string& checkpoint);

// Byte-level text <-> token ids (vocab_size 256 models, data.format "text").
inline bool byte_level(const RunConfig& c) { return c.model.vocab_size == 256 && c.data.format == DataFormat::text; }
std::vector<int32_t> encode_bytes(const std::string& text);
std::string decode_bytes(const std::vector<int32_t>& ids);
// For one-line logs: control bytes as \n, \t, \xNN.
std::string escape_text(const std::string& s);

}  // namespace sy
