// The GEMM benchmark's inputs and its check, shared by the device and the
// host (bench/gpu/bench_gemm_cuda.cu) and tested on the CPU
// (tests/unit/bench/test_gemm_check.cpp).
//
// Every input element is a pure function of (seed, row, column): the device
// fills its buffers with it and the host recomputes any row without copying
// anything back. C (M, N) = A (M, K) * B (N, K)^T (B holds weights as
// nn.Linear does), in three kinds:
//   bf16        A, B BF16; FP32 accumulation.
//   fp8_tensor  A, B E4M3 codes, one scale each (SCALAR_32F).
//   fp8_block   A in 1 x 128 tiles (one scale per row per 128 K), B in
//               128 x 128 blocks (DeepSeek-V3's recipe; cuBLASLt's VEC128 x
//               BLK128x128): each 128-K partial sum times its two scales.
// The reference of a sampled C[i][j] is computed in double: every product of
// two BF16 or two E4M3 values is exact in double, and so is each 128-K (or
// whole-K) sum of them (at most 2^17 terms of at most 36 significant bits),
// so the reference carries only the scales' final rounding.
//
// Only C++17 and no library: this header compiles under nvcc and g++ alike,
// so the benchmark builds on a GPU machine with nothing but the CUDA toolkit.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define SYB_HD __host__ __device__
#else
#define SYB_HD
#endif

namespace sybench {

enum class Kind { bf16, fp8_tensor, fp8_block };
inline const char* kind_name(Kind k) {
  return k == Kind::bf16 ? "bf16" : k == Kind::fp8_tensor ? "fp8_tensor" : "fp8_block";
}
constexpr int64_t kBlock = 128;

// splitmix64's finalizer over (seed, row, col): independent, well-mixed bits.
SYB_HD inline uint64_t mix(uint64_t seed, uint64_t r, uint64_t c) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (r + 1) * 0xC2B2AE3D27D4EB4Full ^ (c + 1) * 0x165667B19E3779F9ull;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// A BF16 value: random sign, exponent 2^-3 .. 2^0, random 7-bit mantissa
// (magnitudes in [1/8, 2)); every bit of the significand is exercised.
SYB_HD inline uint16_t bf16_bits(uint64_t seed, uint64_t r, uint64_t c) {
  const uint64_t h = mix(seed, r, c);
  const uint32_t sign = h & 1, exp = 124 + ((h >> 1) & 3), mant = (h >> 3) & 0x7F;
  return static_cast<uint16_t>(sign << 15 | exp << 7 | mant);
}

// An E4M3 code over the whole format (subnormals to +-448), never NaN
// (0x7F / 0xFF become +-448).
SYB_HD inline uint8_t e4m3_code(uint64_t seed, uint64_t r, uint64_t c) {
  uint32_t q = (mix(seed, r, c) >> 8) & 0xFF;
  if ((q & 0x7F) == 0x7F) q -= 1;
  return static_cast<uint8_t>(q);
}

// An inverse scale: (1 + m/256) * 2^(-10..-7), exact in float (host only:
// the benchmark uploads scales, they are few).
inline float scale_inv(uint64_t seed, uint64_t r, uint64_t c) {
  const uint64_t h = mix(seed ^ 0x5CA1Eull, r, c);
  return std::ldexp(1.f + static_cast<float>(h & 0xFF) / 256.f, -10 + static_cast<int>((h >> 8) & 3));
}

inline double bf16_value(uint16_t b) {
  const int e = (b >> 7) & 0xFF, m = b & 0x7F;
  double v = e == 255 ? (m ? NAN : INFINITY) : e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  return (b & 0x8000) ? -v : v;
}

// OCP E4M3 (bias 7, no infinities; 0x7F/0xFF are NaN).
inline double e4m3_value(uint8_t q) {
  const int e = (q >> 3) & 0xF, m = q & 7;
  double v = (q & 0x7F) == 0x7F ? NAN : e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
  return (q & 0x80) ? -v : v;
}

// One GEMM as the benchmark sets it up: A rows are global rows a_row0 + i
// (a grouped GEMM's experts take consecutive row ranges of one A), B is the
// weight (seed_b) of one expert.
struct Problem {
  Kind kind = Kind::bf16;
  int64_t M = 0, N = 0, K = 0;
  uint64_t seed_a = 1, seed_b = 2;
  int64_t a_row0 = 0;
};

// Scales as the GEMM reads them (tensor: (0, 0); A 1x128: (row, kb); B 128x128: (row / 128, kb)).
inline float a_scale_inv(const Problem& p, int64_t i, int64_t kb) {
  if (p.kind == Kind::fp8_tensor) return scale_inv(p.seed_a, 0, 0);
  return scale_inv(p.seed_a, static_cast<uint64_t>(p.a_row0 + i), static_cast<uint64_t>(kb));
}
inline float b_scale_inv(const Problem& p, int64_t j, int64_t kb) {
  if (p.kind == Kind::fp8_tensor) return scale_inv(p.seed_b, 0, 0);
  return scale_inv(p.seed_b, static_cast<uint64_t>(j / kBlock), static_cast<uint64_t>(kb));
}

// Block scales in a device buffer, in one of two layouts (which one
// cuBLASLt reads is what the benchmark's layout probe finds out):
//   outer-major: s[kb * ld + r], ld = rows rounded up to 4 (Switchyard's
//                kernels/cuda/fp8_cuda: VEC128 for A, BLK128x128 for B);
//   k-major:     s[r * kblocks + kb].
// rows = M (A, one scale per row) or ceil(N / 128) (B, one per 128 rows).
enum class ScaleLayout { outer_major, k_major };
inline const char* layout_name(ScaleLayout l) { return l == ScaleLayout::outer_major ? "outer" : "k"; }
inline std::vector<float> block_scales(const Problem& p, bool for_a, ScaleLayout l) {
  const int64_t kb_n = (p.K + kBlock - 1) / kBlock;
  const int64_t rows = for_a ? p.M : (p.N + kBlock - 1) / kBlock;
  const int64_t ld = l == ScaleLayout::outer_major ? (rows + 3) / 4 * 4 : kb_n;
  std::vector<float> s(static_cast<size_t>(l == ScaleLayout::outer_major ? ld * kb_n : rows * kb_n), 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t kb = 0; kb < kb_n; ++kb) {
      const float v = for_a ? a_scale_inv(p, r, kb) : b_scale_inv(p, r * kBlock, kb);
      s[static_cast<size_t>(l == ScaleLayout::outer_major ? kb * ld + r : r * kb_n + kb)] = v;
    }
  return s;
}

struct Ref {
  double value = 0;    // C[i][j]
  double abs_sum = 0;  // sum over k of |a_ik * b_jk| (scaled): what bounds accumulation error
};

// C[i][j] in double from the same inputs the device reads.
inline Ref reference(const Problem& p, int64_t i, int64_t j) {
  Ref r;
  const uint64_t ar = static_cast<uint64_t>(p.a_row0 + i), br = static_cast<uint64_t>(j);
  if (p.kind == Kind::bf16) {
    for (int64_t k = 0; k < p.K; ++k) {
      const double t = bf16_value(bf16_bits(p.seed_a, ar, k)) * bf16_value(bf16_bits(p.seed_b, br, k));
      r.value += t, r.abs_sum += std::fabs(t);
    }
    return r;
  }
  for (int64_t k0 = 0; k0 < p.K; k0 += kBlock) {  // exact per block (see above)
    double s = 0, a = 0;
    for (int64_t k = k0; k < std::min(p.K, k0 + kBlock); ++k) {
      const double t = e4m3_value(e4m3_code(p.seed_a, ar, k)) * e4m3_value(e4m3_code(p.seed_b, br, k));
      s += t, a += std::fabs(t);
    }
    const double sc = double(a_scale_inv(p, i, k0 / kBlock)) * b_scale_inv(p, j, k0 / kBlock);
    r.value += s * sc, r.abs_sum += a * sc;
  }
  return r;
}

enum class Out { f32, bf16 };
inline const char* out_name(Out o) { return o == Out::f32 ? "f32" : "bf16"; }

// How far a device result may lie from the reference, with the reason of each term:
//  - FP32 accumulation in any order: at most (K - 1) additions per sum, each
//    off by at most 2^-23 of the running magnitude (2^-23, not 2^-24: tensor
//    cores may truncate rather than round), bounded by abs_sum;
//  - FP8 tensor cores keep about 14 bits while they accumulate a K-chunk
//    (one 32-deep instruction after another) before cuBLASLt promotes it to
//    FP32 (DeepSeek-V3 report, section 3.3.2): at most 2^-13 of the chunk's
//    abs sum per instruction; 2^-9 allows 16 of them (promotion every 512
//    K, 4x the 128 that block scaling forces);
//  - the output's own rounding: half an ulp of |C| (2^-24 FP32, 2^-9 BF16),
//    taken 2x.
// A wrong index, scale or layout moves C[i][j] by about |C| itself, which for
// random signs is about abs_sum / sqrt(K): far above this for K <= 2^14.
inline double tolerance(const Problem& p, const Ref& r, Out out) {
  const double acc = static_cast<double>(p.K) * std::ldexp(1.0, -23) + (p.kind == Kind::bf16 ? 0 : std::ldexp(1.0, -9));
  const double rnd = out == Out::f32 ? std::ldexp(1.0, -23) : std::ldexp(1.0, -8);
  return acc * r.abs_sum + rnd * std::fabs(r.value) + 1e-30;
}

// The entries checked: the four corners, then positions drawn from the hash.
struct Sample {
  int64_t i, j;
};
inline std::vector<Sample> samples(int64_t M, int64_t N, int count, uint64_t seed) {
  std::vector<Sample> s = {{0, 0}, {0, N - 1}, {M - 1, 0}, {M - 1, N - 1}};
  for (int t = 0; static_cast<int>(s.size()) < count; ++t) {
    const uint64_t h = mix(seed, 0xC0FFEE, static_cast<uint64_t>(t));
    s.push_back({static_cast<int64_t>(h % static_cast<uint64_t>(M)),
                 static_cast<int64_t>((h >> 32) % static_cast<uint64_t>(N))});
  }
  return s;
}

// Device output -> double (BF16 outputs arrive as their bits).
inline double out_value(const void* c, int64_t idx, Out out) {
  if (out == Out::f32) return static_cast<const float*>(c)[idx];
  return bf16_value(static_cast<const uint16_t*>(c)[idx]);
}

struct Verdict {
  int checked = 0, wrong = 0;
  double worst = 0;  // max |got - ref| / tolerance (<= 1 passes)
  int64_t worst_i = -1, worst_j = -1;
  double worst_got = 0, worst_want = 0;
  bool ok() const { return checked > 0 && wrong == 0; }
};

// Checks got[t] (the device's C at samples[t]) against the reference.
inline Verdict verify(const Problem& p, const std::vector<Sample>& s, const std::vector<double>& got, Out out) {
  Verdict v;
  for (size_t t = 0; t < s.size(); ++t) {
    const Ref r = reference(p, s[t].i, s[t].j);
    const double e = std::fabs(got[t] - r.value) / tolerance(p, r, out);
    ++v.checked;
    if (!(e <= 1)) ++v.wrong;  // NaN is wrong
    if (!(e <= v.worst)) {
      v.worst = std::isnan(e) ? INFINITY : e;
      v.worst_i = s[t].i, v.worst_j = s[t].j, v.worst_got = got[t], v.worst_want = r.value;
    }
  }
  return v;
}

}  // namespace sybench
