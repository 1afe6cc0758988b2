// Per-element and per-row arithmetic of the ops, written once for the host
// and the device (`__host__ __device__` under nvcc): the CUDA kernels call
// these, and a CPU test (tests/unit/kernels/test_math.cpp) checks them
// against the CPU backend's naive references, so the GPU's arithmetic runs
// in CI although CI has no GPU. What only a GPU can show (the grid's
// indexing, shared memory, streams) is the gpu-labelled tests' part.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SY_HD __host__ __device__ inline
#else
#define SY_HD inline
#endif

namespace sy::math {

SY_HD float sigmoid(float a) { return 1.f / (1.f + expf(-a)); }

// SwiGLU of one (gate a, up b) pair: silu(a) * b, and its gradients.
SY_HD float swiglu(float a, float b) { return a * sigmoid(a) * b; }
SY_HD void swiglu_grad(float a, float b, float dy, float* da, float* db) {
  const float s = sigmoid(a);
  *da = dy * b * s * (1.f + a * (1.f - s));
  *db = dy * a * s;
}

// RoPE on the pair (x_i, x_{i+D/2}) with cos c and sin s; sign -1 undoes it
// (the backward is the rotation by the opposite angle).
SY_HD void rope_pair(float* a, float* b, float c, float s, float sign) {
  const float x = *a, y = *b, sn = sign * s;
  *a = x * c - y * sn;
  *b = y * c + x * sn;
}

// One AdamW element, PyTorch's order (kernels/cpu/adamw.h); the step's
// constants are computed once on the host.
struct AdamWConsts {
  float decay, b1, b2, eps, scale, step_size, bc2_sqrt;
};
SY_HD void adamw(float* p, float g, float* m, float* v, const AdamWConsts& k) {
  const float gi = g * k.scale;
  const float pi = *p * k.decay;
  *m = k.b1 * *m + (1.f - k.b1) * gi;
  *v = k.b2 * *v + (1.f - k.b2) * gi * gi;
  *p = pi - k.step_size * *m / (sqrtf(*v) / k.bc2_sqrt + k.eps);
}

// BF16 storage: round to nearest even (NaN stays NaN), and back.
SY_HD uint16_t bf16_round(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
SY_HD float bf16_value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
// x rounded to the nearest BF16 value, held in an FP32.
SY_HD float bf16_rounded(float x) { return bf16_value(bf16_round(x)); }

// The value of an OCP FP8 code (E4M3: e4; else E5M2), exact in FP32: the
// CPU's table (kernels/cpu/fp8.h fp8_table) computed per code on a device.
SY_HD float fp8_value(uint8_t c, bool e4) {
  const int mant = e4 ? 3 : 2, bias = e4 ? 7 : 15;
  const int e = (c & 0x7F) >> mant, m = c & ((1 << mant) - 1);
  float v;
  if (e4 && (c & 0x7F) == 0x7F)
    v = NAN;
  else if (!e4 && e == 31)
    v = m == 0 ? INFINITY : NAN;
  else if (e == 0)
    v = ldexpf(static_cast<float>(m), 1 - bias - mant);
  else
    v = ldexpf(1.f + static_cast<float>(m) / static_cast<float>(1 << mant), e - bias);
  return (c & 0x80) ? -v : v;
}

// Online softmax (attention without a T x T matrix): a running max m, a
// running sum l of exp(s - m), and the weight `rescale` the accumulated
// output is multiplied by when score s arrives; `w` is s's own weight.
struct OnlineSoftmax {
  float m = -INFINITY, l = 0.f;
  SY_HD void add(float s, float* rescale, float* w) {
    const float mn = s > m ? s : m;
    *rescale = expf(m - mn);  // 0 for the first score (m = -inf)
    *w = expf(s - mn);
    l = l * *rescale + *w;
    m = mn;
  }
  SY_HD float lse() const { return m + logf(l); }
};

// Router backward (kernels/cpu/router.h has the objective). d aux / d probs_e,
// the same for every token:
SY_HD float router_daux(float coef_aux, int64_t E, double count_e, int64_t Ntot, int64_t K, float inv_n) {
  return coef_aux * static_cast<float>(E) * static_cast<float>(count_e / (static_cast<double>(Ntot) * K)) * inv_n;
}
SY_HD float log_floor(float p) {  // log(max(p, FLT_MIN)): a zero probability has a finite log
  const float lo = 1.17549435e-38f;
  return logf(p < lo ? lo : p);
}
SY_HD float row_lse(const float* l, int64_t E) {
  float m = l[0];
  for (int64_t e = 1; e < E; ++e) m = m < l[e] ? l[e] : m;
  float z = 0.f;
  for (int64_t e = 0; e < E; ++e) z += expf(l[e] - m);
  return m + logf(z);
}
// One token: dl (E) = d objective / d logits, from the gates' gradient dg (K)
// of the picks id (K), the scores s, probs p and logits l (E), and the
// balance terms; ds and dp are (E) scratch.
SY_HD void router_grad_row(float* dl, float* ds, float* dp, const float* s, const float* p, const float* l,
                           const int32_t* id, const float* dg, const float* daux, int64_t E, int64_t K, bool softmax,
                           bool renormalize, float inv_n, float c_entropy, float c_z) {
  for (int64_t e = 0; e < E; ++e) {
    ds[e] = 0.f;
    dp[e] = daux[e] - c_entropy * inv_n * (log_floor(p[e]) + 1.f);
  }
  // gates -> scores
  if (renormalize) {
    float z = 0.f, dot = 0.f;
    for (int64_t k = 0; k < K; ++k) z += s[id[k]];
    for (int64_t k = 0; k < K; ++k) dot += dg[k] * s[id[k]] / z;
    for (int64_t k = 0; k < K; ++k) ds[id[k]] += (dg[k] - dot) / z;
  } else {
    for (int64_t k = 0; k < K; ++k) ds[id[k]] += dg[k];
  }
  // probs -> scores
  if (softmax) {
    for (int64_t e = 0; e < E; ++e) ds[e] += dp[e];
  } else {
    float ssum = 0.f, dot = 0.f;
    for (int64_t e = 0; e < E; ++e) ssum += s[e], dot += dp[e] * p[e];
    for (int64_t e = 0; e < E; ++e) ds[e] += (dp[e] - dot) / ssum;
  }
  // scores -> logits
  if (softmax) {
    float dot = 0.f;
    for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
    for (int64_t e = 0; e < E; ++e) dl[e] = s[e] * (ds[e] - dot);
  } else {
    for (int64_t e = 0; e < E; ++e) dl[e] = ds[e] * s[e] * (1.f - s[e]);
  }
  // z-loss acts on the logits directly: d lse^2 = 2 lse softmax(logits)
  if (c_z != 0.f) {
    const float lse = row_lse(l, E), k2 = 2.f * c_z * lse * inv_n;
    for (int64_t e = 0; e < E; ++e) dl[e] += k2 * expf(l[e] - lse);
  }
}

}  // namespace sy::math
