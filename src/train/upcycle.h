// Dense-to-MoE upcycling (moe-ckpt upcycle): a dense model's SwiGLU FFNs
// become routed experts, so training an MoE can start from a trained dense
// model instead of from scratch.
//
// Switchyard's models have `model.dense_layers` dense blocks first and MoE
// blocks after them, so the layers upcycled are a suffix: --layers names
// them (default: every layer, as Megatron-Core's upcycling does; "1-3" keeps
// block 0 dense, DeepSeek-style). Those layers must be dense in DENSE.
//
// Layer l's dense FFN W1, W3 (Fd x C each, stored as mlp.w13), W2 (C x Fd)
// becomes E experts of width F = Fd / G (G = --granularity):
//   expert e takes segment s = e mod G of the hidden units:
//     w13 = [W1[sF:(s+1)F]; W3[sF:(s+1)F]],  w2 = G * W2[:, sF:(s+1)F];
//   the router (E x C) is fresh: normal(0, model.init_std) from (--seed,
//   its name), and the G experts of one group c = e div G share one row.
// The config becomes moe.experts = E, top_k = K, expert_hidden = F,
// shared_experts = 0, score = softmax, renormalize = true; the balancing
// bias starts at 0, the AdamW moments at 0 (weights only, step 0).
//
// When it computes the dense model exactly (in real arithmetic; FP32
// differs by round-off): noise 0, and
//   G = 1: always. The experts are identical copies and the renormalised
//     gates sum to 1, so sum_k g_k FFN(x) = FFN(x) whatever experts the
//     router picks.
//   G > 1: when K is a multiple of G. A group's G experts have equal
//     router rows, hence bitwise-equal logits and scores, and top-k breaks
//     ties towards the lower index, so the K picks are K / G whole groups c,
//     every expert of group c with the same gate g_c, and G sum_c g_c =
//     sum_k g_k = 1. With y_s = W2[:, seg s] (silu(W1[seg s] x) * W3[seg s] x)
//     the output is sum_c g_c sum_s G y_s = (G sum_c g_c) sum_s y_s =
//     sum_s y_s = FFN(x), whichever groups the router picks.
//   With K not a multiple of G (or noise > 0) the result is not the dense
//   model at step 0; upcycle says so (exact = false).
// --noise S multiplies every expert weight by (1 + S n), n standard normal
// from (--seed, the expert tensor's name): relative noise, so copies differ.
#pragma once

#include <cstdint>
#include <string>

#include "ckpt/reader.h"

namespace sy {

struct UpcycleOptions {
  int64_t experts = 0, top_k = 0, granularity = 1;
  double noise = 0;
  int64_t seed = -1;   // -1: the dense checkpoint's train.seed
  std::string layers;  // "" = every layer; else "A-B" or "A,B,C" (a suffix of the layers)
};

struct UpcycleResult {
  std::string out;
  int64_t first_moe_layer = 0, moe_layers = 0, experts = 0, top_k = 0, granularity = 1;
  int64_t dense_hidden = 0, expert_hidden = 0;
  bool exact = true;  // computes the dense model at step 0 (up to round-off)
};

// Writes a consolidated checkpoint file `out` (must not exist). ConfigError
// for a bad option, layers that are not dense or not a suffix.
UpcycleResult upcycle(ckpt::Reader& dense, const std::string& out, const UpcycleOptions& o);

}  // namespace sy
