#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cstring>

#include "core/parallel.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/vmath.h"

namespace sy {

namespace {

struct Dims {
  int64_t B, T, H, Hkv, D, R, group, tiles;
  float scale;
  Dims(int64_t b, int64_t t, int64_t h, int64_t hkv, int64_t d)
      : B(b), T(t), H(h), Hkv(hkv), D(d), R((h + 2 * hkv) * d), group(h / hkv),
        tiles((t + kAttnTile - 1) / kAttnTile), scale(1.f / std::sqrt(static_cast<float>(d))) {}
};

// Scores of query rows [i0, i1) of head h against keys [0, i1), turned into
// probabilities in place: p[r][j] = exp(s - lse) for j <= i0 + r, else 0.
// With `lse_out`, the row log-sum-exps are computed and stored; otherwise
// they are read from `lse_in` (backward recomputation).
void tile_probs(float* p, const float* q, const float* k, const Dims& d, int64_t i0, int64_t i1,
                float* lse_out, const float* lse_in) {
  int64_t rows = i1 - i0, keys = i1;
  sgemm(false, true, rows, keys, d.D, d.scale, q, d.R, k, d.R, 0.f, p, keys);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = p + r * keys;
    int64_t valid = i0 + r + 1;
    float lse;
    if (lse_out) {
      float m = row[0];
      for (int64_t j = 1; j < valid; ++j) m = std::max(m, row[j]);
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < valid; ++j) s += fast_exp(row[j] - m);
      lse = m + std::log(s);
      lse_out[r] = lse;
    } else {
      lse = lse_in[r];
    }
#pragma omp simd
    for (int64_t j = 0; j < valid; ++j) row[j] = fast_exp(row[j] - lse);
    std::fill(row + valid, row + keys, 0.f);
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t D) {
  Dims d(B, T, H, Hkv, D);
  int64_t tasks = B * H * d.tiles;
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(kAttnTile * T));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      // Later tiles have more keys; hand them out first.
      int64_t tile = d.tiles - 1 - task % d.tiles;
      int64_t bh = task / d.tiles, b = bh / H, h = bh % H, g = h / d.group;
      int64_t i0 = tile * kAttnTile, i1 = std::min(T, i0 + kAttnTile);
      const float* base = qkv + b * T * d.R;
      tile_probs(p.data(), base + i0 * d.R + h * D, base + (H + g) * D, d, i0, i1,
                 lse + (b * H + h) * T + i0, nullptr);
      sgemm(false, false, i1 - i0, D, i1, 1.f, p.data(), i1, base + (H + Hkv + g) * D, d.R, 0.f,
            out + (b * T + i0) * H * D + h * D, H * D);
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) {
  Dims d(B, T, H, Hkv, D);
  // One task per (batch, kv head): it owns dk/dv of that kv head and dq of
  // the query heads in its group, so tasks never write the same memory.
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(kAttnTile * T)), dp(static_cast<size_t>(kAttnTile * T));
    std::vector<float> delta(static_cast<size_t>(kAttnTile));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * Hkv; ++task) {
      int64_t b = task / Hkv, g = task % Hkv;
      const float* base = qkv + b * T * d.R;
      const float* k = base + (H + g) * D;
      const float* v = base + (H + Hkv + g) * D;
      float* dbase = dqkv + b * T * d.R;
      float* dk = dbase + (H + g) * D;
      float* dv = dbase + (H + Hkv + g) * D;
      for (int64_t t = 0; t < T; ++t) {
        std::memset(dk + t * d.R, 0, static_cast<size_t>(D) * sizeof(float));
        std::memset(dv + t * d.R, 0, static_cast<size_t>(D) * sizeof(float));
      }
      for (int64_t h = g * d.group; h < (g + 1) * d.group; ++h)
        for (int64_t tile = 0; tile < d.tiles; ++tile) {
          int64_t i0 = tile * kAttnTile, i1 = std::min(T, i0 + kAttnTile), rows = i1 - i0;
          const float* q = base + i0 * d.R + h * D;
          const float* dO = dout + (b * T + i0) * H * D + h * D;
          const float* o = out + (b * T + i0) * H * D + h * D;
          tile_probs(p.data(), q, k, d, i0, i1, nullptr, lse + (b * H + h) * T + i0);
          // dP = dO V^T
          sgemm(false, true, rows, i1, D, 1.f, dO, H * D, v, d.R, 0.f, dp.data(), i1);
          for (int64_t r = 0; r < rows; ++r) {
            float s = 0.f;
            for (int64_t x = 0; x < D; ++x) s += dO[r * H * D + x] * o[r * H * D + x];
            delta[static_cast<size_t>(r)] = s;
          }
          // dS = P * (dP - delta), kept in dp (masked entries have P = 0).
          for (int64_t r = 0; r < rows; ++r) {
            float* ds = dp.data() + r * i1;
            const float* pr = p.data() + r * i1;
            float dl = delta[static_cast<size_t>(r)];
#pragma omp simd
            for (int64_t j = 0; j < i1; ++j) ds[j] = pr[j] * (ds[j] - dl);
          }
          // dQ = scale * dS K ; dK += scale * dS^T Q ; dV += P^T dO
          sgemm(false, false, rows, D, i1, d.scale, dp.data(), i1, k, d.R, 0.f,
                dbase + i0 * d.R + h * D, d.R);
          sgemm(true, false, i1, D, rows, d.scale, dp.data(), i1, q, d.R, 1.f, dk, d.R);
          sgemm(true, false, i1, D, rows, 1.f, p.data(), i1, dO, H * D, 1.f, dv, d.R);
        }
    }
  }
}

void attention_cached(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                      int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D) {
  const int64_t group = H / Hkv, kv_row = Hkv * D;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(pos0 + n));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n * H; ++task) {
      const int64_t i = task / H, h = task % H, kvh = h / group, keys = pos0 + i + 1;
      const float* qi = q + i * q_stride + h * D;
      const float* k = k_cache + kvh * D;
      const float* v = v_cache + kvh * D;
      float m = -INFINITY;
      for (int64_t j = 0; j < keys; ++j) {
        const float* kj = k + j * kv_row;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < D; ++c) s += qi[c] * kj[c];
        p[static_cast<size_t>(j)] = s * scale;
        m = std::max(m, s * scale);
      }
      float sum = 0.f;
      for (int64_t j = 0; j < keys; ++j) sum += (p[static_cast<size_t>(j)] = fast_exp(p[static_cast<size_t>(j)] - m));
      const float inv = 1.f / sum;
      float* o = out + i * H * D + h * D;
      std::fill(o, o + D, 0.f);
      for (int64_t j = 0; j < keys; ++j) {
        const float w = p[static_cast<size_t>(j)] * inv;
        const float* vj = v + j * kv_row;
#pragma omp simd
        for (int64_t c = 0; c < D; ++c) o[c] += w * vj[c];
      }
    }
  }
}

}  // namespace sy
