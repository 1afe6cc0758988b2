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
