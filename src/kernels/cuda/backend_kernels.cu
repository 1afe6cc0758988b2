// The CUDA backend's kernels (launched by cuda_backend.cu; declared in
// backend_kernels.h): one thread per element, row or query, grid-stride
// loops; the per-element arithmetic is kernels/math.h, shared with the CPU.
#include "kernels/cuda/backend_kernels.h"

#include <cmath>

#include "kernels/cpu/router.h"

namespace sy::cuda::kern {

#define SY_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{gridDim.x} * blockDim.x)

// ---- elementwise -----------------------------------------------------------
__global__ void add_kernel(float* z, const float* x, const float* y, int64_t n) {
  SY_GRID_LOOP(i, n) z[i] = x[i] + y[i];
}

__global__ void round_bf16_kernel(float* dst, const float* src, int64_t n) {
  SY_GRID_LOOP(i, n) dst[i] = math::bf16_rounded(src[i]);
}

// ---- packed rows (kernels/cpu/pack.h) ---------------------------------------------
__global__ void pack_bf16_kernel(uint32_t* packed, int64_t W, const float* x, int64_t n, int64_t C) {
  SY_GRID_LOOP(i, n * W) {
    const int64_t r = i / W, w = i % W, k = 2 * w;
    const uint32_t lo = k < C ? math::bf16_round(x[r * C + k]) : 0u;
    const uint32_t hi = k + 1 < C ? math::bf16_round(x[r * C + k + 1]) : 0u;
    packed[i] = lo | (hi << 16);  // little-endian: value k at the lower address
  }
}
__global__ void unpack_bf16_kernel(float* x, const uint32_t* packed, int64_t W, int64_t n, int64_t C) {
  SY_GRID_LOOP(i, n * C) {
    const int64_t r = i / C, k = i % C;
    const uint32_t word = packed[r * W + k / 2];
    x[i] = math::bf16_value(static_cast<uint16_t>(k % 2 ? word >> 16 : word & 0xffffu));
  }
}
__global__ void fp8_pack_kernel(uint32_t* packed, int64_t W, const uint8_t* q, const float* sinv, int64_t ld,
                                int64_t n, int64_t C) {
  const int64_t cw = (C + 3) / 4, kb = (C + 127) / 128;
  SY_GRID_LOOP(i, n * W) {
    const int64_t r = i / W, w = i % W;
    uint32_t word = 0;
    if (w < cw) {
      for (int j = 0; j < 4; ++j)
        if (4 * w + j < C) word |= uint32_t{q[r * C + 4 * w + j]} << (8 * j);
    } else if (w < cw + kb) {
      word = __float_as_uint(sinv[(w - cw) * ld + r]);
    }
    packed[i] = word;
  }
}
__global__ void fp8_unpack_kernel(uint8_t* q, float* sinv, int64_t ld, const uint32_t* packed, int64_t W, int64_t n,
                                  int64_t C) {
  const int64_t cw = (C + 3) / 4, kb = (C + 127) / 128;
  SY_GRID_LOOP(i, n * (cw + kb)) {
    const int64_t r = i / (cw + kb), w = i % (cw + kb);
    const uint32_t word = packed[r * W + w];
    if (w < cw) {
      for (int j = 0; j < 4; ++j)
        if (4 * w + j < C) q[r * C + 4 * w + j] = static_cast<uint8_t>(word >> (8 * j));
    } else {
      sinv[(w - cw) * ld + r] = __uint_as_float(word);
    }
  }
}
__global__ void fp8_decode_rows_kernel(float* x, const uint32_t* packed, int64_t W, int64_t n, int64_t C, bool e4) {
  const int64_t cw = (C + 3) / 4;
  SY_GRID_LOOP(i, n * C) {
    const int64_t r = i / C, k = i % C;
    const uint32_t* row = packed + r * W;
    const uint8_t code = static_cast<uint8_t>(row[k / 4] >> (8 * (k % 4)));
    x[i] = math::fp8_value(code, e4) * __uint_as_float(row[cw + k / 128]);
  }
}
__global__ void fp8_dequantize_kernel(float* x, const uint8_t* q, const float* sinv, int64_t ld,
                                      int64_t rows_per_scale, int64_t rows, int64_t cols, bool e4) {
  SY_GRID_LOOP(i, rows * cols) {
    const int64_t r = i / cols, k = i % cols;
    x[i] = math::fp8_value(q[i], e4) * sinv[(k / 128) * ld + r / rows_per_scale];
  }
}

__global__ void embedding_fwd_kernel(float* out, const int32_t* tok, const float* wte, int64_t N, int64_t C) {
  SY_GRID_LOOP(i, N * C) out[i] = wte[int64_t{tok[i / C]} * C + i % C];
}
__global__ void embedding_bwd_kernel(float* dwte, const float* dout, const int32_t* tok, int64_t N, int64_t C) {
  SY_GRID_LOOP(i, N * C) atomicAdd(dwte + int64_t{tok[i / C]} * C + i % C, dout[i]);
}

__global__ void swiglu_fwd_kernel(float* out, const float* inp, int64_t N, int64_t F) {
  SY_GRID_LOOP(i, N * F) {
    const int64_t n = i / F, f = i % F;
    out[i] = math::swiglu(inp[n * 2 * F + f], inp[n * 2 * F + F + f]);
  }
}
__global__ void swiglu_bwd_kernel(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F) {
  SY_GRID_LOOP(i, N * F) {
    const int64_t n = i / F, f = i % F;
    math::swiglu_grad(inp[n * 2 * F + f], inp[n * 2 * F + F + f], dout[i], dinp + n * 2 * F + f,
                      dinp + n * 2 * F + F + f);
  }
}

__global__ void rope_table_kernel(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta) {
  const int64_t half = D / 2;
  SY_GRID_LOOP(k, T * half) {
    const int64_t t = k / half, i = k % half;
    const double angle = static_cast<double>(t) / pow(theta, static_cast<double>(2 * i) / static_cast<double>(D));
    cos_t[k] = static_cast<float>(cos(angle));
    sin_t[k] = static_cast<float>(sin(angle));
  }
}
__global__ void rope_kernel(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads,
                            int64_t D, int64_t stride, float sign) {
  const int64_t half = D / 2;
  SY_GRID_LOOP(k, N * heads * half) {
    const int64_t n = k / (heads * half), h = (k / half) % heads, i = k % half, t = n % T;
    float* v = x + n * stride + h * D;
    math::rope_pair(v + i, v + i + half, cos_t[t * half + i], sin_t[t * half + i], sign);
  }
}

// Squared sums of runs (the gradient norm's terms): block (b, r) sums a
// grid-stride share of run r in double and writes partial[r * gridDim.x + b];
// the host adds a run's partials in order (deterministic).
__global__ void sum_squares_kernel(double* partial, const float* x, const int64_t* offsets, const int64_t* counts) {
  const int64_t r = blockIdx.y, n = counts[r];
  const float* g = x + offsets[r];
  double s = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = g[i];
    s += v * v;
  }
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[r * gridDim.x + blockIdx.x] = sh[0];
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, math::AdamWConsts k) {
  SY_GRID_LOOP(i, n) math::adamw(p + i, g[i], m + i, v + i, k);
}
__global__ void adamw_bf16_kernel(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n,
                                  math::AdamWConsts k) {
  SY_GRID_LOOP(i, n) {
    float mi = math::bf16_value(m[i]), vi = math::bf16_value(v[i]);
    math::adamw(p + i, g[i], &mi, &vi, k);
    m[i] = math::bf16_round(mi);
    v[i] = math::bf16_round(vi);
  }
}

// ---- rows: one block per row, a shared-memory tree reduction ---------------
__device__ float block_sum(float x, float* sh) {
  sh[threadIdx.x] = x;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}
__device__ float block_max(float x, float* sh) {
  sh[threadIdx.x] = x;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}

__global__ void rmsnorm_fwd_kernel(float* out, float* rstd, const float* inp, const float* w, int64_t C, float eps) {
  __shared__ float sh[kThreads];
  const float* x = inp + blockIdx.x * C;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += x[c] * x[c];
  const float r = 1.f / sqrtf(block_sum(ss, sh) / static_cast<float>(C) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[blockIdx.x * C + c] = x[c] * r * w[c];
}
__global__ void rmsnorm_bwd_kernel(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                                   const float* rstd, int64_t C) {
  __shared__ float sh[kThreads];
  const float* x = inp + blockIdx.x * C;
  const float* dy = dout + blockIdx.x * C;
  const float r = rstd[blockIdx.x];
  float dot = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += w[c] * dy[c] * x[c];
  dot = block_sum(dot, sh);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    dinp[blockIdx.x * C + c] += r * w[c] * dy[c] - r * r * r / static_cast<float>(C) * dot * x[c];
    atomicAdd(dw + c, dy[c] * x[c] * r);
  }
}

__global__ void cross_entropy_kernel(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                     int64_t V, float dscale) {
  __shared__ float sh[kThreads];
  const float* z = logits + blockIdx.x * V;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, z[v]);
  m = block_max(m, sh);
  float s = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += expf(z[v] - m);
  s = block_sum(s, sh);
  const int32_t t = targets[blockIdx.x];
  const float zt = z[t];  // read before dlogits may overwrite it in place
  __syncthreads();
  if (threadIdx.x == 0) losses[blockIdx.x] = m + logf(s) - zt;
  if (!dlogits) return;
  float* d = dlogits + blockIdx.x * V;
  const float inv = 1.f / s;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) d[v] = expf(z[v] - m) * inv * dscale - (v == t ? dscale : 0.f);
}

// ---- attention: one thread per (batch, head, query), online softmax --------
// (the forward runs tiled, kernels/cuda/attention_cuda.h; this simple one is
// kept as its reference: attention_forward_simple)

__global__ void attention_fwd_kernel(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                                     int64_t Hkv, int64_t D) {
  const int64_t R = (H + 2 * Hkv) * D, group = H / Hkv;
  const float scale = 1.f / sqrtf(static_cast<float>(D));
  SY_GRID_LOOP(k, B * H * T) {
    const int64_t b = k / (H * T), h = (k / T) % H, i = k % T, g = h / group;
    const float* q = qkv + (b * T + i) * R + h * D;
    float acc[kMaxHead];
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
    math::OnlineSoftmax sm;
    for (int64_t j = 0; j <= i; ++j) {
      const float* kk = qkv + (b * T + j) * R + (H + g) * D;
      const float* vv = qkv + (b * T + j) * R + (H + Hkv + g) * D;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += q[d] * kk[d];
      float rescale, w;
      sm.add(s * scale, &rescale, &w);
      for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * rescale + w * vv[d];
    }
    float* o = out + (b * T + i) * H * D + h * D;
    for (int64_t d = 0; d < D; ++d) o[d] = acc[d] / sm.l;
    lse[(b * H + h) * T + i] = sm.lse();
  }
}

__global__ void attention_bwd_kernel(float* dqkv, const float* dout, const float* qkv, const float* out,
                                     const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) {
  const int64_t R = (H + 2 * Hkv) * D, group = H / Hkv;
  const float scale = 1.f / sqrtf(static_cast<float>(D));
  SY_GRID_LOOP(k, B * H * T) {
    const int64_t b = k / (H * T), h = (k / T) % H, i = k % T, g = h / group;
    const float* q = qkv + (b * T + i) * R + h * D;
    const float* o = out + (b * T + i) * H * D + h * D;
    const float* dO = dout + (b * T + i) * H * D + h * D;
    const float L = lse[(b * H + h) * T + i];
    float delta = 0.f;
    for (int64_t d = 0; d < D; ++d) delta += dO[d] * o[d];
    float* dq = dqkv + (b * T + i) * R + h * D;
    for (int64_t j = 0; j <= i; ++j) {
      const float* kk = qkv + (b * T + j) * R + (H + g) * D;
      const float* vv = qkv + (b * T + j) * R + (H + Hkv + g) * D;
      float s = 0.f, dp = 0.f;
      for (int64_t d = 0; d < D; ++d) s += q[d] * kk[d], dp += dO[d] * vv[d];
      const float p = expf(s * scale - L), ds = p * (dp - delta) * scale;
      float* dk = dqkv + (b * T + j) * R + (H + g) * D;
      float* dv = dqkv + (b * T + j) * R + (H + Hkv + g) * D;
      for (int64_t d = 0; d < D; ++d) {
        dq[d] += ds * kk[d];  // this thread's own query row: no race
        atomicAdd(dk + d, ds * q[d]);
        atomicAdd(dv + d, p * dO[d]);
      }
    }
  }
}

__global__ void attention_cached_kernel(float* out, const float* q, int64_t q_stride, const float* kc, const float* vc,
                                        int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D) {
  const int64_t group = H / Hkv, kv = Hkv * D;
  const float scale = 1.f / sqrtf(static_cast<float>(D));
  SY_GRID_LOOP(k, n * H) {
    const int64_t i = k / H, h = k % H, g = h / group;
    const float* qq = q + i * q_stride + h * D;
    float acc[kMaxHead];
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
    math::OnlineSoftmax sm;
    for (int64_t j = 0; j <= pos0 + i; ++j) {
      const float* kk = kc + j * kv + g * D;
      const float* vv = vc + j * kv + g * D;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qq[d] * kk[d];
      float rescale, w;
      sm.add(s * scale, &rescale, &w);
      for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * rescale + w * vv[d];
    }
    float* o = out + i * H * D + h * D;
    for (int64_t d = 0; d < D; ++d) o[d] = acc[d] / sm.l;
  }
}

// ---- router: one thread per token (E and K are small) -----------------------
__global__ void router_scores_kernel(float* scores, float* probs, const float* logits, int64_t N, int64_t E,
                                     bool softmax) {
  SY_GRID_LOOP(t, N) {
    const float* l = logits + t * E;
    float* s = scores + t * E;
    float* p = probs + t * E;
    if (softmax) {
      float m = l[0], z = 0.f;
      for (int64_t e = 1; e < E; ++e) m = fmaxf(m, l[e]);
      for (int64_t e = 0; e < E; ++e) z += expf(l[e] - m);
      for (int64_t e = 0; e < E; ++e) s[e] = p[e] = expf(l[e] - m) / z;
    } else {
      float z = 0.f;
      for (int64_t e = 0; e < E; ++e) z += (s[e] = math::sigmoid(l[e]));
      for (int64_t e = 0; e < E; ++e) p[e] = s[e] / z;
    }
  }
}

// groups (at most 64, checked by the config): the same rule and float
// arithmetic as the CPU's router_topk (kernels/types.h RouterGroups).
__global__ void router_topk_kernel(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N,
                                   int64_t E, int64_t K, bool renormalize, int64_t G, int64_t limit) {
  SY_GRID_LOOP(t, N) {
    const float* s = scores + t * E;
    const bool grouped = G > 1 && limit > 0 && limit < G;
    const int64_t Eg = grouped ? E / G : E;
    uint64_t keep = ~uint64_t{0};
    if (grouped) {
      keep = 0;
      for (int64_t m = 0; m < limit; ++m) {  // the limit best groups, lower index first on equal scores
        int64_t bg = -1;
        float bv = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          if ((keep >> g) & 1) continue;
          float a = -INFINITY, b = -INFINITY;
          for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e) {
            const float v = s[e] + (bias ? bias[e] : 0.f);
            if (v > a) b = a, a = v;
            else if (v > b) b = v;
          }
          const float gv = Eg == 1 ? a : a + b;
          if (bg < 0 || gv > bv) bg = g, bv = gv;
        }
        keep |= uint64_t{1} << bg;
      }
    }
    float sum = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      int64_t best = -1;
      float best_v = 0.f;
      for (int64_t e = 0; e < E; ++e) {
        if (grouped && !((keep >> (e / Eg)) & 1)) continue;
        bool taken = false;
        for (int64_t q = 0; q < k; ++q) taken |= idx[t * K + q] == e;
        const float v = s[e] + (bias ? bias[e] : 0.f);
        if (!taken && (best < 0 || v > best_v)) best = e, best_v = v;
      }
      idx[t * K + k] = static_cast<int32_t>(best);
      gates[t * K + k] = s[best];
      sum += s[best];
    }
    if (renormalize)
      for (int64_t k = 0; k < K; ++k) gates[t * K + k] /= sum;
  }
}

// scratch: 2 x (N, E) floats (ds, dp per token).
__global__ void router_bwd_kernel(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
                                  const float* scores, const float* probs, const float* daux, float* scratch,
                                  int64_t N, int64_t E, int64_t K, bool softmax, bool renormalize, float inv_n,
                                  float c_entropy, float c_z) {
  SY_GRID_LOOP(t, N) {
    math::router_grad_row(dlogits + t * E, scratch + t * E, scratch + (N + t) * E, scores + t * E, probs + t * E,
                          logits + t * E, idx + t * K, dgates + t * K, daux, E, K, softmax, renormalize, inv_n,
                          c_entropy, c_z);
  }
}

// ---- MoE permutation (contiguous row maps: the device transports' buffers) --
__global__ void gather_kernel(float* dst, const float* x, const int32_t* row_token, int64_t M, int64_t C) {
  SY_GRID_LOOP(i, M * C) dst[i] = x[int64_t{row_token[i / C]} * C + i % C];
}
__global__ void gather_bwd_kernel(float* dx, const float* src, const int32_t* pos, int64_t N, int64_t K, int64_t C) {
  SY_GRID_LOOP(i, N * C) {
    const int64_t t = i / C, c = i % C;
    float acc = dx[i];
    for (int64_t k = 0; k < K; ++k)
      if (pos[t * K + k] >= 0) acc += src[int64_t{pos[t * K + k]} * C + c];
    dx[i] = acc;
  }
}
__global__ void combine_kernel(float* out, const float* y, float* y_copy, const float* gates, const int32_t* pos,
                               int64_t N, int64_t K, int64_t C) {
  SY_GRID_LOOP(i, N * C) {
    const int64_t t = i / C, c = i % C;
    float acc = out[i];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t r = pos[t * K + k];
      if (r < 0) continue;
      acc += gates[t * K + k] * y[r * C + c];
      if (y_copy) y_copy[r * C + c] = y[r * C + c];
    }
    out[i] = acc;
  }
}
__global__ void combine_bwd_rows_kernel(float* dy, const float* dout, const float* gates, const int32_t* pos,
                                        int64_t N, int64_t K, int64_t C) {
  SY_GRID_LOOP(i, N * K * C) {
    const int64_t tk = i / C, c = i % C, r = pos[tk];
    if (r >= 0) dy[r * C + c] = gates[tk] * dout[(tk / K) * C + c];
  }
}
__global__ void combine_bwd_gates_kernel(float* dgates, const float* dout, const float* y, const int32_t* pos,
                                         int64_t N, int64_t K, int64_t C) {
  SY_GRID_LOOP(tk, N * K) {
    const int64_t r = pos[tk], t = tk / K;
    float dot = 0.f;
    if (r >= 0)
      for (int64_t c = 0; c < C; ++c) dot += dout[t * C + c] * y[r * C + c];
    dgates[tk] = dot;
  }
}

}  // namespace sy::cuda::kern
