#include "kernels/cpu/fp8_gemm.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/parallel.h"
#include "kernels/cpu/blas.h"

namespace sy {

std::string to_string(ScaleMode m) {
  switch (m) {
    case ScaleMode::tensor: return "tensor";
    case ScaleMode::rows_1x128: return "1x128";
    default: return "128x128";
  }
}

float fp8_scale_for(float amax, Fp8Format f, bool pow2) {
  if (!(amax > 0) || !std::isfinite(amax)) return 1.f;
  float s = fp8_max(f) / amax;
  if (!std::isfinite(s)) s = 0x1p126f;  // amax is tiny: the largest sensible scale
  if (pow2) s = std::exp2(std::floor(std::log2(s)));
  return s;
}

namespace {
thread_local std::vector<float> t_buf;
float* scratch(size_t n) {
  if (t_buf.size() < n) t_buf.resize(n);
  return t_buf.data();
}
}  // namespace

QuantStats quantize_matrix(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                           bool transpose) {
  // The logical matrix is (R, K): x itself, or x^T.
  const int64_t R = transpose ? cols : rows, K = transpose ? rows : cols;
  auto at = [&](int64_t r, int64_t k) { return transpose ? x[k * cols + r] : x[r * cols + k]; };
  out.rows = R, out.cols = K, out.fmt = o.fmt, out.mode = o.mode;
  out.q.resize(static_cast<size_t>(R * K));
  const int64_t kb = out.kblocks();
  const float limit = fp8_max(o.fmt);
  QuantStats st;
  if (o.mode == ScaleMode::tensor) {
    float amax = 0;
#pragma omp parallel for reduction(max : amax) schedule(static)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(at(r, k)));
    const float s = o.scale > 0 ? o.scale : fp8_scale_for(amax, o.fmt, o.pow2);
    out.scale_inv.assign(1, 1.f / s);
    int64_t sat = 0;
#pragma omp parallel for reduction(+ : sat) schedule(static)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const float v = at(r, k) * s;
        sat += std::fabs(v) > limit ? 1 : 0;
        out.q[static_cast<size_t>(r * K + k)] = fp8_encode(v, o.fmt, o.saturate);
      }
    return {amax, sat};
  }
  const int64_t rb = o.mode == ScaleMode::rows_1x128 ? 1 : kFp8Block;  // rows per scale
  const int64_t groups = (R + rb - 1) / rb;
  out.scale_inv.assign(static_cast<size_t>(groups * kb), 1.f);
  float amax_all = 0;
#pragma omp parallel for collapse(2) reduction(max : amax_all) schedule(static)
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t r1 = std::min(R, (g + 1) * rb), k0 = b * kFp8Block, k1 = std::min(K, k0 + kFp8Block);
      float amax = 0;
      for (int64_t r = g * rb; r < r1; ++r)
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(at(r, k)));
      amax_all = std::max(amax_all, amax);
      const float s = fp8_scale_for(amax, o.fmt, o.pow2);
      out.scale_inv[static_cast<size_t>(g * kb + b)] = 1.f / s;
      for (int64_t r = g * rb; r < r1; ++r)
        for (int64_t k = k0; k < k1; ++k) out.q[static_cast<size_t>(r * K + k)] = fp8_encode(at(r, k) * s, o.fmt, o.saturate);
    }
  st.amax = amax_all;  // block scales come from each block's amax: nothing saturates
  return st;
}

void dequantize_matrix(float* out, const Fp8Matrix& m) {
  const float* t = fp8_table(m.fmt);
  parallel_for(m.rows, [&](int64_t r) {
    for (int64_t k = 0; k < m.cols; ++k)
      out[r * m.cols + k] = t[m.q[static_cast<size_t>(r * m.cols + k)]] * m.sinv(r, k / kFp8Block);
  });
}

namespace {
// Decodes columns [k0, k1) of m into dst (rows, k1 - k0), unscaled (exact).
void decode_cols(float* dst, const Fp8Matrix& m, int64_t k0, int64_t k1) {
  const float* t = fp8_table(m.fmt);
  const int64_t w = k1 - k0;
  parallel_for(m.rows, [&](int64_t r) {
    const uint8_t* q = m.q.data() + r * m.cols + k0;
    float* d = dst + r * w;
    for (int64_t k = 0; k < w; ++k) d[k] = t[q[k]];
  });
}
}  // namespace

void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate) {
  SY_CHECK(A.cols == B.cols, "fp8_gemm: K differs ({} vs {})", A.cols, B.cols);
  const int64_t M = A.rows, N = B.rows, K = A.cols;
  if (A.mode == ScaleMode::tensor && B.mode == ScaleMode::tensor) {
    float* a = scratch(static_cast<size_t>((M + N) * K));
    float* b = a + M * K;
    decode_cols(a, A, 0, K);
    decode_cols(b, B, 0, K);
    sgemm(false, true, M, N, K, A.scale_inv[0] * B.scale_inv[0], a, K, b, K, accumulate ? 1.f : 0.f, C, N);
    return;
  }
  const int64_t w = std::min(K, kFp8Block);
  float* a = scratch(static_cast<size_t>((M + N) * w + M * N));
  float* b = a + M * w;
  float* part = b + N * w;
  if (!accumulate) std::fill(C, C + M * N, 0.f);
  for (int64_t kb = 0; kb < A.kblocks(); ++kb) {
    const int64_t k0 = kb * kFp8Block, k1 = std::min(K, k0 + kFp8Block);
    decode_cols(a, A, k0, k1);
    decode_cols(b, B, k0, k1);
    sgemm(false, true, M, N, k1 - k0, 1.f, a, k1 - k0, b, k1 - k0, 0.f, part, N);
    // Promotion: this block's FP32 partial sums times their scales, added to C.
    parallel_for(M, [&](int64_t m) {
      const float sa = A.sinv(m, kb);
      const float* p = part + m * N;
      float* c = C + m * N;
      if (B.mode == ScaleMode::tensor) {
        const float s = sa * B.scale_inv[0];
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) c[n] += p[n] * s;
      } else {
        for (int64_t n = 0; n < N; ++n) c[n] += p[n] * (sa * B.sinv(n, kb));
      }
    });
  }
}

void fp8_gemm_ref(double* C, const Fp8Matrix& A, const Fp8Matrix& B) {
  const int64_t M = A.rows, N = B.rows, K = A.cols;
  const float* ta = fp8_table(A.fmt);
  const float* tb = fp8_table(B.fmt);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double c = 0;
      for (int64_t kb = 0; kb * kFp8Block < K; ++kb) {
        double s = 0;
        for (int64_t k = kb * kFp8Block; k < std::min(K, (kb + 1) * kFp8Block); ++k)
          s += double(ta[A.q[static_cast<size_t>(m * K + k)]]) * double(tb[B.q[static_cast<size_t>(n * K + k)]]);
        c += s * double(A.sinv(m, kb)) * double(B.sinv(n, kb));
      }
      C[m * N + n] = c;
    }
}

}  // namespace sy
