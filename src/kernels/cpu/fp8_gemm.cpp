#include "kernels/cpu/fp8_gemm.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/parallel.h"
#include "kernels/cpu/blas.h"

namespace sy {

namespace {
thread_local std::vector<float> t_buf;
float* scratch(size_t n) {
  if (t_buf.size() < n) t_buf.resize(n);
  return t_buf.data();
}
}  // namespace

namespace {

// out[i] = encode(in[i] * scale) for a contiguous run; counts saturation.
template <Fp8Format F>
int64_t encode_run(uint8_t* out, const float* in, int64_t n, float scale, bool saturate) {
  int64_t sat = 0;
#pragma omp simd reduction(+ : sat)
  for (int64_t i = 0; i < n; ++i) {
    const float v = in[i] * scale;
    sat += fp8_overflows(std::fabs(v), F) ? 1 : 0;
    out[i] = fp8_encode_as<F>(v, saturate);
  }
  return sat;
}

int64_t encode(uint8_t* out, const float* in, int64_t n, float scale, Fp8Format f, bool saturate) {
  return f == Fp8Format::e4m3 ? encode_run<Fp8Format::e4m3>(out, in, n, scale, saturate)
                              : encode_run<Fp8Format::e5m2>(out, in, n, scale, saturate);
}

float run_amax(const float* x, int64_t n) {
  float m = 0.f;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// dst (cols, rows) = src (rows, cols)^T, in 64 x 64 tiles.
void transpose(float* dst, const float* src, int64_t rows, int64_t cols) {
  constexpr int64_t T = 64;
  const int64_t tr = (rows + T - 1) / T, tc = (cols + T - 1) / T;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < tr; ++bi)
    for (int64_t bj = 0; bj < tc; ++bj)
      for (int64_t i = bi * T; i < std::min(rows, (bi + 1) * T); ++i)
        for (int64_t j = bj * T; j < std::min(cols, (bj + 1) * T); ++j) dst[j * rows + i] = src[i * cols + j];
}

thread_local std::vector<float> t_transposed;

}  // namespace

QuantStats quantize_matrix(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                           bool transpose_input, Allocator& mem) {
  if (transpose_input) {  // quantize x^T: transpose into a scratch buffer first (contiguous runs along K)
    if (t_transposed.size() < static_cast<size_t>(rows * cols)) t_transposed.resize(static_cast<size_t>(rows * cols));
    transpose(t_transposed.data(), x, rows, cols);
    return quantize_matrix(out, t_transposed.data(), cols, rows, o, false, mem);
  }
  const int64_t R = rows, K = cols;
  out.shape(R, K, o.fmt, o.mode, mem);
  uint8_t* q = out.q.data();
  float* sinv = out.scale_inv.data();
  const int64_t kb = out.kblocks();
  if (o.mode == ScaleMode::tensor) {
    float amax = 0;
#pragma omp parallel for reduction(max : amax) schedule(static)
    for (int64_t r = 0; r < R; ++r) amax = std::max(amax, run_amax(x + r * K, K));
    const float s = o.scale > 0 ? o.scale : fp8_scale_for(amax, o.fmt, o.pow2);
    sinv[0] = 1.f / s;
    int64_t sat = 0;
#pragma omp parallel for reduction(+ : sat) schedule(static)
    for (int64_t r = 0; r < R; ++r) sat += encode(q + r * K, x + r * K, K, s, o.fmt, o.saturate);
    return {amax, sat};
  }
  const int64_t rb = o.mode == ScaleMode::rows_1x128 ? 1 : kFp8Block;  // rows per scale
  const int64_t groups = (R + rb - 1) / rb, ld = out.scale_ld;
  std::fill(sinv, sinv + out.scale_count(), 0.f);  // the padding rows of each column
  float amax_all = 0;
#pragma omp parallel for collapse(2) reduction(max : amax_all) schedule(static)
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t r1 = std::min(R, (g + 1) * rb), k0 = b * kFp8Block, w = std::min(K, k0 + kFp8Block) - k0;
      float amax = 0;
      for (int64_t r = g * rb; r < r1; ++r) amax = std::max(amax, run_amax(x + r * K + k0, w));
      amax_all = std::max(amax_all, amax);
      const float s = fp8_scale_for(amax, o.fmt, o.pow2);
      sinv[b * ld + g] = 1.f / s;
      for (int64_t r = g * rb; r < r1; ++r) encode(q + r * K + k0, x + r * K + k0, w, s, o.fmt, o.saturate);
    }
  QuantStats st;
  st.amax = amax_all;  // block scales come from each block's own amax: nothing saturates
  return st;
}

void dequantize_matrix(float* out, const Fp8Matrix& m) {
  const float* t = fp8_table(m.fmt);
  parallel_for(m.rows, [&](int64_t r) {
    for (int64_t k = 0; k < m.cols; ++k)
      out[r * m.cols + k] = t[m.code(r, k)] * m.sinv(r, k / kFp8Block);
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
    sgemm(false, true, M, N, K, A.sinv(0, 0) * B.sinv(0, 0), a, K, b, K, accumulate ? 1.f : 0.f, C, N);
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
        const float s = sa * B.sinv(0, 0);
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
          s += double(ta[A.code(m, k)]) * double(tb[B.code(n, k)]);
        c += s * double(A.sinv(m, kb)) * double(B.sinv(n, kb));
      }
      C[m * N + n] = c;
    }
}

}  // namespace sy
