#include "kernels/cpu/router.h"

#include "kernels/math.h"

#include <cfloat>
#include <limits>

#include "core/parallel.h"

namespace sy {

void router_scores(float* scores, float* probs, const float* logits, int64_t N, int64_t E, ScoreFn fn) {
  parallel_for(N, [&](int64_t t) {
    const float* l = logits + t * E;
    float* s = scores + t * E;
    float* p = probs + t * E;
    if (fn == ScoreFn::softmax) {
      float m = l[0];
      for (int64_t e = 1; e < E; ++e) m = std::max(m, l[e]);
      float z = 0.f;
      for (int64_t e = 0; e < E; ++e) z += (s[e] = std::exp(l[e] - m));
      float inv = 1.f / z;
      for (int64_t e = 0; e < E; ++e) p[e] = s[e] = s[e] * inv;
    } else {
      float z = 0.f;
      for (int64_t e = 0; e < E; ++e) z += (s[e] = 1.f / (1.f + std::exp(-l[e])));
      float inv = 1.f / z;
      for (int64_t e = 0; e < E; ++e) p[e] = s[e] * inv;
    }
  });
}

namespace {

// Insertion of (v, i) into a list sorted by descending v that holds at most
// n entries (filled so far: `filled`). Strict '>' keeps the lower index first
// among equal values.
template <class I>
void insert_sorted(float* best, I* id, int64_t& filled, int64_t n, float v, int64_t i) {
  if (filled == n && !(v > best[n - 1])) return;
  int64_t pos = filled < n ? filled++ : n - 1;
  while (pos > 0 && v > best[pos - 1]) {
    best[pos] = best[pos - 1];
    id[pos] = id[pos - 1];
    --pos;
  }
  best[pos] = v;
  id[pos] = static_cast<I>(i);
}

// The group scores of one token (G): the sum of each group's two largest
// selection values (its one value for groups of one expert).
void group_scores(float* gs, const float* s, const float* bias, int64_t E, int64_t G) {
  const int64_t Eg = E / G;
  for (int64_t g = 0; g < G; ++g) {
    float a = -std::numeric_limits<float>::infinity(), b = a;
    for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e) {
      const float v = s[e] + (bias ? bias[e] : 0.f);
      if (v > a) b = a, a = v;
      else if (v > b) b = v;
    }
    gs[g] = Eg == 1 ? a : a + b;
  }
}

// keep (G) = 1 for the groups.limit best groups of one token.
void keep_groups(uint8_t* keep, float* gs, float* best, int64_t* id, const float* s, const float* bias, int64_t E,
                 RouterGroups grp) {
  const int64_t G = grp.groups, M = grp.limit;
  group_scores(gs, s, bias, E, G);
  int64_t filled = 0;
  for (int64_t g = 0; g < G; ++g) insert_sorted(best, id, filled, M, gs[g], g);
  std::fill(keep, keep + G, uint8_t{0});
  for (int64_t m = 0; m < M; ++m) keep[id[m]] = 1;
}

// Per-thread buffers of the group selection.
struct GroupScratch {
  std::vector<uint8_t> keep;
  std::vector<float> gs, best;
  std::vector<int64_t> id;
  explicit GroupScratch(RouterGroups g)
      : keep(static_cast<size_t>(g.groups), 1), gs(static_cast<size_t>(g.groups)),
        best(static_cast<size_t>(g.groups)), id(static_cast<size_t>(g.groups)) {}
  // Whether expert e (of E) may be chosen for this token.
  void select(const float* s, const float* bias, int64_t E, RouterGroups g) {
    if (g.on()) keep_groups(keep.data(), gs.data(), best.data(), id.data(), s, bias, E, g);
  }
};

}  // namespace

void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N,
                 int64_t E, int64_t K, bool renormalize, RouterGroups grp) {
  parallel_chunks(N, chunk_count(N, 256), [&](int64_t t0, int64_t t1, int64_t) {
   std::vector<float> best(static_cast<size_t>(K));
   GroupScratch gsc(grp);
   const int64_t Eg = grp.on() ? E / grp.groups : E;
   for (int64_t t = t0; t < t1; ++t) {
    const float* s = scores + t * E;
    int32_t* id = idx + t * K;
    float* g = gates + t * K;
    gsc.select(s, bias, E, grp);
    // Insertion into a sorted top-k list: K is small. Strict '>' keeps the
    // lower expert index first among equal values.
    int64_t filled = 0;
    for (int64_t e = 0; e < E; ++e) {
      if (!gsc.keep[static_cast<size_t>(e / Eg)]) continue;  // a group the limit left out
      float v = s[e] + (bias ? bias[e] : 0.f);
      if (filled == K && !(v > best[K - 1])) continue;
      int64_t pos = filled < K ? filled++ : K - 1;
      while (pos > 0 && v > best[pos - 1]) {
        best[pos] = best[pos - 1];
        id[pos] = id[pos - 1];
        --pos;
      }
      best[pos] = v;
      id[pos] = static_cast<int32_t>(e);
    }
    float sum = 0.f;
    for (int64_t k = 0; k < K; ++k) sum += (g[k] = s[id[k]]);
    if (renormalize) {
      float inv = 1.f / sum;
      for (int64_t k = 0; k < K; ++k) g[k] *= inv;
    }
   }
  });
}

double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K,
                     RouterGroups grp) {
  const int64_t chunks = chunk_count(N, 256);
  std::vector<double> part(static_cast<size_t>(chunks), std::numeric_limits<double>::infinity());
  parallel_chunks(N, chunks, [&](int64_t t0, int64_t t1, int64_t c) {
    std::vector<uint8_t> chosen(static_cast<size_t>(E));
    GroupScratch gsc(grp);
    double m = std::numeric_limits<double>::infinity();
    for (int64_t t = t0; t < t1; ++t) {
      const float* s = scores + t * E;
      std::fill(chosen.begin(), chosen.end(), 0);
      if (grp.on()) {
        // The group choice: lowest kept group score - highest dropped one;
        // experts of dropped groups then take no part in the expert margin.
        gsc.select(s, bias, E, grp);
        float glo = std::numeric_limits<float>::infinity(), ghi = -glo;
        for (int64_t g = 0; g < grp.groups; ++g)
          if (gsc.keep[static_cast<size_t>(g)]) glo = std::min(glo, gsc.gs[static_cast<size_t>(g)]);
          else ghi = std::max(ghi, gsc.gs[static_cast<size_t>(g)]);
        m = std::min(m, static_cast<double>(glo) - static_cast<double>(ghi));
        const int64_t Eg = E / grp.groups;
        for (int64_t e = 0; e < E; ++e) chosen[static_cast<size_t>(e)] = gsc.keep[static_cast<size_t>(e / Eg)] ? 0 : 2;
      }
      float lo = std::numeric_limits<float>::infinity(), hi = -std::numeric_limits<float>::infinity();
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[t * K + k];
        chosen[static_cast<size_t>(e)] = 1;
        lo = std::min(lo, s[e] + (bias ? bias[e] : 0.f));  // the value router_topk compared
      }
      for (int64_t e = 0; e < E; ++e)  // 0: an expert of a kept group left unchosen
        if (!chosen[static_cast<size_t>(e)]) hi = std::max(hi, s[e] + (bias ? bias[e] : 0.f));
      if (hi > -std::numeric_limits<float>::infinity())
        m = std::min(m, static_cast<double>(lo) - static_cast<double>(hi));
    }
    part[static_cast<size_t>(c)] = m;
  });
  double m = std::numeric_limits<double>::infinity();
  for (double x : part) m = std::min(m, x);
  return m;
}

void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs,
                 int64_t N, int64_t E, int64_t K) {
  // Serial over tokens (N x E is small next to the expert GEMMs) and in
  // double, so the sums do not depend on thread count.
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t k = 0; k < K; ++k) sums.counts[static_cast<size_t>(idx[t * K + k])] += 1.0;
    double lse = math::row_lse(logits + t * E, E);
    sums.z_sum += lse * lse;
    for (int64_t e = 0; e < E; ++e) {
      float p = probs[t * E + e];
      sums.prob_sum[static_cast<size_t>(e)] += p;
      sums.entropy_sum -= static_cast<double>(p) * math::log_floor(p);
    }
  }
}

RouterLosses router_losses(const RouterSums& sums, int64_t Ntot, int64_t E, int64_t K) {
  RouterLosses out;
  double n = static_cast<double>(Ntot);
  for (int64_t e = 0; e < E; ++e)
    out.aux += sums.counts[static_cast<size_t>(e)] / (n * static_cast<double>(K)) *
               sums.prob_sum[static_cast<size_t>(e)] / n;
  out.aux *= static_cast<double>(E);
  out.z = sums.z_sum / n;
  out.entropy = sums.entropy_sum / n;
  return out;
}

void router_backward(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
                     const float* scores, const float* probs, const RouterSums& sums, int64_t N,
                     int64_t Ntot, int64_t E, int64_t K, ScoreFn fn, bool renormalize,
                     RouterCoefs coefs) {
  const float inv_n = 1.f / static_cast<float>(Ntot);
  std::vector<float> daux(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e)
    daux[static_cast<size_t>(e)] = math::router_daux(coefs.aux, E, sums.counts[static_cast<size_t>(e)], Ntot, K, inv_n);
  parallel_chunks(N, chunk_count(N, 256), [&](int64_t t0, int64_t t1, int64_t) {
    std::vector<float> ds(static_cast<size_t>(E)), dp(static_cast<size_t>(E));
    for (int64_t t = t0; t < t1; ++t)
      math::router_grad_row(dlogits + t * E, ds.data(), dp.data(), scores + t * E, probs + t * E, logits + t * E,
                            idx + t * K, dgates + t * K, daux.data(), E, K, fn == ScoreFn::softmax, renormalize,
                            inv_n, coefs.entropy, coefs.z);
  });
}

}  // namespace sy
