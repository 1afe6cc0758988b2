#include "kernels/cpu/router.h"

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

void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N,
                 int64_t E, int64_t K, bool renormalize) {
  parallel_chunks(N, chunk_count(N, 256), [&](int64_t t0, int64_t t1, int64_t) {
   std::vector<float> best(static_cast<size_t>(K));
   for (int64_t t = t0; t < t1; ++t) {
    const float* s = scores + t * E;
    int32_t* id = idx + t * K;
    float* g = gates + t * K;
    // Insertion into a sorted top-k list: K is small. Strict '>' keeps the
    // lower expert index first among equal values.
    int64_t filled = 0;
    for (int64_t e = 0; e < E; ++e) {
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

double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K) {
  const int64_t chunks = chunk_count(N, 256);
  std::vector<double> part(static_cast<size_t>(chunks), std::numeric_limits<double>::infinity());
  parallel_chunks(N, chunks, [&](int64_t t0, int64_t t1, int64_t c) {
    std::vector<uint8_t> chosen(static_cast<size_t>(E));
    double m = std::numeric_limits<double>::infinity();
    for (int64_t t = t0; t < t1; ++t) {
      const float* s = scores + t * E;
      std::fill(chosen.begin(), chosen.end(), 0);
      float lo = std::numeric_limits<float>::infinity(), hi = -std::numeric_limits<float>::infinity();
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[t * K + k];
        chosen[static_cast<size_t>(e)] = 1;
        lo = std::min(lo, s[e] + (bias ? bias[e] : 0.f));  // the value router_topk compared
      }
      for (int64_t e = 0; e < E; ++e)
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

namespace {
inline float row_lse(const float* l, int64_t E) {
  float m = l[0];
  for (int64_t e = 1; e < E; ++e) m = std::max(m, l[e]);
  float z = 0.f;
  for (int64_t e = 0; e < E; ++e) z += std::exp(l[e] - m);
  return m + std::log(z);
}
inline float safe_log(float p) { return std::log(std::max(p, FLT_MIN)); }
}  // namespace

void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs,
                 int64_t N, int64_t E, int64_t K) {
  // Serial over tokens (N x E is small next to the expert GEMMs) and in
  // double, so the sums do not depend on thread count.
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t k = 0; k < K; ++k) sums.counts[static_cast<size_t>(idx[t * K + k])] += 1.0;
    double lse = row_lse(logits + t * E, E);
    sums.z_sum += lse * lse;
    for (int64_t e = 0; e < E; ++e) {
      float p = probs[t * E + e];
      sums.prob_sum[static_cast<size_t>(e)] += p;
      sums.entropy_sum -= static_cast<double>(p) * safe_log(p);
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
  float inv_n = 1.f / static_cast<float>(Ntot);
  // d aux / d probs_te = coef * E * f_e / Ntot, the same for every token.
  std::vector<float> daux(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e)
    daux[static_cast<size_t>(e)] = coefs.aux * static_cast<float>(E) *
                                   static_cast<float>(sums.counts[static_cast<size_t>(e)] /
                                                      (static_cast<double>(Ntot) * K)) * inv_n;
  parallel_chunks(N, chunk_count(N, 256), [&](int64_t t0, int64_t t1, int64_t) {
   std::vector<float> ds(static_cast<size_t>(E)), dp(static_cast<size_t>(E));
   for (int64_t t = t0; t < t1; ++t) {
    const float* s = scores + t * E;
    const float* p = probs + t * E;
    const float* l = logits + t * E;
    float* dl = dlogits + t * E;
    for (int64_t e = 0; e < E; ++e) {
      ds[e] = 0.f;
      dp[e] = daux[static_cast<size_t>(e)] - coefs.entropy * inv_n * (safe_log(p[e]) + 1.f);
    }
    // gates -> scores
    const int32_t* id = idx + t * K;
    const float* dg = dgates + t * K;
    if (renormalize) {
      float z = 0.f, dot = 0.f;
      for (int64_t k = 0; k < K; ++k) z += s[id[k]];
      for (int64_t k = 0; k < K; ++k) dot += dg[k] * s[id[k]] / z;
      for (int64_t k = 0; k < K; ++k) ds[id[k]] += (dg[k] - dot) / z;
    } else {
      for (int64_t k = 0; k < K; ++k) ds[id[k]] += dg[k];
    }
    // probs -> scores
    if (fn == ScoreFn::softmax) {
      for (int64_t e = 0; e < E; ++e) ds[e] += dp[e];
    } else {
      float ssum = 0.f, dot = 0.f;
      for (int64_t e = 0; e < E; ++e) ssum += s[e], dot += dp[e] * p[e];
      for (int64_t e = 0; e < E; ++e) ds[e] += (dp[e] - dot) / ssum;
    }
    // scores -> logits
    if (fn == ScoreFn::softmax) {
      float dot = 0.f;
      for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
      for (int64_t e = 0; e < E; ++e) dl[e] = s[e] * (ds[e] - dot);
    } else {
      for (int64_t e = 0; e < E; ++e) dl[e] = ds[e] * s[e] * (1.f - s[e]);
    }
    // z-loss acts on the logits directly: d lse^2 = 2 lse softmax(logits)
    if (coefs.z != 0.f) {
      float lse = row_lse(l, E);
      float k2 = 2.f * coefs.z * lse * inv_n;
      for (int64_t e = 0; e < E; ++e) dl[e] += k2 * std::exp(l[e] - lse);
    }
   }
  });
}

}  // namespace sy
