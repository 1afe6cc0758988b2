// Causal self-attention with grouped-query attention (GQA).
//   qkv (B, T, R) with R = (H + 2*Hkv) * D: each row is [q (H, D) | k (Hkv, D) |
//   v (Hkv, D)], q and k already rotated. Query head h reads kv head
//   h / (H / Hkv). Scale 1/sqrt(D).
//   forward:  out (B, T, H*D), lse (B, H, T) = log-sum-exp of each score row
//   backward: dqkv (B, T, R) overwritten (dq, dk, dv)
// The optimized path works on query tiles of kAttnTile rows against the
// causal key prefix, so at most one (tile x T) score block per head is live.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace sy {

inline constexpr int64_t kAttnTile = 64;

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t D);

// Attention of n new tokens at positions pos0 .. pos0 + n - 1 against a KV
// cache (generation). q: row i at q + i * q_stride, (H, D), rotated.
// k_cache, v_cache: (pos0 + n, Hkv, D), the new tokens' keys and values
// already appended. out: (n, H*D). Token i sees cache rows [0, pos0 + i].
void attention_cached(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                      int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D);

// Naive reference: materialises the full T x T probabilities of each head.
template <class T>
void attention_forward_ref(T* out, T* lse, const T* qkv, int64_t B, int64_t Tn, int64_t H,
                           int64_t Hkv, int64_t D) {
  int64_t R = (H + 2 * Hkv) * D, group = H / Hkv;
  T scale = T(1) / std::sqrt(T(D));
  std::vector<T> p(static_cast<size_t>(Tn));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t g = h / group;
      for (int64_t i = 0; i < Tn; ++i) {
        const T* q = qkv + (b * Tn + i) * R + h * D;
        T m = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          const T* k = qkv + (b * Tn + j) * R + (H + g) * D;
          T s = 0;
          for (int64_t d = 0; d < D; ++d) s += q[d] * k[d];
          p[j] = s * scale;
          m = p[j] > m ? p[j] : m;
        }
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(p[j] - m);
        lse[(b * H + h) * Tn + i] = m + std::log(sum);
        T* o = out + (b * Tn + i) * H * D + h * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0;
        for (int64_t j = 0; j <= i; ++j) {
          T w = std::exp(p[j] - m) / sum;
          const T* v = qkv + (b * Tn + j) * R + (H + Hkv + g) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += w * v[d];
        }
      }
    }
}

template <class T>
void attention_backward_ref(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                            int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t D) {
  int64_t R = (H + 2 * Hkv) * D, group = H / Hkv;
  T scale = T(1) / std::sqrt(T(D));
  for (int64_t i = 0; i < B * Tn * R; ++i) dqkv[i] = 0;
  std::vector<T> p(static_cast<size_t>(Tn)), dp(static_cast<size_t>(Tn));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t g = h / group;
      for (int64_t i = 0; i < Tn; ++i) {
        const T* q = qkv + (b * Tn + i) * R + h * D;
        const T* o = out + (b * Tn + i) * H * D + h * D;
        const T* dO = dout + (b * Tn + i) * H * D + h * D;
        T delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += dO[d] * o[d];
        for (int64_t j = 0; j <= i; ++j) {
          const T* k = qkv + (b * Tn + j) * R + (H + g) * D;
          const T* v = qkv + (b * Tn + j) * R + (H + Hkv + g) * D;
          T s = 0, dpj = 0;
          for (int64_t d = 0; d < D; ++d) {
            s += q[d] * k[d];
            dpj += dO[d] * v[d];
          }
          p[j] = std::exp(s * scale - lse[(b * H + h) * Tn + i]);
          dp[j] = dpj;
        }
        T* dq = dqkv + (b * Tn + i) * R + h * D;
        for (int64_t j = 0; j <= i; ++j) {
          T ds = p[j] * (dp[j] - delta) * scale;
          const T* k = qkv + (b * Tn + j) * R + (H + g) * D;
          T* dk = dqkv + (b * Tn + j) * R + (H + g) * D;
          T* dv = dqkv + (b * Tn + j) * R + (H + Hkv + g) * D;
          for (int64_t d = 0; d < D; ++d) {
            dq[d] += ds * k[d];
            dk[d] += ds * q[d];
            dv[d] += p[j] * dO[d];
          }
        }
      }
    }
}

}  // namespace sy
