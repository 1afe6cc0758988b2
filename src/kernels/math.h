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

}  // namespace sy::math
