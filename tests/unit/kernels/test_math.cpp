// The per-element arithmetic the CUDA kernels run (kernels/math.h), on the
// host, against the CPU backend's naive references: the GPU's math is
// checked in every CI run, without a GPU.
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cpu/fp8.h"
#include "kernels/math.h"
#include "testing.h"

namespace sy {
namespace {

TEST(DeviceMath, SwigluAndItsGradientAreTheReference) {
  const int64_t N = 7, F = 33;
  auto inp = test::randn(N * 2 * F, 1, 3.f), dout = test::randn(N * F, 2);
  std::vector<float> want(N * F), dwant(N * 2 * F);
  swiglu_forward_ref(want.data(), inp.data(), N, F);
  swiglu_backward_ref(dwant.data(), dout.data(), inp.data(), N, F);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f) {
      const float a = inp[n * 2 * F + f], b = inp[n * 2 * F + F + f];
      EXPECT_EQ(math::swiglu(a, b), want[n * F + f]);
      float da, db;
      math::swiglu_grad(a, b, dout[n * F + f], &da, &db);
      EXPECT_EQ(da, dwant[n * 2 * F + f]);
      EXPECT_EQ(db, dwant[n * 2 * F + F + f]);
    }
}

TEST(DeviceMath, RopePairsAreTheReferenceAndUndoEachOther) {
  const int64_t N = 6, T = 3, heads = 2, D = 8, half = D / 2;
  std::vector<float> cos_t(T * half), sin_t(T * half);
  rope_table(cos_t.data(), sin_t.data(), T, D, 10000.0);
  auto x = test::randn(N * heads * D, 3), want = x, got = x;
  rope_apply_ref(want.data(), cos_t.data(), sin_t.data(), N, T, heads, D, heads * D, 1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        float* v = got.data() + n * heads * D + h * D;
        math::rope_pair(v + i, v + i + half, cos_t[(n % T) * half + i], sin_t[(n % T) * half + i], 1.f);
      }
  EXPECT_EQ(got, want);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        float* v = got.data() + n * heads * D + h * D;
        math::rope_pair(v + i, v + i + half, cos_t[(n % T) * half + i], sin_t[(n % T) * half + i], -1.f);
      }
  // A rotation and its inverse in FP32: back to x within a few ulps.
  EXPECT_LT(test::max_rel_err(got.data(), x.data(), x.size()), 1e-5);
}

// The device AdamW element is the CPU kernel's loop body: bit for bit, with
// FP32 and with BF16 moments.
TEST(DeviceMath, AdamwElementIsTheCpuKernel) {
  const int64_t n = 1000;
  auto p0 = test::randn(n, 4), g = test::randn(n, 5, 1e-2f), m0 = test::randn(n, 6, 1e-3f);
  std::vector<float> v0(n);
  for (int64_t i = 0; i < n; ++i) v0[i] = std::fabs(m0[i]) * 1e-2f;
  AdamWParams a{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.5f};
  std::vector<float> p = p0, m = m0, v = v0;
  adamw_update(p.data(), g.data(), m.data(), v.data(), n, a);
  const double bc1 = 1.0 - std::pow(double(a.beta1), double(a.step)), bc2 = 1.0 - std::pow(double(a.beta2), double(a.step));
  const math::AdamWConsts k{1.f - a.lr * a.weight_decay, a.beta1, a.beta2, a.eps, a.grad_scale,
                            static_cast<float>(a.lr / bc1), static_cast<float>(std::sqrt(bc2))};
  std::vector<float> p2 = p0, m2 = m0, v2 = v0;
  for (int64_t i = 0; i < n; ++i) math::adamw(&p2[i], g[i], &m2[i], &v2[i], k);
  EXPECT_EQ(p, p2);
  EXPECT_EQ(m, m2);
  EXPECT_EQ(v, v2);
  for (float f : {1.f, -3.5f, 1.f + 0x1p-8f, 1e-40f, INFINITY}) EXPECT_EQ(math::bf16_round(f), f32_to_bf16(f));
  EXPECT_TRUE(std::isnan(math::bf16_value(math::bf16_round(NAN))));
}

// The conversion the CUDA BF16 GEMMs apply to both operands (bf16_round, in
// the workspace) against nearest-even rounding computed apart: the two BF16
// neighbours of |x| by truncation, the nearer by exact distances in double, ties
// to the even one. Every exponent and sign; mantissa tails at, just below and
// just above the tie, and pseudo-random ones.
TEST(DeviceMath, Bf16RoundIsNearestEvenOverEveryExponent) {
  auto nearest_even = [](uint32_t u) -> uint16_t {
    // |value| of FP32 bits, exactly, in double (no FP32 subnormal ever
    // touches the FPU, which may flush them); the pattern of infinity reads
    // as 2^128, the value above the largest BF16 if the exponent went on.
    auto value = [](uint32_t b) {
      const uint32_t e = b >> 23, m = b & 0x7fffffu;
      return e == 0 ? std::ldexp(double(m), -149) : std::ldexp(double(m | 0x800000u), int(e) - 150);
    };
    const uint32_t sign = u & 0x80000000u, a = u & 0x7fffffffu;
    const uint32_t lo = a & 0xffff0000u, hi = lo + 0x10000u;
    const double dl = value(a) - value(lo), dh = value(hi) - value(a);
    const uint32_t r = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) & 1u) ? hi : lo;
    return static_cast<uint16_t>((sign | r) >> 16);
  };
  uint64_t state = 0x9e3779b97f4a7c15ull;
  int checked = 0;
  for (uint32_t sign : {0u, 1u})
    for (uint32_t e = 0; e < 255; ++e)
      for (uint32_t top : {0x00u, 0x01u, 0x7eu, 0x7fu})  // the 7 kept mantissa bits: even and odd, both ends
        for (uint32_t tail : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x1234u}) {
          state = state * 6364136223846793005ull + 1442695040888963407ull;
          const uint32_t t = tail == 0x1234u ? static_cast<uint32_t>(state >> 48) : tail;
          const uint32_t u = sign << 31 | e << 23 | top << 16 | t;
          float f;
          std::memcpy(&f, &u, 4);
          ASSERT_EQ(math::bf16_round(f), nearest_even(u)) << std::hex << "bits 0x" << u;
          ++checked;
        }
  EXPECT_EQ(checked, 2 * 255 * 4 * 7);
}

// Attention by the online softmax (one query at a time, no T x T matrix)
// against the reference's softmax over the whole row.
// The FP8 decode the CUDA kernels run per code (packed MoE rows,
// dequantize): every code of both formats, bit for bit the CPU's table
// (NaN where the table has NaN, signed zeros and infinities kept).
TEST(DeviceMath, Fp8ValueIsTheCpuTableForEveryCode) {
  for (Fp8Format f : {Fp8Format::e4m3, Fp8Format::e5m2}) {
    const float* t = fp8_table(f);
    for (int c = 0; c < 256; ++c) {
      const float v = math::fp8_value(static_cast<uint8_t>(c), f == Fp8Format::e4m3);
      if (std::isnan(t[c])) {
        EXPECT_TRUE(std::isnan(v)) << to_string(f) << " code " << c;
      } else {
        EXPECT_EQ(std::bit_cast<uint32_t>(v), std::bit_cast<uint32_t>(t[c])) << to_string(f) << " code " << c;
      }
    }
  }
}

TEST(DeviceMath, OnlineSoftmaxAttentionIsTheReference) {
  const int64_t B = 2, T = 9, H = 4, Hkv = 2, D = 8, R = (H + 2 * Hkv) * D, group = H / Hkv;
  auto qkv = test::randn(B * T * R, 7, 2.f);
  std::vector<float> want(B * T * H * D), lse(B * H * T);
  attention_forward_ref(want.data(), lse.data(), qkv.data(), B, T, H, Hkv, D);
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const float* q = qkv.data() + (b * T + i) * R + h * D;
        std::vector<float> acc(D, 0.f);
        math::OnlineSoftmax sm;
        for (int64_t j = 0; j <= i; ++j) {
          const float* k = qkv.data() + (b * T + j) * R + (H + h / group) * D;
          const float* v = qkv.data() + (b * T + j) * R + (H + Hkv + h / group) * D;
          float s = 0.f;
          for (int64_t d = 0; d < D; ++d) s += q[d] * k[d];
          float rescale, w;
          sm.add(s * scale, &rescale, &w);
          for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * rescale + w * v[d];
        }
        // The same FP32 terms summed in another order (rescaled as the max
        // moves, against two passes): measured at most 9.5e-7 (2 ulps of the
        // largest values, |x| < 8); the limit is 4x that.
        for (int64_t d = 0; d < D; ++d)
          EXPECT_NEAR(acc[d] / sm.l, want[(b * T + i) * H * D + h * D + d], 4e-6) << b << " " << h << " " << i;
        EXPECT_NEAR(sm.lse(), lse[(b * H + h) * T + i], 4e-6);
      }
}

}  // namespace
}  // namespace sy
