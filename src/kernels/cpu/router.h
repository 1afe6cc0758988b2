// MoE router: scores, top-k selection, load-balancing terms and the backward
// of all of it, per token. Sizes: N tokens, E experts, K picks per token.
//
//   scores (N, E) = softmax(logits) or sigmoid(logits)
//   probs  (N, E) = scores normalised to sum 1 per token (== scores for softmax);
//                   the distribution the balance terms are computed on
//   idx, gates (N, K): top-k of scores + bias (bias shifts the choice only),
//                   gates = chosen scores, divided by their sum if renormalised;
//                   with RouterGroups on, only among the experts of the
//                   token's `limit` best groups (kernels/types.h)
//
// Balance terms over a micro-batch of Ntot tokens (all ranks together):
//   aux     = E * sum_e f_e * P_e,  f_e = count_e / (Ntot K), P_e = prob_sum_e / Ntot
//   z       = mean_t logsumexp(logits_t)^2
//   entropy = mean_t -sum_e probs_te log probs_te
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/types.h"

namespace sy {


void router_scores(float* scores, float* probs, const float* logits, int64_t N, int64_t E, ScoreFn fn);
void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N,
                 int64_t E, int64_t K, bool renormalize, RouterGroups groups = {});

// How close the top-k choice of these N tokens came to a tie: the smallest,
// over tokens, of (lowest chosen score + bias) - (highest unchosen score +
// bias); +inf when every expert is chosen (K == E) or N == 0. Two runs whose
// scores differ by less than this (rounding, e.g. another reduction order)
// choose the same experts; a larger margin means a different choice is not
// a rounding effect. With RouterGroups on it is also at most the group
// choice's margin (lowest kept group score - highest dropped one), and the
// unchosen experts compared are those of kept groups.
double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K,
                     RouterGroups groups = {});

// Sums over these N tokens, added into the outputs (so micro-batches and
// ranks can be summed): counts (E) of top-k picks, prob_sum (E),
// z_sum = sum_t lse_t^2, entropy_sum = sum_t H(probs_t).
void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs,
                 int64_t N, int64_t E, int64_t K);

RouterLosses router_losses(const RouterSums& sums, int64_t Ntot, int64_t E, int64_t K);


// dlogits (N, E) (overwritten) = gradient of
//   sum_tk dgates_tk * gates_tk + coefs.aux * aux + coefs.z * z + coefs.entropy * entropy
// with f_e (from sums.counts) held constant, as in Switch/GShard.
void router_backward(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
                     const float* scores, const float* probs, const RouterSums& sums, int64_t N,
                     int64_t Ntot, int64_t E, int64_t K, ScoreFn fn, bool renormalize,
                     RouterCoefs coefs);

// ---------------------------------------------------------------- reference
template <class T>
void router_scores_ref(T* scores, T* probs, const T* logits, int64_t N, int64_t E, ScoreFn fn) {
  for (int64_t t = 0; t < N; ++t) {
    const T* l = logits + t * E;
    T* s = scores + t * E;
    if (fn == ScoreFn::softmax) {
      T m = l[0];
      for (int64_t e = 1; e < E; ++e) m = std::max(m, l[e]);
      T z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(l[e] - m);
      for (int64_t e = 0; e < E; ++e) s[e] = probs[t * E + e] = std::exp(l[e] - m) / z;
    } else {
      T z = 0;
      for (int64_t e = 0; e < E; ++e) z += (s[e] = T(1) / (T(1) + std::exp(-l[e])));
      for (int64_t e = 0; e < E; ++e) probs[t * E + e] = s[e] / z;
    }
  }
}

// With groups on: each group's score is the sum of its two largest values
// (from a sorted copy), the groups are ranked by a stable sort on descending
// score (equal scores: lower group first), the first `limit` kept; experts of
// the other groups are marked taken before the top-k picks.
template <class T>
void router_topk_ref(int32_t* idx, T* gates, const T* scores, const T* bias, int64_t N, int64_t E,
                     int64_t K, bool renormalize, RouterGroups grp = {}) {
  std::vector<bool> taken(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    std::fill(taken.begin(), taken.end(), false);
    if (grp.on()) {
      const int64_t G = grp.groups, Eg = E / G;
      std::vector<T> gs(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) {
        std::vector<T> v;
        for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e) v.push_back(scores[t * E + e] + (bias ? bias[e] : T(0)));
        std::sort(v.begin(), v.end(), [](T a, T b) { return a > b; });
        gs[static_cast<size_t>(g)] = Eg == 1 ? v[0] : v[0] + v[1];
      }
      std::vector<int64_t> order(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) order[static_cast<size_t>(g)] = g;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return gs[static_cast<size_t>(a)] > gs[static_cast<size_t>(b)]; });
      for (int64_t r = grp.limit; r < G; ++r)
        for (int64_t e = order[static_cast<size_t>(r)] * Eg; e < (order[static_cast<size_t>(r)] + 1) * Eg; ++e)
          taken[static_cast<size_t>(e)] = true;
    }
    T sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      int64_t best = -1;
      T best_v = 0;
      for (int64_t e = 0; e < E; ++e) {
        T v = scores[t * E + e] + (bias ? bias[e] : T(0));
        if (!taken[static_cast<size_t>(e)] && (best < 0 || v > best_v)) best = e, best_v = v;
      }
      taken[static_cast<size_t>(best)] = true;
      idx[t * K + k] = static_cast<int32_t>(best);
      gates[t * K + k] = scores[t * E + best];
      sum += gates[t * K + k];
    }
    if (renormalize)
      for (int64_t k = 0; k < K; ++k) gates[t * K + k] /= sum;
  }
}

// Reference balance terms for a single batch (Ntot == N), as a scalar
// objective, for finite-difference checks of router_backward.
template <class T>
T router_objective_ref(const T* logits, const T* dgates, const int32_t* idx,
                       const std::vector<double>& counts, int64_t N, int64_t E, int64_t K,
                       ScoreFn fn, bool renormalize, RouterCoefs c) {
  std::vector<T> s(static_cast<size_t>(N * E)), p(static_cast<size_t>(N * E));
  router_scores_ref(s.data(), p.data(), logits, N, E, fn);
  T obj = 0;
  std::vector<T> prob_sum(static_cast<size_t>(E), T(0));
  for (int64_t t = 0; t < N; ++t) {
    T z = 0;
    for (int64_t k = 0; k < K; ++k) z += s[static_cast<size_t>(t * E + idx[t * K + k])];
    for (int64_t k = 0; k < K; ++k) {
      T g = s[static_cast<size_t>(t * E + idx[t * K + k])];
      obj += dgates[t * K + k] * (renormalize ? g / z : g);
    }
    T m = logits[t * E];
    for (int64_t e = 1; e < E; ++e) m = std::max(m, logits[t * E + e]);
    T se = 0;
    for (int64_t e = 0; e < E; ++e) se += std::exp(logits[t * E + e] - m);
    T lse = m + std::log(se);
    obj += T(c.z) * lse * lse / T(N);
    for (int64_t e = 0; e < E; ++e) {
      T pe = p[static_cast<size_t>(t * E + e)];
      obj -= T(c.entropy) * pe * std::log(pe) / T(N);
      prob_sum[static_cast<size_t>(e)] += pe;
    }
  }
  for (int64_t e = 0; e < E; ++e)
    obj += T(c.aux) * T(E) * T(counts[static_cast<size_t>(e)] / double(N * K)) *
           prob_sum[static_cast<size_t>(e)] / T(N);
  return obj;
}

}  // namespace sy
