#include "estimate/model_size.h"

#include <algorithm>
#include <cmath>

#include "config/dims.h"
#include "core/arena.h"
#include "core/check.h"

namespace sy {

LayerParams layer_params(const ModelConfig& m, int64_t layer, ExpertSlice experts) {
  const int64_t C = m.d_model;
  LayerParams p;
  p.dense = 2 * C + m.qkv_width() * C + C * m.n_heads * m.head_size();  // norms, wqkv, wo
  if (!m.is_moe_layer(layer)) {
    p.dense += 3 * m.dense_width() * C;  // w13, w2
    return p;
  }
  const int64_t F = m.moe.expert_hidden;
  p.dense += m.experts_at(layer) * C + 3 * m.moe.shared_experts * F * C;  // router, shared experts
  p.expert = experts.in(m.experts_at(layer)).n * 3 * F * C;
  return p;
}

ParamCount count_params(const ModelConfig& m, ExpertSlice experts, const StageSpec& stage) {
  const int64_t C = m.d_model, V = m.vocab_size, F = m.moe.expert_hidden;
  ParamCount n;
  auto largest = [&](int64_t x) { n.largest = std::max(n.largest, x); };
  // As ParamLayout: the embedding on the first stage (and its replica as
  // the head of the last one when tied), the final norm and an untied head
  // on the last.
  const bool embed = stage.embed || (stage.head && m.tie_embeddings);
  if (embed) n.embed_head += V * C, largest(V * C);
  if (stage.head) {
    n.embed_head += C + (m.tie_embeddings ? 0 : V * C);
    largest(V * C);
  }
  for (int64_t l = 0; l < m.n_layers; ++l) {
    if (!stage.holds(l)) continue;
    const LayerParams p = layer_params(m, l, experts);
    n.total += p.dense + p.expert;
    n.expert += p.expert;
    largest(m.qkv_width() * C);
    largest(C * m.n_heads * m.head_size());
    if (!m.is_moe_layer(l)) {
      largest(2 * m.dense_width() * C);
    } else {
      largest(m.experts_at(l) * C);
      largest(2 * m.moe.shared_experts * F * C);
      if (experts.in(m.experts_at(l)).n > 0) largest(2 * F * C);
    }
  }
  n.total += n.embed_head;
  return n;
}

int64_t active_params_per_token(const ModelConfig& m, const ParamCount& full) {
  // full.expert / (experts of all layers) is one expert's size (3 F C).
  const int64_t all = m.total_experts();
  return full.total - full.expert + (all > 0 ? full.expert / all * m.moe.top_k * m.moe_layers() : 0);
}

namespace {

// FP8 storage of one saved input of `rows` x `cols` (kept transposed for the
// weight-gradient GEMM): a byte per element, and a float scale per tensor,
// or per 1 x 128 tile along the rows with block scales.
// `groups` > 1: the experts' grouped GEMMs save each expert's rows apart
// (a scale, or a partial tile, per expert), counted for a balanced load.
double fp8_bytes(double rows, double cols, bool block, double groups = 1) {
  if (rows <= 0 || cols <= 0) return 0;
  const double tiles = block ? cols * groups * std::ceil(rows / groups / 128.0) : groups;
  return rows * cols + tiles * sizeof(float);
}

}  // namespace

namespace {

// Bytes of the arena bound for `slots` micro-batches of B sequences over
// blocks [begin, end): the buffers Transformer::bind and the binds it calls
// (Fp8Staging, BlockActs with AttnActs and DenseActs or MoeActs, Scratch)
// ask for, in their order, each rounded up as Arena::alloc rounds it.
double bound_bytes(const ModelConfig& m, int64_t B, bool fp8, const StageChunk& run, int64_t end, int64_t slots) {
  const Dims d(m, B);
  double bytes = 0;
  auto f32 = [&](int64_t count) { bytes += static_cast<double>(Arena::round_up(static_cast<size_t>(count) * sizeof(float))); };
  auto i32 = [&](int64_t count) { bytes += static_cast<double>(Arena::round_up(static_cast<size_t>(count) * sizeof(int32_t))); };
  auto u8 = [&](int64_t count) { bytes += static_cast<double>(Arena::round_up(static_cast<size_t>(count) * sizeof(uint8_t))); };
  if (fp8) f32(d.N * d.C), f32(d.N * std::max(d.Fd, d.S));  // Fp8Staging: h, act
  for (int64_t s = 0; s < slots; ++s) {
    for (int64_t l = run.begin; l <= end; ++l) f32(d.N * d.C);  // x
    for (int64_t l = run.begin; l < end; ++l) {
      const bool moe = m.is_moe_layer(l);
      // AttnActs: h1 (staging with FP8), rstd1, qkv, att, lse
      if (!fp8) f32(d.N * d.C);
      f32(d.N), f32(d.N * d.R), f32(d.N * d.H * d.D), f32(d.B * d.H * d.T);
      // x_mid, h2 (staging for a dense block with FP8), rstd2
      f32(d.N * d.C);
      if (!(fp8 && !moe)) f32(d.N * d.C);
      f32(d.N);
      if (moe) {
        // MoeActs: logits, scores, probs, idx, gates, keep, s_up, s_act (staging with FP8)
        f32(d.N * d.E), f32(d.N * d.E), f32(d.N * d.E), i32(d.N * d.K), f32(d.N * d.K), u8(d.N * d.K);
        f32(d.N * 2 * d.S);
        if (!fp8) f32(d.N * d.S);
      } else {
        // DenseActs: up, act (staging with FP8)
        f32(d.N * 2 * d.Fd);
        if (!fp8) f32(d.N * d.Fd);
      }
    }
    if (run.head) f32(d.N * d.C), f32(d.N), f32(d.N * d.V), f32(d.N), i32(d.N);  // hf, rstdf, logits, losses, targets
    f32(d.N * d.C);                                                    // dres
    if (run.embed) i32(d.N);                                           // tokens
  }
  f32(d.T * d.D / 2), f32(d.T * d.D / 2);  // rope cos, sin
  // Scratch: tmp, dh, dqkv, datt, dup, dact, drl, dgates
  f32(d.N * d.C), f32(d.N * d.C), f32(d.N * d.R), f32(d.N * d.H * d.D);
  f32(std::max(d.N * 2 * d.Fd, d.N * 2 * d.S)), f32(std::max(d.N * d.Fd, d.N * d.S));
  f32(d.N * d.E), f32(d.N * d.K);
  return bytes;
}

}  // namespace

double arena_bytes(const ModelConfig& m, int64_t micro_batch, bool fp8_activations, const StageChunk& run) {
  const int64_t end = run.end < 0 ? m.n_layers : run.end;
  SY_CHECK(run.begin >= 0 && run.begin <= end && end <= m.n_layers && run.slots >= 1,
           "stage run [{}, {}) with {} slots does not fit a model of {} layers", run.begin, end, run.slots,
           m.n_layers);
  auto count = [&](int64_t B, int64_t slots) { return bound_bytes(m, B, fp8_activations, run, end, slots); };
  // The largest element count one buffer asks for is N times the widest row
  // (logits V, dense / shared up-projections 2 Fd / 2 S, qkv R, router E,
  // attention's per-head lse H): past 2^60 bytes the int64 products could
  // overflow, so such sizes come from one and two sequences instead.
  const Dims d(m, micro_batch);
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

ActivationBytes estimate_activations(const ModelConfig& m, int64_t micro_batch, const StageChunk& run,
                                     const RowOptions& o) {
  ActivationBytes a;
  const bool fp8 = o.fp8_activations;
  a.arena = arena_bytes(m, micro_batch, fp8, run);
  const int64_t end = run.end < 0 ? m.n_layers : run.end;
  const double slots = static_cast<double>(run.slots);
  const Dims d(m, micro_batch);
  const double N = static_cast<double>(d.N), C = static_cast<double>(d.C), F = static_cast<double>(d.F);
  const double K = static_cast<double>(d.K), S = static_cast<double>(d.S), Fd = static_cast<double>(d.Fd);
  int64_t moe_layers = 0, dense_layers = 0;
  for (int64_t l = run.begin; l < end; ++l) (m.is_moe_layer(l) ? moe_layers : dense_layers) += 1;
  // Rows this rank's experts receive (Mr) and its tokens send (Ms) per MoE
  // layer: every pick, N K, when the load is balanced; a capacity factor
  // bounds what the local experts take.
  double rows = N * K;
  const int64_t cap = expert_capacity(m.moe.capacity_factor, d.N * o.dp, d.E, d.K);
  if (cap >= 0) rows = std::min(rows, static_cast<double>(cap) * static_cast<double>(d.E / std::max<int64_t>(o.ep, 1)));
  const double Mr = rows, Ms = N * K;
  const bool solo = o.solo;
  const double E_local = static_cast<double>(std::max<int64_t>(d.E / std::max<int64_t>(o.ep, 1), 1));
  const double f4 = sizeof(float);
  if (moe_layers > 0) {
    // Per MoE layer and slot (MoeActs): expert inputs (unless FP8 keeps
    // them: then one buffer for all layers), up-projection, SwiGLU output
    // (likewise), outputs back at their tokens (a second window with shm).
    const double per_layer = Mr * (fp8 ? 0 : C) + Mr * 2 * F + Mr * (fp8 ? 0 : F) + (o.shm ? Mr : Ms) * C;
    a.expert_rows = f4 * slots * static_cast<double>(moe_layers) * per_layer;
    if (fp8) a.expert_rows += f4 * (Mr * C + Mr * F);  // MoeScratch::x_recv (or x_win) and act
    // MoeScratch: rows in flight and the experts' backward, once per model.
    const double transfer = o.shm  ? 2 * Mr * C                 // dy_win, dx_win
                            : solo ? Ms * C + Mr * C            // send (dy), recv2 (dx)
                                   : 2 * Ms * C + 2 * Mr * C;   // send, recv, send2, recv2
    a.moe_scratch = f4 * (transfer + Mr * F + Mr * 2 * F);      // + dact, dup
    // Packed rows (MpiScratch out_send, out_recv, back_send, back_recv): across ranks only.
    if (o.ep > 1 && !o.shm) a.moe_scratch += (Ms + Mr) * C * (o.out_packed + o.back_packed);
  }
  if (fp8) {
    // Saved in FP8 per layer and slot: attention's normed input (N, C);
    // dense: normed input (N, C) and SwiGLU output (N, Fd); MoE: shared
    // experts' SwiGLU output (N, S), experts' inputs (Mr, C) and SwiGLU outputs (Mr, F).
    const bool b = o.fp8_block;
    double per_slot = static_cast<double>(moe_layers + dense_layers) * fp8_bytes(N, C, b) +
                      static_cast<double>(dense_layers) * (fp8_bytes(N, C, b) + fp8_bytes(N, Fd, b)) +
                      static_cast<double>(moe_layers) * (fp8_bytes(N, S, b) + fp8_bytes(Mr, C, b, E_local) +
                                                         fp8_bytes(Mr, F, b, E_local));
    a.fp8 = slots * per_slot;
  }
  return a;
}

}  // namespace sy
