#include "model/transformer.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace sy {

template <class A>
void Transformer::bind(A& a) {
  const Dims& d = d_;
  const int64_t L = cfg_.n_layers;
  if (fp8_activations_) staging_.bind(a, d);
  for (Slot& S : slots_) {
    S.x.assign(static_cast<size_t>(L + 1), nullptr);
    for (int64_t l = run_.begin; l <= run_.end; ++l) S.x[static_cast<size_t>(l)] = a.template alloc<float>(d.N * d.C);
    S.layers.resize(static_cast<size_t>(L));
    for (int64_t l = run_.begin; l < run_.end; ++l)
      S.layers[static_cast<size_t>(l)].bind(a, d, cfg_.is_moe_layer(l), staging_);
    if (run_.head) {
      S.hf = a.template alloc<float>(d.N * d.C);
      S.rstdf = a.template alloc<float>(d.N);
      S.logits = a.template alloc<float>(d.N * d.V);
      S.losses = a.template alloc<float>(d.N);
      S.targets = a.template alloc<int32_t>(d.N);
    }
    S.dres = a.template alloc<float>(d.N * d.C);
    if (run_.embed) S.tokens = a.template alloc<int32_t>(d.N);
  }
  rope_cos_ = a.template alloc<float>(d.T * d.D / 2);
  rope_sin_ = a.template alloc<float>(d.T * d.D / 2);
  scratch_.bind(a, d);
}

namespace {
ExpertSlice local_experts(const ModelConfig& cfg, const MoeContext& ctx) {
  if (cfg.uniform_experts()) {  // as before per-layer counts (the same slice)
    int64_t per_rank = cfg.moe.experts / ctx.dispatch->ep_size();
    return {ctx.dispatch->ep_rank() * per_rank, per_rank};
  }
  return ExpertSlice::of_part(ctx.dispatch->ep_rank(), ctx.dispatch->ep_size());
}
}  // namespace

Transformer::Transformer(const ModelConfig& cfg, int64_t micro_batch, MoeContext ctx, bool fp8_activations,
                         StageRun run, Ops ops)
    : cfg_(cfg),
      ops_(ops),
      ctx_(std::move(ctx)),
      run_(std::move(run)),
      layout_(run_.layout ? run_.layout : std::make_shared<const ParamLayout>(cfg, local_experts(cfg, ctx_))),
      d_(cfg, micro_batch),
      fp8_activations_(fp8_activations),
      arena_(ops_.b().allocator()) {
  if (run_.end < 0) run_.end = cfg_.n_layers;
  SY_CHECK(run_.begin >= 0 && run_.begin <= run_.end && run_.end <= cfg_.n_layers && run_.slots >= 1,
           "stage run [{}, {}) with {} slots does not fit a model of {} layers", run_.begin, run_.end, run_.slots,
           cfg_.n_layers);
  for (int64_t l = run_.begin; l < run_.end; ++l)
    SY_CHECK(layout_->stage().holds(l), "the parameter layout lacks layer {}", l);
  SY_CHECK(!run_.embed || layout_->has_embed(), "the parameter layout lacks the embedding");
  SY_CHECK(!run_.head || layout_->has_head(), "the parameter layout lacks the head");
  slots_.resize(static_cast<size_t>(run_.slots));
  ArenaPlan plan;
  bind(plan);
  arena_.reserve(plan.bytes());
  bind(arena_);
  ops_.b().rope_table(rope_cos_, rope_sin_, d_.T, d_.D, cfg_.rope_theta, ops_.stream);
}

namespace {
// Counts bytes the way Arena::alloc hands them out (ArenaPlan's habit), in
// double so that no total overflows.
struct ArenaCounter {
  double bytes = 0;
  template <class T>
  T* alloc(size_t count) {
    bytes += static_cast<double>(Arena::round_up(count * sizeof(T)));
    return nullptr;
  }
};
}  // namespace

Transformer::Transformer(CountOnly, const ModelConfig& cfg, int64_t micro_batch, bool fp8_activations, StageRun run)
    : cfg_(cfg), run_(std::move(run)), d_(cfg, micro_batch), fp8_activations_(fp8_activations) {
  if (run_.end < 0) run_.end = cfg_.n_layers;
  SY_CHECK(run_.begin >= 0 && run_.begin <= run_.end && run_.end <= cfg_.n_layers && run_.slots >= 1,
           "stage run [{}, {}) with {} slots does not fit a model of {} layers", run_.begin, run_.end, run_.slots,
           cfg_.n_layers);
  slots_.resize(static_cast<size_t>(run_.slots));
}

double Transformer::arena_bytes(const ModelConfig& cfg, int64_t micro_batch, bool fp8_activations, StageRun run) {
  run.layout = nullptr;
  auto count = [&](int64_t B, int64_t slots) {
    StageRun r = run;
    r.slots = slots;
    Transformer t(CountOnly{}, cfg, B, fp8_activations, r);
    ArenaCounter c;
    t.bind(c);
    return c.bytes;
  };
  // The largest element count one alloc asks for is N times the widest row
  // (logits V, dense / shared up-projections 2 Fd / 2 S, qkv R, router E,
  // attention's per-head lse H): past 2^60 bytes the int64 products in bind
  // could overflow, so such sizes come from one and two sequences instead.
  const Dims d(cfg, micro_batch);
  const double widest = static_cast<double>(std::max({d.C, d.V, d.R, d.H * d.D, 2 * d.Fd, 2 * d.S, d.E, d.H, d.K}));
  const bool exact = static_cast<double>(d.N) * widest * sizeof(float) < 0x1p60;
  auto at = [&](int64_t slots) {
    if (exact) return count(micro_batch, slots);
    const double one = count(1, slots), two = count(2, slots);
    return one + static_cast<double>(micro_batch - 1) * (two - one);
  };
  const double one = at(1);
  return run.slots == 1 ? one : one + static_cast<double>(run.slots - 1) * (at(2) - one);
}

size_t Transformer::moe_scratch_bytes() const {
  return moe_scratch_.transfer_bytes();
}

Transformer::ActivationMemory Transformer::activation_memory() const {
  ActivationMemory m;
  m.arena = arena_.capacity();
  for (const Slot& S : slots_)
    for (int64_t l = run_.begin; l < run_.end; ++l) {
      const BlockActs& L = S.layers[static_cast<size_t>(l)];
      m.fp8 += L.attn.h1_q.bytes() + L.dense.h_q.bytes() + L.dense.act_q.bytes() + L.moe.fp8_bytes();
      m.expert_rows += L.moe.row_bytes();
    }
  m.expert_rows += moe_scratch_.input_bytes();
  return m;
}

MicroBatchStats Transformer::forward_with(int64_t slot, const float* params, const float* expert_bias,
                                          const int32_t* inputs, const int32_t* targets, bool train,
                                          double loss_scale, double capacity_factor) {
  const Dims& d = d_;
  MoeConfig moe = cfg_.moe;
  moe.capacity_factor = capacity_factor;
  const ParamLayout& layout = *layout_;
  Slot& S = slots_[static_cast<size_t>(slot)];
  const float eps = static_cast<float>(cfg_.norm_eps);
  for (int64_t n = 0; n < d.N; ++n) {
    SY_CHECK((!run_.embed || (inputs[n] >= 0 && inputs[n] < d.V)) && (!run_.head || (targets[n] >= 0 && targets[n] < d.V)),
             "token id out of range at batch position {} (sequence {}, offset {}): input {}, "
             "target {}, vocab_size {}",
             n, n / d.T, n % d.T, run_.embed ? inputs[n] : 0, run_.head ? targets[n] : 0, d.V);
  }
  RopeTables rope{rope_cos_, rope_sin_};
  MicroBatchStats st;

  if (run_.embed) {
    ops_.b().copy(S.tokens, inputs, static_cast<size_t>(d.N) * sizeof(int32_t), ops_.stream);
    ops_.b().embedding_forward(S.x[static_cast<size_t>(run_.begin)], S.tokens, params + layout.embed(), d.N, d.C, ops_.stream);
  }
  double attn_flops = 4.0 * d.B * d.H * d.D * (d.T * (d.T + 1) / 2);  // QK^T and PV, causal
  for (int64_t l = run_.begin; l < run_.end; ++l) {
    BlockActs& L = S.layers[static_cast<size_t>(l)];
    const BlockOffsets& o = layout.block(l);
    attention_block_forward(ops_, L.attn, L.x_mid, S.x[static_cast<size_t>(l)], params, o, d, rope, eps, scratch_);
    st.flops += 2.0 * d.N * d.C * (d.R + d.H * d.D) + attn_flops;
    ops_.b().rmsnorm_forward(L.h2, L.rstd2, L.x_mid, params + o.ffn_norm, d.N, d.C, eps, ops_.stream);
    float* ffn_out = scratch_.tmp;
    if (cfg_.is_moe_layer(l)) {
      int64_t m = l - cfg_.dense_layers;
      Dims dl = d;  // this layer's experts (the bias rows stay (moe_layers, E max))
      dl.E = cfg_.experts_at(l);
      moe_block_forward(ops_, L.moe, ffn_out, L.h2, params, expert_bias ? expert_bias + m * d.E : nullptr,
                        o, dl, moe, ctx_, moe_scratch_);
      st.router.push_back(ops_.b().router_losses(L.moe.sums, L.moe.Ntot, dl.E, d.K));
      st.load.emplace_back(L.moe.sums.counts.begin(), L.moe.sums.counts.end());
      st.margin.push_back(L.moe.margin);
      st.group_pairs += L.moe.group_pairs;
      st.group_max = std::max(st.group_max, L.moe.group_max);
      st.moe_index.push_back(m);
      st.dropped += L.moe.dropped;
      st.layer_dropped.push_back(L.moe.dropped);
      st.picks += d.N * d.K;
      st.flops += moe_block_flops(L.moe, dl);
    } else {
      dense_ffn_forward(ops_, L.dense, ffn_out, L.h2, params, o, d);
      st.flops += 2.0 * d.N * d.C * 3.0 * d.Fd;
    }
    float* x_out = S.x[static_cast<size_t>(l + 1)];
    ops_.b().add(x_out, L.x_mid, ffn_out, d.N * d.C, ops_.stream);
  }
  S.loss_scale = loss_scale;
  S.have_train_forward = train;
  if (!run_.head) return st;
  st.tokens = d.N;
  ops_.b().rmsnorm_forward(S.hf, S.rstdf, S.x[static_cast<size_t>(run_.end)], params + layout.final_norm(), d.N, d.C, eps, ops_.stream);
  ops_.b().linear_forward(S.logits, S.hf, params + layout.lm_head(), d.N, d.C, d.V, ops_.stream);
  st.flops += 2.0 * d.N * d.C * d.V;
  // Mean over the tokens of the whole data-parallel micro-batch.
  float dscale = static_cast<float>(loss_scale / static_cast<double>(d.N * ctx_.dp.size()));
  // The host's targets into the backend's memory (the ops read only that).
  ops_.b().copy(S.targets, targets, static_cast<size_t>(d.N) * sizeof(int32_t), ops_.stream);
  ops_.b().cross_entropy(S.losses, train ? S.logits : nullptr, S.logits, S.targets, d.N, d.V, dscale, ops_.stream);
  host_losses_.resize(static_cast<size_t>(d.N));  // the per-token losses, read on the host
  ops_.b().copy(host_losses_.data(), S.losses, static_cast<size_t>(d.N) * sizeof(float), ops_.stream);
  ops_.b().synchronize(ops_.stream);
  for (int64_t n = 0; n < d.N; ++n) st.loss_sum += host_losses_[static_cast<size_t>(n)];
  return st;
}

void Transformer::backward(int64_t slot, const float* params, float* grads, const std::function<void(int64_t)>& ready,
                           WgradQueue* defer) {
  const Ops ops = ops_.with_defer(defer);
  Slot& S = slots_[static_cast<size_t>(slot)];
  SY_CHECK(S.have_train_forward, "Transformer::backward needs a forward with train = true first (slot {})", slot);
  S.have_train_forward = false;
  const Dims& d = d_;
  const ParamLayout& layout = *layout_;
  RopeTables rope{rope_cos_, rope_sin_};
  Scratch& s = scratch_;

  if (run_.head) {  // S.logits holds dL/dlogits
    linear_backward(ops, s.dh, grads + layout.lm_head(), S.logits, S.hf, params + layout.lm_head(), d.N, d.C, d.V);
    ops.b().zero(S.dres, static_cast<size_t>(d.N * d.C) * sizeof(float), ops.stream);
    ops_.b().rmsnorm_backward(S.dres, grads + layout.final_norm(), s.dh, S.x[static_cast<size_t>(run_.end)],
                     params + layout.final_norm(), S.rstdf, d.N, d.C, ops_.stream);
    if (ready) ready(cfg_.n_layers);
  }
  for (int64_t l = run_.end - 1; l >= run_.begin; --l) {
    BlockActs& L = S.layers[static_cast<size_t>(l)];
    const BlockOffsets& o = layout.block(l);
    // dres = dL/dx_{l+1} = dL/d ffn_out; the residual carries it to x_mid.
    if (cfg_.is_moe_layer(l)) {
      Dims dl = d;
      dl.E = cfg_.experts_at(l);
      moe_block_backward(ops, s.dh, grads, L.moe, S.dres, L.h2, params, o, dl, cfg_.moe, S.loss_scale, ctx_,
                         moe_scratch_, s);
    }
    else
      dense_ffn_backward(ops, s.dh, grads, L.dense, S.dres, L.h2, params, o, d, s);
    ops_.b().rmsnorm_backward(S.dres, grads + o.ffn_norm, s.dh, L.x_mid, params + o.ffn_norm, L.rstd2, d.N, d.C, ops_.stream);
    attention_block_backward(ops, S.dres, grads, L.attn, S.x[static_cast<size_t>(l)], params, o, d, rope, s);
    if (ready) ready(l);
  }
  if (run_.embed) {
    ops_.b().embedding_backward(grads + layout.embed(), S.dres, S.tokens, d.N, d.C, ops_.stream);
    if (ready) ready(-1);
  }
}

}  // namespace sy
