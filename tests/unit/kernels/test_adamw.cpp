// AdamW: the fast update against the reference over several steps (one
// clipped), the first step's size, and BF16 moment storage.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/adamw.h"
#include "testing.h"

namespace sy {
namespace {

using test::randn;

// The gradient norm's terms: per run, the double sum of squares, equal to a
// naive double sum within the reordering of ~1e5 double additions (relative
// 1e-12: each is exact to 2^-53 of the running sum), the same whatever the
// thread count (fixed chunks), NaN/Inf kept, empty runs 0.
TEST(SumSquares, RunsMatchANaiveSumAndDoNotDependOnThreads) {
  const auto x = test::randn(250007, 11);
  const std::vector<int64_t> off = {0, 5, 5, 70000, 100},  cnt = {5, 0, 180007, 1, 65536};
  std::vector<double> got(off.size()), again(off.size());
  sum_squares(got.data(), x.data(), off.data(), cnt.data(), static_cast<int64_t>(off.size()));
  for (size_t r = 0; r < off.size(); ++r) {
    double want = 0;
    for (int64_t i = 0; i < cnt[r]; ++i) want += double(x[off[r] + i]) * double(x[off[r] + i]);
    EXPECT_NEAR(got[r], want, 1e-12 * std::max(1.0, want)) << "run " << r;
  }
  EXPECT_EQ(got[1], 0.0);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(threads == 1 ? 2 : 1);
  sum_squares(again.data(), x.data(), off.data(), cnt.data(), static_cast<int64_t>(off.size()));
  omp_set_num_threads(threads);
  EXPECT_EQ(got, again);  // bit for bit
  auto bad = x;
  bad[70000] = std::numeric_limits<float>::infinity();
  sum_squares(again.data(), bad.data(), off.data(), cnt.data(), static_cast<int64_t>(off.size()));
  EXPECT_FALSE(std::isfinite(again[3]));
  EXPECT_FALSE(std::isfinite(again[2]));
  EXPECT_TRUE(std::isfinite(again[4]));
}

TEST(AdamW, FastMatchesReferenceOverSteps) {
  int64_t n = 1000;
  auto p = randn(n, 1), pr = p;
  std::vector<float> m(n, 0.f), v(n, 0.f), mr(n, 0.f), vr(n, 0.f);
  for (int64_t step = 1; step <= 5; ++step) {
    auto g = randn(n, 10 + step);
    AdamWParams a{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step, step == 3 ? 0.25f : 1.f};  // step 3 clipped
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, a);
    adamw_update_ref(pr.data(), g.data(), mr.data(), vr.data(), n, a);
  }
  SY_EXPECT_CLOSE(p.data(), pr.data(), n, 1e-6);
  SY_EXPECT_CLOSE(m.data(), mr.data(), n, 1e-6);
  SY_EXPECT_CLOSE(v.data(), vr.data(), n, 1e-6);
}

TEST(AdamW, FirstStepMovesEachWeightByLr) {
  // With bias correction, step 1 moves every weight by ~lr * sign(g).
  std::vector<float> p(4, 1.f), g = {2.f, -3.f, 0.5f, -0.01f}, m(4, 0.f), v(4, 0.f);
  adamw_update(p.data(), g.data(), m.data(), v.data(), 4, {0.1f, 0.9f, 0.999f, 1e-12f, 0.f, 1});
  EXPECT_NEAR(p[0], 0.9f, 1e-6);
  EXPECT_NEAR(p[1], 1.1f, 1e-6);
  EXPECT_NEAR(p[2], 0.9f, 1e-6);
  EXPECT_NEAR(p[3], 1.1f, 1e-5);
}

}  // namespace

// BF16 rounding is to nearest even with NaN kept, and the BF16-moment AdamW
// equals the FP32 one step by step when the FP32 one rounds its moments the
// same way (a reference written out here), and stays close to plain FP32.
TEST(AdamWBf16, RoundsToNearestEvenAndTracksFp32) {
  EXPECT_EQ(f32_to_bf16(1.f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.f + 0x1p-8f)), 1.f);               // tie -> even (down)
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.f + 3 * 0x1p-8f)), 1.f + 0x1p-6f);  // tie -> even (up)
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.f + 0x1p-8f + 0x1p-20f)), 1.f + 0x1p-7f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-std::numeric_limits<float>::infinity())),
            -std::numeric_limits<float>::infinity());
  const int64_t n = 5000;
  auto p0 = test::randn(n, 1), g = test::randn(n, 2);
  std::vector<float> p16 = p0, p32 = p0, pref = p0, m32(n, 0.f), v32(n, 0.f), mref(n, 0.f), vref(n, 0.f);
  std::vector<uint16_t> m16(n, 0), v16(n, 0);
  for (int64_t step = 1; step <= 20; ++step) {
    AdamWParams a{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.5f};
    adamw_update_bf16(p16.data(), g.data(), m16.data(), v16.data(), n, a);
    adamw_update(p32.data(), g.data(), m32.data(), v32.data(), n, a);
    adamw_update(pref.data(), g.data(), mref.data(), vref.data(), n, a);
    for (int64_t i = 0; i < n; ++i) {
      mref[i] = bf16_to_f32(f32_to_bf16(mref[i]));
      vref[i] = bf16_to_f32(f32_to_bf16(vref[i]));
    }
  }
  EXPECT_EQ(p16, pref);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(bf16_to_f32(m16[i]), mref[i]);
    ASSERT_NEAR(p16[i], p32[i], 2e-4f) << i;  // 20 steps of lr 1e-3: within a fraction of one step
  }
}

}  // namespace sy
