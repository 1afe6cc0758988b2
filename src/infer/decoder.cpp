#include "infer/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "ckpt/reader.h"
#include "core/check.h"
#include "core/rng.h"

namespace sy {

namespace fs = std::filesystem;

namespace {
ModelConfig dropless(ModelConfig m) {
  m.moe.capacity_factor = 0;  // every routed pick is computed at inference
  return m;
}
}  // namespace

template <class A>
void Decoder::bind(A& a) {
  const Dims& d = d_;
  layers_.resize(static_cast<size_t>(cfg_.n_layers));
  for (int64_t l = 0; l < cfg_.n_layers; ++l) layers_[static_cast<size_t>(l)].bind(a, d, cfg_.is_moe_layer(l));
  x_ = a.template alloc<float>(d.N * d.C);
  out_ = a.template alloc<float>(d.N * d.C);
  hf_ = a.template alloc<float>(d.N * d.C);
  rstdf_ = a.template alloc<float>(d.N);
  logits_ = a.template alloc<float>(d.N * d.V);
  rope_cos_ = a.template alloc<float>(context_ * d.D / 2);
  rope_sin_ = a.template alloc<float>(context_ * d.D / 2);
  scratch_.bind(a, d);
}

Decoder::Decoder(const ModelConfig& cfg, std::vector<float> params, std::vector<float> bias, int64_t context,
                 Ops ops)
    : cfg_(dropless(cfg)), layout_(cfg_), context_(context), d_(cfg_, 1), ops_(ops), arena_(ops_.b().allocator()) {
  SY_CHECK(context_ >= 1, "generation context must be at least 1 token, got {}", context_);
  const Backend& be = ops_.b();
  Allocator& mem = be.allocator();
  params_.ensure(static_cast<size_t>(layout_.total()), mem);
  set_weights(params, bias);
  d_.T = d_.N = context_;
  ArenaPlan plan;
  bind(plan);
  arena_.reserve(plan.bytes());
  bind(arena_);
  be.rope_table(rope_cos_, rope_sin_, context_, d_.D, cfg_.rope_theta, ops_.stream);
  const size_t cache = static_cast<size_t>(cfg_.n_layers * context_ * d_.Hkv * d_.D);
  be.zero(k_cache_.ensure(cache, mem), cache * sizeof(float), ops_.stream);
  be.zero(v_cache_.ensure(cache, mem), cache * sizeof(float), ops_.stream);
  tokens_.ensure(static_cast<size_t>(context_), mem);
  moe_ctx_.dispatch = make_local_dispatcher(mem);
  be.synchronize(ops_.stream);  // the host vectors go when this returns
}

void Decoder::set_weights(const std::vector<float>& params, const std::vector<float>& bias) {
  SY_CHECK(static_cast<int64_t>(params.size()) == layout_.total(),
           "generation: {} weights given, the model needs {}", params.size(), layout_.total());
  SY_CHECK(bias.empty() || static_cast<int64_t>(bias.size()) == cfg_.moe_layers() * cfg_.moe.experts,
           "generation: expert bias has {} values, the model needs {} (moe layers x experts)", bias.size(),
           cfg_.moe_layers() * cfg_.moe.experts);
  const Backend& be = ops_.b();
  be.copy(params_.data(), params.data(), params.size() * sizeof(float), ops_.stream);
  has_bias_ = !bias.empty();
  if (has_bias_) be.copy(bias_.ensure(bias.size(), be.allocator()), bias.data(), bias.size() * sizeof(float), ops_.stream);
  be.synchronize(ops_.stream);
}

const float* Decoder::extend(const int32_t* tokens, int64_t n) {
  SY_CHECK(n >= 1 && pos_ + n <= context_,
           "generation: {} more token(s) at position {} do not fit the context of {} positions", n, pos_, context_);
  for (int64_t i = 0; i < n; ++i)
    SY_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.vocab_size, "generation: token id {} at position {} is outside "
             "the vocabulary of {}", tokens[i], pos_ + i, cfg_.vocab_size);
  Dims d = d_;
  d.T = d.N = n;
  const float eps = static_cast<float>(cfg_.norm_eps);
  const Backend& be = ops_.b();
  const float* P = params_.data();
  const int64_t half = d.D / 2, kv = d.Hkv * d.D;
  be.copy(tokens_.data(), tokens, static_cast<size_t>(n) * sizeof(int32_t), ops_.stream);
  be.embedding_forward(x_, tokens_.data(), P + layout_.embed(), n, d.C, ops_.stream);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    BlockActs& L = layers_[static_cast<size_t>(l)];
    const BlockOffsets& o = layout_.block(l);
    be.rmsnorm_forward(L.attn.h1, L.attn.rstd1, x_, P + o.attn_norm, n, d.C, eps, ops_.stream);
    be.linear_forward(L.attn.qkv, L.attn.h1, P + o.wqkv, n, d.C, d.R, ops_.stream);
    // Row i is position pos_ + i: tables from pos_, "sequence length" n.
    be.rope_forward(L.attn.qkv, rope_cos_ + pos_ * half, rope_sin_ + pos_ * half, n, n, d.H + d.Hkv, d.D, d.R, ops_.stream);
    float* kc = k_cache_.data() + l * context_ * kv;
    float* vc = v_cache_.data() + l * context_ * kv;
    for (int64_t i = 0; i < n; ++i) {
      const float* row = L.attn.qkv + i * d.R;
      be.copy(kc + (pos_ + i) * kv, row + d.H * d.D, static_cast<size_t>(kv) * sizeof(float), ops_.stream);
      be.copy(vc + (pos_ + i) * kv, row + (d.H + d.Hkv) * d.D, static_cast<size_t>(kv) * sizeof(float), ops_.stream);
    }
    be.attention_cached(L.attn.att, L.attn.qkv, d.R, kc, vc, pos_, n, d.H, d.Hkv, d.D, ops_.stream);
    be.linear_forward(scratch_.tmp, L.attn.att, P + o.wo, n, d.H * d.D, d.C, ops_.stream);
    be.add(L.x_mid, x_, scratch_.tmp, n * d.C, ops_.stream);
    flops_ += 2.0 * n * d.C * (d.R + d.H * d.D) + 4.0 * d.H * d.D * (n * pos_ + n * (n + 1) / 2.0);
    be.rmsnorm_forward(L.h2, L.rstd2, L.x_mid, P + o.ffn_norm, n, d.C, eps, ops_.stream);
    if (cfg_.is_moe_layer(l)) {
      const int64_t m = l - cfg_.dense_layers;
      Dims dl = d;  // this layer's experts (bias rows: (moe_layers, E max))
      dl.E = cfg_.experts_at(l);
      moe_block_forward(ops_, L.moe, out_, L.h2, P, has_bias_ ? bias_.data() + m * d.E : nullptr, o, dl, cfg_.moe,
                        moe_ctx_, moe_scratch_);
      flops_ += moe_block_flops(L.moe, dl);
    } else {
      dense_ffn_forward(ops_, L.dense, out_, L.h2, P, o, d);
      flops_ += 2.0 * n * d.C * 3.0 * d.Fd;
    }
    be.add(x_, L.x_mid, out_, n * d.C, ops_.stream);
  }
  be.rmsnorm_forward(hf_, rstdf_, x_, P + layout_.final_norm(), n, d.C, eps, ops_.stream);
  be.linear_forward(logits_, hf_, P + layout_.lm_head(), n, d.C, d.V, ops_.stream);
  flops_ += 2.0 * n * d.C * d.V;
  pos_ += n;
  logits_host_.resize(static_cast<size_t>(n * d.V));
  be.copy(logits_host_.data(), logits_, logits_host_.size() * sizeof(float), ops_.stream);
  be.synchronize(ops_.stream);
  return logits_host_.data();
}

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, int64_t position) {
  SY_CHECK(V >= 1, "sampling from an empty vocabulary");
  for (int64_t v = 0; v < V; ++v)
    SY_CHECK(std::isfinite(logits[v]), "sampling: logit of token {} at position {} is {}", v, position, logits[v]);
  if (opt.temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  // Candidates by falling logit (ties: lower id first), then filtered.
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  size_t keep = opt.top_k > 0 ? std::min<size_t>(ids.size(), static_cast<size_t>(opt.top_k)) : ids.size();
  std::vector<double> p(keep);
  const double top = logits[ids[0]];
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp((logits[ids[i]] - top) / opt.temperature));
  if (opt.top_p < 1.0) {
    double acc = 0;
    size_t n = 0;
    while (n < keep) {
      acc += p[n++] / sum;
      if (acc >= opt.top_p) break;
    }
    keep = std::max<size_t>(n, 1);
    sum = std::accumulate(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  }
  const uint64_t key = stream_key(opt.seed, "sample");
  const double u = (static_cast<double>(u64_at(key, static_cast<uint64_t>(position), 0) >> 11) + 0.5) * 0x1p-53 * sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return ids[i];
  }
  return ids[keep - 1];
}

LoadedModel load_model(const std::string& checkpoint) {
  const std::string path = ckpt::resolve_checkpoint(checkpoint);
  LoadedModel out;
  out.path = path;
  try {
    ckpt::Reader r(path);
    const ckpt::Manifest& man = r.manifest();
    out.config = parse_config(man.config_toml, path + " (the configuration it was trained with)");
    out.step = man.step;
    out.dp = man.dp;
    out.tokenizer_model = man.tokenizer_model;
    ParamLayout layout(out.config.model);
    out.params.assign(static_cast<size_t>(layout.total()), 0.f);
    for (const ParamInfo& p : layout.params()) {
      const ckpt::TensorEntry& t = r.tensor(p.name);
      SY_CHECK(t.numel() == p.numel(), "checkpoint '{}': tensor '{}' has {} elements, its configuration needs {}",
               path, p.name, t.numel(), p.numel());
      r.read("params", t, out.params.data() + p.offset, 0, p.numel());
    }
    out.bias = man.expert_bias;
    if (out.bias.empty()) out.bias.assign(static_cast<size_t>(out.config.model.moe_layers() * out.config.model.moe.experts), 0.f);
    SY_CHECK(static_cast<int64_t>(out.bias.size()) == out.config.model.moe_layers() * out.config.model.moe.experts,
             "checkpoint '{}': expert_bias has {} values, the model needs {}", path, out.bias.size(),
             out.config.model.moe_layers() * out.config.model.moe.experts);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    SY_CONFIG_FAIL("{}", e.what());  // an unreadable checkpoint is the user's input, not a crash
  }
  return out;
}

std::vector<int32_t> encode_bytes(const std::string& text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<uint8_t>(text[i]);
  return ids;
}

std::string decode_bytes(const std::vector<int32_t>& ids) {
  std::string s(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) s[i] = static_cast<char>(static_cast<uint8_t>(ids[i]));
  return s;
}

std::string escape_text(const std::string& s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += ch;
  }
  return out;
}

}  // namespace sy
