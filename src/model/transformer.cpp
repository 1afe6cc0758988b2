#include "model/transformer.h"

#include <cstring>

#include "core/check.h"
#include "core/parallel.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"

namespace sy {

template <class A>
void Transformer::bind(A& a) {
  const Dims& d = d_;
  x_.resize(static_cast<size_t>(cfg_.n_layers + 1));
  for (float*& x : x_) x = a.template alloc<float>(d.N * d.C);
  layers_.resize(static_cast<size_t>(cfg_.n_layers));
  if (fp8_activations_) staging_.bind(a, d);
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    layers_[static_cast<size_t>(l)].bind(a, d, cfg_.is_moe_layer(l), staging_);
  hf_ = a.template alloc<float>(d.N * d.C);
  rstdf_ = a.template alloc<float>(d.N);
  logits_ = a.template alloc<float>(d.N * d.V);
  losses_ = a.template alloc<float>(d.N);
  dres_ = a.template alloc<float>(d.N * d.C);
  tokens_ = a.template alloc<int32_t>(d.N);
  rope_cos_ = a.template alloc<float>(d.T * d.D / 2);
  rope_sin_ = a.template alloc<float>(d.T * d.D / 2);
  scratch_.bind(a, d);
}

namespace {
ExpertSlice local_experts(const ModelConfig& cfg, const MoeContext& ctx) {
  int64_t per_rank = cfg.moe.experts / ctx.ep.size();
  return {ctx.ep.rank() * per_rank, per_rank};
}
}  // namespace

Transformer::Transformer(const ModelConfig& cfg, int64_t micro_batch, MoeContext ctx, bool fp8_activations)
    : cfg_(cfg),
      ctx_(std::move(ctx)),
      layout_(cfg, local_experts(cfg, ctx_)),
      d_(cfg, micro_batch),
      fp8_activations_(fp8_activations) {
  ArenaPlan plan;
  bind(plan);
  arena_.reserve(plan.bytes());
  bind(arena_);
  rope_table(rope_cos_, rope_sin_, d_.T, d_.D, cfg_.rope_theta);
}

Transformer::ActivationMemory Transformer::activation_memory() const {
  ActivationMemory m;
  m.arena = arena_.capacity();
  for (const BlockActs& L : layers_) {
    m.fp8 += L.attn.h1_q.bytes() + L.dense.h_q.bytes() + L.dense.act_q.bytes() + L.moe.fp8_bytes();
    m.expert_rows += L.moe.row_bytes();
  }
  m.expert_rows += (moe_scratch_.act.capacity() + moe_scratch_.x_recv.capacity()) * sizeof(float) +
                   moe_scratch_.x_win.bytes();
  return m;
}

MicroBatchStats Transformer::forward(const float* params, const float* expert_bias,
                                     const int32_t* inputs, const int32_t* targets, bool train,
                                     double loss_scale) {
  const Dims& d = d_;
  const float eps = static_cast<float>(cfg_.norm_eps);
  for (int64_t n = 0; n < d.N; ++n) {
    SY_CHECK(inputs[n] >= 0 && inputs[n] < d.V && targets[n] >= 0 && targets[n] < d.V,
             "token id out of range at batch position {} (sequence {}, offset {}): input {}, "
             "target {}, vocab_size {}",
             n, n / d.T, n % d.T, inputs[n], targets[n], d.V);
  }
  std::memcpy(tokens_, inputs, static_cast<size_t>(d.N) * sizeof(int32_t));
  RopeTables rope{rope_cos_, rope_sin_};
  MicroBatchStats st;
  st.tokens = d.N;

  embedding_forward(x_[0], inputs, params + layout_.embed(), d.N, d.C);
  double attn_flops = 4.0 * d.B * d.H * d.D * (d.T * (d.T + 1) / 2);  // QK^T and PV, causal
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    BlockActs& L = layers_[static_cast<size_t>(l)];
    const BlockOffsets& o = layout_.block(l);
    attention_block_forward(L.attn, L.x_mid, x_[l], params, o, d, rope, eps, scratch_);
    st.flops += 2.0 * d.N * d.C * (d.R + d.H * d.D) + attn_flops;
    rmsnorm_forward(L.h2, L.rstd2, L.x_mid, params + o.ffn_norm, d.N, d.C, eps);
    float* ffn_out = scratch_.tmp;
    if (cfg_.is_moe_layer(l)) {
      int64_t m = l - cfg_.dense_layers;
      moe_block_forward(L.moe, ffn_out, L.h2, params, expert_bias ? expert_bias + m * d.E : nullptr,
                        o, d, cfg_.moe, ctx_, moe_scratch_);
      st.router.push_back(router_losses(L.moe.sums, L.moe.Ntot, d.E, d.K));
      st.load.emplace_back(L.moe.sums.counts.begin(), L.moe.sums.counts.end());
      st.dropped += L.moe.dropped;
      st.picks += d.N * d.K;
      st.flops += moe_block_flops(L.moe, d);
    } else {
      dense_ffn_forward(L.dense, ffn_out, L.h2, params, o, d);
      st.flops += 2.0 * d.N * d.C * 3.0 * d.Fd;
    }
    float* x_out = x_[l + 1];
    parallel_for(d.N, [&](int64_t n) {
      const float* a = L.x_mid + n * d.C;
      const float* b = ffn_out + n * d.C;
      float* z = x_out + n * d.C;
#pragma omp simd
      for (int64_t c = 0; c < d.C; ++c) z[c] = a[c] + b[c];
    });
  }
  rmsnorm_forward(hf_, rstdf_, x_[cfg_.n_layers], params + layout_.final_norm(), d.N, d.C, eps);
  linear_forward(logits_, hf_, params + layout_.lm_head(), d.N, d.C, d.V);
  st.flops += 2.0 * d.N * d.C * d.V;
  // Mean over the tokens of the whole data-parallel micro-batch.
  float dscale = static_cast<float>(loss_scale / static_cast<double>(d.N * ctx_.dp.size()));
  cross_entropy(losses_, train ? logits_ : nullptr, logits_, targets, d.N, d.V, dscale);
  for (int64_t n = 0; n < d.N; ++n) st.loss_sum += losses_[n];
  loss_scale_ = loss_scale;
  have_train_forward_ = train;
  return st;
}

void Transformer::backward(const float* params, float* grads, const std::function<void(int64_t)>& ready) {
  SY_CHECK(have_train_forward_, "Transformer::backward needs a forward with train = true first");
  have_train_forward_ = false;
  const Dims& d = d_;
  RopeTables rope{rope_cos_, rope_sin_};
  Scratch& s = scratch_;

  // Head: logits_ holds dL/dlogits.
  linear_backward(s.dh, grads + layout_.lm_head(), logits_, hf_, params + layout_.lm_head(), d.N, d.C, d.V);
  std::memset(dres_, 0, static_cast<size_t>(d.N * d.C) * sizeof(float));
  rmsnorm_backward(dres_, grads + layout_.final_norm(), s.dh, x_[cfg_.n_layers],
                   params + layout_.final_norm(), rstdf_, d.N, d.C);
  if (ready) ready(cfg_.n_layers);

  for (int64_t l = cfg_.n_layers - 1; l >= 0; --l) {
    BlockActs& L = layers_[static_cast<size_t>(l)];
    const BlockOffsets& o = layout_.block(l);
    // dres = dL/dx_{l+1} = dL/d ffn_out; the residual carries it to x_mid.
    if (cfg_.is_moe_layer(l))
      moe_block_backward(s.dh, grads, L.moe, dres_, L.h2, params, o, d, cfg_.moe, loss_scale_, ctx_,
                         moe_scratch_, s);
    else
      dense_ffn_backward(s.dh, grads, L.dense, dres_, L.h2, params, o, d, s);
    rmsnorm_backward(dres_, grads + o.ffn_norm, s.dh, L.x_mid, params + o.ffn_norm, L.rstd2, d.N, d.C);
    attention_block_backward(dres_, grads, L.attn, x_[l], params, o, d, rope, s);
    if (ready) ready(l);
  }
  embedding_backward(grads + layout_.embed(), dres_, tokens_, d.N, d.C);
  if (ready) ready(-1);
}

}  // namespace sy
