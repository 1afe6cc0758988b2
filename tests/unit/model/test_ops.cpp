// The model's view of the backend (model/ops.h): the one dispatch point of
// the linear layers' precision with the FP8 recipe state passed explicitly,
// the zero-bubble weight-gradient queue, the backend registry, and arenas on
// a backend's allocator.
#include <array>
#include <tuple>

#include "core/arena.h"
#include "kernels/cpu/cpu_backend.h"
#include "core/dtype.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/linear.h"
#include "model/ops.h"
#include "testing.h"

namespace sy {
namespace {

// Deferring the weight gradients (zero-bubble's B then W) gives the same
// gradients, bit for bit, as computing them in backward: the queue runs the
// same GEMMs in the same order, from its copy of dout (overwritten here
// between backward and run, as the pipeline's buffers are).
TEST(WgradQueue, DeferredWeightGradientsAreBitIdentical) {
  const int64_t N = 37, I = 48, O = 20;
  auto x = test::randn(N * I, 1), w = test::randn(O * I, 2, 0.1f), dy = test::randn(N * O, 3);
  std::vector<float> dx1(N * I), dw1(O * I, 0.5f), dx2(N * I), dw2(O * I, 0.5f);
  const Ops plain{};
  linear_backward(plain, dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), N, I, O);
  linear_backward(plain, dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), N, I, O, true);
  WgradQueue q;
  const Ops deferred = plain.with_defer(&q);
  std::vector<float> dy_live = dy;
  linear_backward(deferred, dx2.data(), dw2.data(), dy_live.data(), x.data(), w.data(), N, I, O);
  linear_backward(deferred, dx2.data(), dw2.data(), dy_live.data(), x.data(), w.data(), N, I, O, true);
  EXPECT_EQ(dx1, dx2);                      // the input gradient at once
  EXPECT_EQ(dw2, std::vector<float>(O * I, 0.5f));  // the weight gradient not yet
  EXPECT_FALSE(q.empty());
  std::fill(dy_live.begin(), dy_live.end(), 1e30f);
  q.run(cpu_backend());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(dw1, dw2);

  // Grouped (experts), with an empty group.
  const std::vector<int64_t> offsets = {0, 10, 10, N};
  std::vector<std::vector<float>> ws = {test::randn(O * I, 4), test::randn(O * I, 5), test::randn(O * I, 6)};
  std::vector<const float*> wp = {ws[0].data(), ws[1].data(), ws[2].data()};
  std::vector<std::vector<float>> g1(3, std::vector<float>(O * I, 0.f)), g2 = g1;
  std::vector<float*> p1 = {g1[0].data(), g1[1].data(), g1[2].data()}, p2 = {g2[0].data(), g2[1].data(), g2[2].data()};
  grouped_backward(plain, dx1.data(), p1.data(), dy.data(), x.data(), wp.data(), offsets.data(), 3, I, O);
  grouped_backward(deferred, dx2.data(), p2.data(), dy.data(), x.data(), wp.data(), offsets.data(), 3, I, O);
  EXPECT_EQ(dx1, dx2);
  q.run(cpu_backend());
  for (int g = 0; g < 3; ++g) EXPECT_EQ(g1[g], g2[g]) << "group " << g;

  // A rank whose experts received no rows has no input buffer (a shared
  // window of zero rows): its backward is a no-op, not an error.
  const std::vector<int64_t> none = {5, 5, 5, 5};
  EXPECT_NO_THROW(grouped_backward(plain, nullptr, p1.data(), nullptr, nullptr, wp.data(), none.data(), 3, I, O));
}

// The FP32 dispatch is the CPU kernels exactly (the backend adds nothing).
TEST(Ops, Fp32LinearThroughTheBackendIsTheKernel) {
  const int64_t N = 33, I = 40, O = 24;
  auto x = test::randn(N * I, 7), w = test::randn(O * I, 8), dy = test::randn(N * O, 9);
  std::vector<float> y1(N * O), y2(N * O), dx1(N * I), dx2(N * I), dw1(O * I, 0.f), dw2(O * I, 0.f);
  linear_forward(y1.data(), x.data(), w.data(), N, I, O);
  sy::linear_backward(dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), N, I, O);
  mm_forward(Ops{}, Fp8Group::mlp, y2.data(), x.data(), w.data(), N, I, O);
  mm_backward(Ops{}, Fp8Group::mlp, dx2.data(), dw2.data(), dy.data(), x.data(), w.data(), N, I, O);
  EXPECT_EQ(y1, y2);
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(dw1, dw2);
  std::vector<float> z(N * O);
  cpu_backend().add(z.data(), y1.data(), dy.data(), N * O, {});
  for (int64_t i = 0; i < N * O; ++i) ASSERT_EQ(z[static_cast<size_t>(i)], y1[static_cast<size_t>(i)] + dy[static_cast<size_t>(i)]);
}

std::vector<float> bf16_copy(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_f32(f32_to_bf16(v[i]));
  return r;
}

// The bf16 recipe: each GEMM of a linear layer is the FP32 GEMM of its two
// operands rounded to BF16 (FP32 accumulation), forward, dgrad and wgrad,
// bit for bit; deferred weight gradients (zero-bubble) are the same bits.
TEST(Bf16, LinearGemmsTakeRoundedOperandsAndDeferExactly) {
  const int64_t N = 45, I = 40, O = 24;
  auto x = test::randn(N * I, 31), w = test::randn(O * I, 32, 0.2f), dy = test::randn(N * O, 33);
  const auto xr = bf16_copy(x), wr = bf16_copy(w), dyr = bf16_copy(dy);
  std::vector<float> want_y(N * O), want_dx(N * I), want_dw(O * I, 0.25f);
  linear_forward(want_y.data(), xr.data(), wr.data(), N, I, O);
  sy::linear_backward(want_dx.data(), want_dw.data(), dyr.data(), xr.data(), wr.data(), N, I, O);
  Ops ops;
  ops.bf16 = true;
  std::vector<float> y(N * O), dx(N * I), dw(O * I, 0.25f), y32(N * O);
  mm_forward(ops, Fp8Group::mlp, y.data(), x.data(), w.data(), N, I, O);
  mm_backward(ops, Fp8Group::mlp, dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, I, O);
  EXPECT_EQ(y, want_y);
  EXPECT_EQ(dx, want_dx);
  EXPECT_EQ(dw, want_dw);
  mm_forward(Ops{}, Fp8Group::mlp, y32.data(), x.data(), w.data(), N, I, O);
  EXPECT_NE(y, y32);  // the operands really were rounded
  EXPECT_LT(test::max_rel_err(y.data(), y32.data(), y.size()), 0.05);

  WgradQueue q;
  std::vector<float> dx2(N * I), dw2(O * I, 0.25f);
  mm_backward(ops.with_defer(&q), Fp8Group::mlp, dx2.data(), dw2.data(), dy.data(), x.data(), w.data(), N, I, O);
  EXPECT_EQ(dx2, want_dx);
  EXPECT_EQ(dw2, std::vector<float>(O * I, 0.25f));
  q.run(cpu_backend());
  EXPECT_EQ(dw2, want_dw);

  // Grouped (experts), rows from offset 7 as a later dispatch chunk's are.
  const std::vector<int64_t> offsets = {7, 20, 20, N};
  std::vector<std::vector<float>> ws = {test::randn(O * I, 34), test::randn(O * I, 35), test::randn(O * I, 36)};
  std::vector<std::vector<float>> wsr = {bf16_copy(ws[0]), bf16_copy(ws[1]), bf16_copy(ws[2])};
  std::vector<const float*> wp = {ws[0].data(), ws[1].data(), ws[2].data()},
                            wpr = {wsr[0].data(), wsr[1].data(), wsr[2].data()};
  std::vector<float> gy(N * O, 0.f), gwant(N * O, 0.f);
  grouped_forward(ops, gy.data(), x.data(), wp.data(), offsets.data(), 3, I, O);
  grouped_linear_forward(gwant.data(), xr.data(), wpr.data(), offsets.data(), 3, I, O);
  EXPECT_EQ(gy, gwant);
  std::vector<std::vector<float>> g1(3, std::vector<float>(O * I, 0.f)), g2 = g1, gref = g1;
  std::vector<float*> p1 = {g1[0].data(), g1[1].data(), g1[2].data()}, p2 = {g2[0].data(), g2[1].data(), g2[2].data()},
                      pr = {gref[0].data(), gref[1].data(), gref[2].data()};
  std::vector<float> gdx(N * I, 0.f), gdx2(N * I, 0.f), gdxr(N * I, 0.f);
  grouped_backward(ops, gdx.data(), p1.data(), dy.data(), x.data(), wp.data(), offsets.data(), 3, I, O);
  grouped_linear_backward(gdxr.data(), pr.data(), dyr.data(), xr.data(), wpr.data(), offsets.data(), 3, I, O);
  grouped_backward(ops.with_defer(&q), gdx2.data(), p2.data(), dy.data(), x.data(), wp.data(), offsets.data(), 3, I, O);
  q.run(cpu_backend());
  EXPECT_EQ(gdx, gdxr);
  EXPECT_EQ(gdx2, gdxr);
  for (int g = 0; g < 3; ++g) EXPECT_EQ(g1[g], gref[g]) << "group " << g;
  for (int g = 0; g < 3; ++g) EXPECT_EQ(g2[g], gref[g]) << "group " << g;
}

TEST(Backend, RegistryHasTheCpuAndNamesAMissingDevice) {
  EXPECT_EQ(&backend(Device::cpu), &cpu_backend());
  EXPECT_EQ(backend(Device::cpu).device(), Device::cpu);
  EXPECT_STREQ(backend(Device::cpu).name(), "cpu");
  try {
    (void)backend(Device::cuda);
    FAIL() << "a CUDA backend without CUDA";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("no cuda backend"), std::string::npos) << e.what();
  }
}

// An arena takes its block from the allocator it is given (a device's) and
// only does pointer arithmetic on it.
TEST(Arena, UsesTheGivenAllocator) {
  struct Counting final : Allocator {
    Device device() const override { return Device::cuda; }
    void* allocate(size_t bytes, size_t align) override {
      ++allocs, held += bytes;
      return host_allocator().allocate(bytes, align);
    }
    void deallocate(void* p, size_t bytes, size_t align) override {
      ++frees, held -= bytes;
      host_allocator().deallocate(p, bytes, align);
    }
    int allocs = 0, frees = 0;
    size_t held = 0;
  } dev;
  {
    Arena a(1000, dev);
    EXPECT_EQ(a.device(), Device::cuda);
    EXPECT_EQ(dev.allocs, 1);
    EXPECT_EQ(dev.held, Arena::round_up(1000));
    float* p = a.alloc<float>(10);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % Arena::kAlign, 0u);
    a.reserve(4096);  // the old block goes back first
    EXPECT_EQ(dev.allocs, 2);
    EXPECT_EQ(dev.frees, 1);
  }
  EXPECT_EQ(dev.frees, 2);
  EXPECT_EQ(dev.held, 0u);
}

TEST(Fp8Linear, ThreeGemmsCloseToFp32AndRoutedOnlyWhenOpsCarryIt) {
  const int64_t N = 200, I = 160, O = 96;
  auto x = test::randn(N * I, 11), w = test::randn(O * I, 12, 0.1f), dy = test::randn(N * O, 13, 1e-3f);
  std::vector<float> y32(N * O), dx32(N * I), dw32(O * I, 0.f);
  linear_forward(y32.data(), x.data(), w.data(), N, I, O);
  linear_backward(dx32.data(), dw32.data(), dy.data(), x.data(), w.data(), N, I, O);
  for (Fp8Scaling sc : {Fp8Scaling::tensor_current, Fp8Scaling::tensor_delayed, Fp8Scaling::block}) {
    SCOPED_TRACE(static_cast<int>(sc));
    Fp8Recipe r;
    r.scaling = sc;
    Fp8Linear fp8(r, cpu_backend());
    const Ops ops{&cpu_backend(), &fp8};
    std::vector<float> y(N * O), dx(N * I), dw(O * I, 0.f), y_plain(N * O);
    mm_forward(ops, Fp8Group::mlp, y.data(), x.data(), w.data(), N, I, O);
    mm_backward(ops, Fp8Group::mlp, dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, I, O);
    mm_forward(Ops{}, Fp8Group::mlp, y_plain.data(), x.data(), w.data(), N, I, O);  // no FP8 state: FP32
    EXPECT_EQ(y_plain, y32);
    // E4M3 forward, E5M2 gradients (2 mantissa bits): a few percent.
    for (auto [got, want, n, tol] : {std::tuple{y.data(), y32.data(), N * O, 0.05},
                                     std::tuple{dx.data(), dx32.data(), N * I, 0.1},
                                     std::tuple{dw.data(), dw32.data(), O * I, 0.1}}) {
      double err = test::max_rel_err(got, want, static_cast<size_t>(n));
      EXPECT_LT(err, tol);
      EXPECT_GT(err, 1e-4);
    }
    std::vector<Fp8GroupStats> st = fp8.take_stats();
    const Fp8GroupStats& g = st[static_cast<size_t>(Fp8Group::mlp)];
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    EXPECT_EQ(g.amax_act, amax);
    EXPECT_EQ(g.saturated, 0);
    EXPECT_EQ(st[static_cast<size_t>(Fp8Group::experts)].amax_act, 0.f);
  }
}

// Keeping a layer's input in FP8 for backward gives the same gradients, bit
// for bit, as quantizing the FP32 input in backward: it is the operand the
// weight-gradient GEMM reads. The FP32 input is overwritten in between, as
// the shared staging buffer is in training.
TEST(Fp8Linear, InputsSavedInFp8GiveTheSameGradientsAndTakeAQuarter) {
  const int64_t N = 300, I = 256, O = 96;
  auto x = test::randn(N * I, 21), w = test::randn(O * I, 22, 0.1f), dy = test::randn(N * O, 23, 1e-3f);
  for (Fp8Scaling sc : {Fp8Scaling::tensor_current, Fp8Scaling::tensor_delayed, Fp8Scaling::block}) {
    SCOPED_TRACE(static_cast<int>(sc));
    Fp8Recipe r;
    r.scaling = sc;
    Fp8Linear fp8(r, cpu_backend());
    const Ops ops{&cpu_backend(), &fp8};
    std::vector<float> y1(N * O), dx1(N * I), dw1(O * I, 0.f), y2(N * O), dx2(N * I), dw2(O * I, 0.f);
    for (int step = 0; step < 2; ++step) {  // the second step has a delayed-scaling history
      mm_forward(ops, Fp8Group::mlp, y1.data(), x.data(), w.data(), N, I, O);
      mm_backward(ops, Fp8Group::mlp, dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), N, I, O);
      Fp8Saved saved;
      std::vector<float> staging = x;
      mm_forward(ops, Fp8Group::mlp, y2.data(), staging.data(), w.data(), N, I, O, &saved);
      std::fill(staging.begin(), staging.end(), 1e30f);  // the next layer's input lands here
      mm_backward(ops, Fp8Group::mlp, dx2.data(), dw2.data(), dy.data(), nullptr, w.data(), N, I, O, false, &saved);
      EXPECT_EQ(y1, y2);
      EXPECT_EQ(dx1, dx2);
      EXPECT_EQ(dw1, dw2);
      // N x I codes plus scales (1 x 128 tiles along N: 3 per column).
      const size_t codes = static_cast<size_t>(N * I);
      EXPECT_GE(saved.bytes(), codes);
      EXPECT_LE(saved.bytes(), codes + static_cast<size_t>(I * 3) * sizeof(float) + 64);
      fp8.take_stats();
    }
  }
}

TEST(Fp8Linear, GroupedInputsSavedInFp8PerSegment) {
  const int64_t I = 128, O = 64;
  const std::vector<int64_t> offsets = {0, 70, 70, 201, 260};  // an empty group
  const int64_t N = offsets.back(), G = 4;
  auto x = test::randn(N * I, 31), dy = test::randn(N * O, 32, 1e-2f);
  std::vector<std::vector<float>> ws;
  std::vector<const float*> w;
  for (int64_t g = 0; g < G; ++g) ws.push_back(test::randn(O * I, 40 + static_cast<uint64_t>(g), 0.1f));
  for (auto& v : ws) w.push_back(v.data());
  Fp8Recipe r;
  Fp8Linear fp8(r, cpu_backend());
  const Ops ops{&cpu_backend(), &fp8};
  std::vector<std::vector<float>> dw1(G, std::vector<float>(O * I, 0.f)), dw2 = dw1;
  std::vector<float*> p1, p2;
  for (int64_t g = 0; g < G; ++g) p1.push_back(dw1[g].data()), p2.push_back(dw2[g].data());
  std::vector<float> y(N * O), dx1(N * I), dx2(N * I);
  grouped_forward(ops, y.data(), x.data(), w.data(), offsets.data(), G, I, O);
  grouped_backward(ops, dx1.data(), p1.data(), dy.data(), x.data(), w.data(), offsets.data(), G, I, O);
  Fp8Saved saved;
  // Two calls (as two dispatch chunks do), groups {0, 1} then {2, 3}.
  grouped_forward(ops, y.data(), x.data(), w.data(), offsets.data(), 2, I, O, &saved);
  grouped_forward(ops, y.data(), x.data(), w.data(), offsets.data() + 2, 2, I, O, &saved);
  grouped_backward(ops, dx2.data(), p2.data(), dy.data(), nullptr, w.data(), offsets.data(), G, I, O, &saved);
  EXPECT_EQ(dx1, dx2);
  for (int64_t g = 0; g < G; ++g) EXPECT_EQ(dw1[g], dw2[g]) << "group " << g;
  EXPECT_LE(saved.bytes(), static_cast<size_t>(N * I) * 5 / 4 + 4096);
  // A row forward did not save is an error, not garbage.
  Fp8Saved other;
  EXPECT_THROW(grouped_backward(ops, dx2.data(), p2.data(), dy.data(), nullptr, w.data(), offsets.data(), G, I, O,
                                       &other),
               std::exception);
}

TEST(Fp8Linear, DelayedScalingUsesTheHistoryAndCountsSaturation) {
  const int64_t N = 8, I = 16, O = 4;
  auto w = test::randn(O * I, 1);
  Fp8Recipe r;
  r.scaling = Fp8Scaling::tensor_delayed;
  r.amax_history = 2;
  Fp8Linear fp8(r, cpu_backend());
  const Ops ops{&cpu_backend(), &fp8};
  std::vector<float> y(N * O);
  auto step = [&](float magnitude) {
    std::vector<float> x(N * I, magnitude);
    mm_forward(ops, Fp8Group::attn_qkv, y.data(), x.data(), w.data(), N, I, O);
    return fp8.take_stats()[static_cast<size_t>(Fp8Group::attn_qkv)];
  };
  EXPECT_EQ(step(1.f).saturated, 0);    // no history: its own amax
  EXPECT_EQ(step(1.f).saturated, 0);    // history amax 1: fits
  EXPECT_EQ(step(4.f).saturated, N * I);  // scale from amax 1: 4 x 448 overflows, every value clamps
  EXPECT_EQ(step(4.f).saturated, 0);    // the history has seen 4 now
  EXPECT_EQ(step(0.5f).saturated, 0);
  EXPECT_EQ(step(0.5f).saturated, 0);   // history {4, 0.5}: still the larger scale-down
  EXPECT_EQ(step(1.f).saturated, N * I);  // history {0.5, 0.5} after two small steps: 1 overflows
}

}  // namespace
}  // namespace sy
