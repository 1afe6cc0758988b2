// Every op of the CUDA backend against the CPU backend on random inputs and
// odd shapes (label gpu). Without a GPU every test skips, saying why.
//
// Tolerances (one table): FP32 ops whose GPU kernel sums the same terms in
// another order (cuBLAS GEMMs, row reductions, atomics) agree to a relative
// 1e-4 of the largest value (FP32 GEMMs over K <= 512 with TF32 off);
// elementwise ops whose math is kernels/math.h on both sides agree to 1e-6
// (expf on the device is within 2 ulps of the host's). BF16 GEMMs (the bf16
// recipe) against the CPU's exact emulation: kReduceTol too, since products
// of BF16 values are exact in FP32 and in TF32, so only the FP32 summation
// differs; with tensor cores that may truncate in the accumulator the error
// is at most about K 2^-23 sum|a b|, for K <= 96 and unit normal entries
// (sum|a b| ~ 0.64 K, max|C| ~ 3 sqrt(K)) about 2.5e-5 of the largest value.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/fp8_cuda.h"
#include "testing.h"

namespace sy {
namespace {

constexpr double kReduceTol = 1e-4;   // summation order differs
constexpr double kElementTol = 1e-6;  // the same formula, device libm

const Backend* gpu(std::string* why) { return cuda::backend_or_null(why); }

#define SY_NEED_GPU()                      \
  std::string why_;                        \
  const Backend* G = gpu(&why_);           \
  if (!G) GTEST_SKIP() << "no GPU: " << why_; \
  const Backend& C = cpu_backend()

// A device copy of a host vector, freed with the object.
template <class T>
struct Dev {
  const Backend& be;
  size_t n;
  T* p;
  Dev(const Backend& b, const std::vector<T>& h) : be(b), n(h.size()) {
    p = static_cast<T*>(be.allocator().allocate(std::max<size_t>(n, 1) * sizeof(T), 256));
    be.copy(p, h.data(), n * sizeof(T), {});
  }
  ~Dev() { be.allocator().deallocate(p, n * sizeof(T), 256); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    be.copy(h.data(), p, n * sizeof(T), {});
    be.synchronize({});
    return h;
  }
};

double rel_to_max(const std::vector<float>& got, const std::vector<float>& want) {
  double m = 1e-30, e = 0;
  for (size_t i = 0; i < want.size(); ++i) m = std::max(m, std::fabs(double(want[i])));
  for (size_t i = 0; i < want.size(); ++i) e = std::max(e, std::fabs(double(got[i]) - want[i]));
  return e / m;
}

TEST(CudaBackend, GemmAllTransposes) {
  SY_NEED_GPU();
  const int64_t M = 37, N = 29, K = 61;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      auto A = test::randn(M * K, 1), B = test::randn(K * N, 2), Cm = test::randn(M * N, 3);
      std::vector<float> want = Cm;
      C.gemm(ta, tb, M, N, K, 0.7f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.3f, want.data(), N, {});
      Dev<float> a(*G, A), b(*G, B), c(*G, Cm);
      G->gemm(ta, tb, M, N, K, 0.7f, a.p, ta ? M : K, b.p, tb ? K : N, 0.3f, c.p, N, {});
      EXPECT_LT(rel_to_max(c.host(), want), kReduceTol) << ta << tb;
    }
}

// FP32 GEMMs must not round their inputs to TF32 (10 significand bits): with
// A = 1 + 2^-12 (a TF32 rounds it to 1) the product of TF32 inputs is off by
// 2^-12 = 2.4e-4 relative, FP32's by about K 2^-24 = 1.5e-5.
TEST(CudaBackend, Fp32GemmIsNotTf32) {
  SY_NEED_GPU();
  const int64_t M = 128, N = 128, K = 256;
  std::vector<float> A(M * K, 1.f + 1.f / 4096.f), B(K * N, 1.f), Cm(M * N, 0.f), want = Cm;
  C.gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, want.data(), N, {});
  Dev<float> a(*G, A), b(*G, B), c(*G, Cm);
  G->gemm(false, false, M, N, K, 1.f, a.p, K, b.p, N, 0.f, c.p, N, {});
  EXPECT_LT(rel_to_max(c.host(), want), 2e-5);  // K 2^-24 = 1.5e-5; TF32 would give 2.4e-4
  G->linear_forward(c.p, a.p, b.p, M, K, N, {});  // B read as W (N, K): all ones either way
  EXPECT_LT(rel_to_max(c.host(), want), 2e-5);
}

// The bf16 recipe's linears against the CPU's emulation (round + FP32 GEMM);
// the CPU's BF16 and FP32 results differ by far more than the tolerance, so
// a GPU that skipped the rounding would fail.
TEST(CudaBackend, Bf16LinearsMatchTheCpuEmulation) {
  SY_NEED_GPU();
  for (auto [N, I, O] : {std::array<int64_t, 3>{37, 53, 29}, std::array<int64_t, 3>{64, 96, 48}}) {
    auto x = test::randn(N * I, 60), w = test::randn(O * I, 61), dy = test::randn(N * O, 62);
    auto dx0 = test::randn(N * I, 63), dw0 = test::randn(O * I, 64);
    std::vector<float> y(N * O), y32(N * O), dx = dx0, dxa = dx0, dw = dw0;
    C.linear_forward_bf16(y.data(), x.data(), w.data(), N, I, O, {});
    C.linear_forward(y32.data(), x.data(), w.data(), N, I, O, {});
    ASSERT_GT(rel_to_max(y32, y), 10 * kReduceTol) << "BF16 and FP32 too close for the test to tell them apart";
    C.linear_dgrad_bf16(dx.data(), dy.data(), w.data(), N, I, O, false, {});
    C.linear_dgrad_bf16(dxa.data(), dy.data(), w.data(), N, I, O, true, {});
    C.linear_wgrad_bf16(dw.data(), dy.data(), x.data(), N, I, O, {});
    Dev<float> gx(*G, x), gw(*G, w), gdy(*G, dy), gy(*G, std::vector<float>(N * O)), gdx(*G, dx0), gdxa(*G, dx0),
        gdw(*G, dw0);
    G->linear_forward_bf16(gy.p, gx.p, gw.p, N, I, O, {});
    G->linear_dgrad_bf16(gdx.p, gdy.p, gw.p, N, I, O, false, {});
    G->linear_dgrad_bf16(gdxa.p, gdy.p, gw.p, N, I, O, true, {});
    G->linear_wgrad_bf16(gdw.p, gdy.p, gx.p, N, I, O, {});
    EXPECT_LT(rel_to_max(gy.host(), y), kReduceTol) << N << "x" << I << "x" << O;
    EXPECT_LT(rel_to_max(gdx.host(), dx), kReduceTol) << N << "x" << I << "x" << O;
    EXPECT_LT(rel_to_max(gdxa.host(), dxa), kReduceTol) << N << "x" << I << "x" << O;
    EXPECT_LT(rel_to_max(gdw.host(), dw), kReduceTol) << N << "x" << I << "x" << O;
  }
}

// Grouped linears (one cuBLAS grouped GEMM) against the CPU's, FP32 and BF16:
// odd widths (unaligned rows: the BF16 path's plain FP32 compute), widths of
// multiples of 4 (aligned: its TF32 tensor-core compute), empty groups first,
// inside and last, rows before offsets[0] untouched, and more groups than
// one launch's pointer chunk (128).
TEST(CudaBackend, GroupedLinearsMatchTheCpuWithEmptyGroups) {
  SY_NEED_GPU();
  struct Case {
    int64_t I, O;
    std::vector<int64_t> offsets;
  };
  std::vector<Case> cases = {{22, 31, {3, 3, 17, 17, 40, 61, 61}}, {64, 48, {4, 4, 36, 37, 37, 90, 90}}};
  Case many{12, 9, {0}};
  for (int g = 0; g < 131; ++g) many.offsets.push_back(many.offsets.back() + (g % 3 == 1 ? 0 : 1 + g % 4));
  cases.push_back(many);
  for (const Case& cs : cases) {
    const int64_t I = cs.I, O = cs.O, G2 = static_cast<int64_t>(cs.offsets.size()) - 1, N = cs.offsets.back();
    const int64_t* off = cs.offsets.data();
    auto x = test::randn(N * I, 70), dy = test::randn(N * O, 71);
    std::vector<std::vector<float>> w, dw0;
    std::vector<std::unique_ptr<Dev<float>>> gw, gdw;
    std::vector<const float*> wp, gwp;
    for (int64_t g = 0; g < G2; ++g) {
      w.push_back(test::randn(O * I, 100 + static_cast<uint64_t>(g), 0.3f));
      dw0.push_back(test::randn(O * I, 400 + static_cast<uint64_t>(g)));
      gw.push_back(std::make_unique<Dev<float>>(*G, w.back()));
      wp.push_back(w.back().data()), gwp.push_back(gw.back()->p);
    }
    for (bool bf16 : {false, true}) {
      std::vector<float> y(N * O, 5.f), dx(N * I, 5.f);
      std::vector<std::vector<float>> dw = dw0;
      std::vector<float*> dwp, gdwp;
      gdw.clear();
      for (int64_t g = 0; g < G2; ++g) {
        dwp.push_back(dw[g].data());
        gdw.push_back(std::make_unique<Dev<float>>(*G, dw0[g]));
        gdwp.push_back(gdw.back()->p);
      }
      Dev<float> gx(*G, x), gdy(*G, dy), gy(*G, y), gdx(*G, dx);
      if (bf16) {
        C.grouped_linear_forward_bf16(y.data(), x.data(), wp.data(), off, G2, I, O, {});
        C.grouped_linear_dgrad_bf16(dx.data(), dy.data(), wp.data(), off, G2, I, O, {});
        C.grouped_linear_wgrad_bf16(dwp.data(), dy.data(), x.data(), off, G2, I, O, {});
        G->grouped_linear_forward_bf16(gy.p, gx.p, gwp.data(), off, G2, I, O, {});
        G->grouped_linear_dgrad_bf16(gdx.p, gdy.p, gwp.data(), off, G2, I, O, {});
        G->grouped_linear_wgrad_bf16(gdwp.data(), gdy.p, gx.p, off, G2, I, O, {});
      } else {
        C.grouped_linear_forward(y.data(), x.data(), wp.data(), off, G2, I, O, {});
        C.grouped_linear_dgrad(dx.data(), dy.data(), wp.data(), off, G2, I, O, {});
        C.grouped_linear_wgrad(dwp.data(), dy.data(), x.data(), off, G2, I, O, {});
        G->grouped_linear_forward(gy.p, gx.p, gwp.data(), off, G2, I, O, {});
        G->grouped_linear_dgrad(gdx.p, gdy.p, gwp.data(), off, G2, I, O, {});
        G->grouped_linear_wgrad(gdwp.data(), gdy.p, gx.p, off, G2, I, O, {});
      }
      const std::string what = (bf16 ? "bf16 " : "fp32 ") + std::to_string(I) + "x" + std::to_string(O);
      const auto hy = gy.host(), hdx = gdx.host();
      EXPECT_LT(rel_to_max(hy, y), kReduceTol) << what;
      EXPECT_LT(rel_to_max(hdx, dx), kReduceTol) << what;
      if (off[0] > 0) {
        EXPECT_EQ(hy[0], 5.f) << what << ": a row before offsets[0] was written";
      }
      for (int64_t g = 0; g < G2; ++g) {
        if (off[g + 1] == off[g]) {
          EXPECT_EQ(gdw[g]->host(), dw0[g]) << what << ": empty group " << g << "'s dW changed";
        } else {
          EXPECT_LT(rel_to_max(gdw[g]->host(), dw[g]), kReduceTol) << what << " group " << g;
        }
      }
    }
  }
}

TEST(CudaBackend, ElementwiseOps) {
  SY_NEED_GPU();
  const int64_t N = 45, F = 77, C2 = 2 * F;
  auto inp = test::randn(N * C2, 4, 2.f), dout = test::randn(N * F, 5);
  std::vector<float> out(N * F), din(N * C2);
  C.swiglu_forward(out.data(), inp.data(), N, F, {});
  C.swiglu_backward(din.data(), dout.data(), inp.data(), N, F, {});
  Dev<float> di(*G, inp), dd(*G, dout), go(*G, out), gd(*G, din);
  G->swiglu_forward(go.p, di.p, N, F, {});
  G->swiglu_backward(gd.p, dd.p, di.p, N, F, {});
  EXPECT_LT(rel_to_max(go.host(), out), kElementTol);
  EXPECT_LT(rel_to_max(gd.host(), din), kElementTol);

  std::vector<float> z(N * F);
  C.add(z.data(), out.data(), dout.data(), N * F, {});
  Dev<float> gz(*G, z);
  G->add(gz.p, go.p, dd.p, N * F, {});
  EXPECT_LT(rel_to_max(gz.host(), z), kElementTol);
}

// Packed MoE rows (BF16, FP8 codes + 1 x 128 scales) and FP8 matrices: the
// same bytes as the CPU's, bit for bit (no arithmetic but the decode, whose
// product of two floats is exact-rounded on both).
TEST(CudaBackend, PackedRowsAndFp8MatricesAreTheCpuBytes) {
  SY_NEED_GPU();
  const int64_t n = 9;
  for (int64_t Cw : {300, 5, 257}) {
    SCOPED_TRACE(Cw);
    auto x = test::randn(static_cast<size_t>(n * Cw), 21, 3.f);
    for (int64_t k = 0; k < Cw; ++k) x[static_cast<size_t>(3 * Cw + k)] = 0.f;  // an all-zero row
    Dev<float> dx(*G, x);
    const int64_t Wb = bf16_row_words(Cw) + 1;  // a spare word a row: its padding must be written too
    std::vector<float> hb(static_cast<size_t>(n * Wb), -1.f), back(x.size());
    C.pack_bf16_rows(hb.data(), Wb, x.data(), n, Cw, {});
    C.unpack_bf16_rows(back.data(), hb.data(), Wb, n, Cw, {});
    Dev<float> db(*G, std::vector<float>(hb.size(), -1.f)), dback(*G, back);
    G->pack_bf16_rows(db.p, Wb, dx.p, n, Cw, {});
    G->unpack_bf16_rows(dback.p, db.p, Wb, n, Cw, {});
    const auto gb = db.host(), gback = dback.host();
    EXPECT_EQ(0, std::memcmp(gb.data(), hb.data(), hb.size() * sizeof(float))) << "bf16 packed";
    EXPECT_EQ(0, std::memcmp(gback.data(), back.data(), back.size() * sizeof(float))) << "bf16 unpacked";

    for (Fp8Format fmt : {Fp8Format::e4m3, Fp8Format::e5m2}) {
      SCOPED_TRACE(to_string(fmt));
      const QuantOptions o{fmt, ScaleMode::rows_1x128, false, true, 0};
      const int64_t W = fp8_row_words(Cw) + 1;
      Fp8Matrix hq, gq, hu, gu;
      C.fp8_quantize(hq, x.data(), n, Cw, o, false, {});
      G->fp8_quantize(gq, dx.p, n, Cw, o, false, {});
      std::vector<float> hp(static_cast<size_t>(n * W), -1.f), hdec(x.size()), hdeq(x.size());
      C.fp8_pack_rows(hp.data(), W, hq, {});
      C.fp8_unpack_rows(hu, hp.data(), W, n, Cw, fmt, {});
      C.fp8_decode_rows(hdec.data(), hp.data(), W, n, Cw, fmt, {});
      C.fp8_dequantize(hdeq.data(), hu, {});
      Dev<float> gp(*G, std::vector<float>(hp.size(), -1.f)), gdec(*G, hdec), gdeq(*G, hdeq);
      G->fp8_pack_rows(gp.p, W, gq, {});
      G->fp8_unpack_rows(gu, gp.p, W, n, Cw, fmt, {});
      G->fp8_decode_rows(gdec.p, gp.p, W, n, Cw, fmt, {});
      G->fp8_dequantize(gdeq.p, gu, {});
      G->synchronize({});
      const auto gph = gp.host(), gdech = gdec.host(), gdeqh = gdeq.host();
      EXPECT_EQ(0, std::memcmp(gph.data(), hp.data(), hp.size() * sizeof(float))) << "fp8 packed";
      const Fp8Matrix gu_host = cuda::to_host(gu);
      EXPECT_EQ(test::codes(gu_host), test::codes(hu));
      EXPECT_EQ(test::scales(gu_host), test::scales(hu));
      EXPECT_EQ(0, std::memcmp(gdech.data(), hdec.data(), hdec.size() * sizeof(float))) << "fp8 decoded";
      EXPECT_EQ(0, std::memcmp(gdeqh.data(), hdeq.data(), hdeq.size() * sizeof(float))) << "fp8 dequantized";
      EXPECT_EQ(0, std::memcmp(hdec.data(), hdeq.data(), hdeq.size() * sizeof(float))) << "decode != dequantize";
    }
  }
  // Dequantizing the other modes (tensor, 128 x 128 blocks).
  const int64_t R = 200, K = 300;
  const auto x = test::randn(static_cast<size_t>(R * K), 22, 5.f);
  Dev<float> dx(*G, x);
  for (ScaleMode mode : {ScaleMode::tensor, ScaleMode::blocks_128x128}) {
    SCOPED_TRACE(to_string(mode));
    Fp8Matrix hq, gq;
    C.fp8_quantize(hq, x.data(), R, K, {Fp8Format::e4m3, mode}, false, {});
    G->fp8_quantize(gq, dx.p, R, K, {Fp8Format::e4m3, mode}, false, {});
    std::vector<float> h(x.size());
    C.fp8_dequantize(h.data(), hq, {});
    Dev<float> g(*G, h);
    G->fp8_dequantize(g.p, gq, {});
    const auto gh = g.host();
    EXPECT_EQ(0, std::memcmp(gh.data(), h.data(), h.size() * sizeof(float)));
  }
}

TEST(CudaBackend, NormRopeEmbeddingCrossEntropy) {
  SY_NEED_GPU();
  const int64_t N = 19, Cc = 72, T = 19, H = 3, D = 24, V = 131;
  auto x = test::randn(N * Cc, 6), w = test::randn(Cc, 7), dy = test::randn(N * Cc, 8);
  std::vector<float> y(N * Cc), rstd(N), dx(N * Cc, 0.f), dw(Cc, 0.f);
  C.rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, Cc, 1e-5f, {});
  C.rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, Cc, {});
  Dev<float> gx(*G, x), gw(*G, w), gdy(*G, dy), gy(*G, y), gr(*G, rstd), gdx(*G, std::vector<float>(N * Cc, 0.f)),
      gdw(*G, std::vector<float>(Cc, 0.f));
  G->rmsnorm_forward(gy.p, gr.p, gx.p, gw.p, N, Cc, 1e-5f, {});
  G->rmsnorm_backward(gdx.p, gdw.p, gdy.p, gx.p, gw.p, gr.p, N, Cc, {});
  EXPECT_LT(rel_to_max(gy.host(), y), kReduceTol);
  EXPECT_LT(rel_to_max(gdx.host(), dx), kReduceTol);
  EXPECT_LT(rel_to_max(gdw.host(), dw), kReduceTol);

  std::vector<float> cs(T * D / 2), sn(T * D / 2);
  C.rope_table(cs.data(), sn.data(), T, D, 10000.0, {});
  Dev<float> gc(*G, cs), gs(*G, sn);
  G->rope_table(gc.p, gs.p, T, D, 10000.0, {});
  EXPECT_LT(rel_to_max(gc.host(), cs), kElementTol);
  auto q = test::randn(N * H * D, 9), q2 = q;
  C.rope_forward(q.data(), cs.data(), sn.data(), N, T, H, D, H * D, {});
  Dev<float> gq(*G, q2);
  G->rope_forward(gq.p, gc.p, gs.p, N, T, H, D, H * D, {});
  EXPECT_LT(rel_to_max(gq.host(), q), kElementTol);

  std::vector<int32_t> tok(N);
  for (int64_t i = 0; i < N; ++i) tok[i] = static_cast<int32_t>((i * 37) % V);
  auto wte = test::randn(V * Cc, 10);
  std::vector<float> e(N * Cc), dwte(V * Cc, 0.f);
  C.embedding_forward(e.data(), tok.data(), wte.data(), N, Cc, {});
  C.embedding_backward(dwte.data(), dy.data(), tok.data(), N, Cc, {});
  Dev<int32_t> gt(*G, tok);
  Dev<float> gwte(*G, wte), ge(*G, e), gdwte(*G, std::vector<float>(V * Cc, 0.f));
  G->embedding_forward(ge.p, gt.p, gwte.p, N, Cc, {});
  G->embedding_backward(gdwte.p, gdy.p, gt.p, N, Cc, {});
  EXPECT_EQ(ge.host(), e);
  EXPECT_LT(rel_to_max(gdwte.host(), dwte), kReduceTol);

  auto logits = test::randn(N * V, 11, 3.f);
  std::vector<float> loss(N), dl(N * V);
  C.cross_entropy(loss.data(), dl.data(), logits.data(), tok.data(), N, V, 0.25f, {});
  Dev<float> gl(*G, logits), gloss(*G, loss), gdl(*G, dl);
  G->cross_entropy(gloss.p, gdl.p, gl.p, gt.p, N, V, 0.25f, {});
  EXPECT_LT(rel_to_max(gloss.host(), loss), kReduceTol);
  EXPECT_LT(rel_to_max(gdl.host(), dl), kReduceTol);
}

TEST(CudaBackend, AttentionForwardBackwardAndCached) {
  SY_NEED_GPU();
  const int64_t B = 2, T = 21, H = 4, Hkv = 2, D = 16, R = (H + 2 * Hkv) * D;
  auto qkv = test::randn(B * T * R, 12), dout = test::randn(B * T * H * D, 13);
  std::vector<float> out(B * T * H * D), lse(B * H * T), dqkv(B * T * R);
  C.attention_forward(out.data(), lse.data(), qkv.data(), B, T, H, Hkv, D, {});
  C.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, H, Hkv, D, {});
  Dev<float> g(*G, qkv), gd(*G, dout), go(*G, out), gl(*G, lse), gdq(*G, dqkv);
  G->attention_forward(go.p, gl.p, g.p, B, T, H, Hkv, D, {});
  G->attention_backward(gdq.p, gd.p, g.p, go.p, gl.p, B, T, H, Hkv, D, {});
  EXPECT_LT(rel_to_max(go.host(), out), kReduceTol);
  EXPECT_LT(rel_to_max(gl.host(), lse), kReduceTol);
  EXPECT_LT(rel_to_max(gdq.host(), dqkv), kReduceTol);
}

// The tiled forward the backend runs against the simple kernel and the CPU:
// T not a multiple of the 16-query / 16-key tiles, head sizes below, between
// and at the 32-lane slices (24, 80, 256), grouped-query and plain heads, one
// token. Only the dot products' summation order differs: kReduceTol.
TEST(CudaBackend, TiledAttentionForwardMatchesTheSimpleKernel) {
  SY_NEED_GPU();
  struct Shape {
    int64_t B, T, H, Hkv, D;
  };
  for (const Shape& sh : {Shape{2, 37, 4, 2, 24}, Shape{1, 70, 3, 1, 80}, Shape{1, 33, 2, 2, 256}, Shape{3, 1, 2, 1, 16}}) {
    const int64_t B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D, R = (H + 2 * Hkv) * D;
    auto qkv = test::randn(B * T * R, 80, 1.5f);
    std::vector<float> out(B * T * H * D), lse(B * H * T);
    C.attention_forward(out.data(), lse.data(), qkv.data(), B, T, H, Hkv, D, {});
    Dev<float> g(*G, qkv), tiled(*G, std::vector<float>(out.size(), 9.f)), tl(*G, std::vector<float>(lse.size(), 9.f)),
        simple(*G, out), sl(*G, lse);
    G->attention_forward(tiled.p, tl.p, g.p, B, T, H, Hkv, D, {});
    cuda::attention_forward_simple(simple.p, sl.p, g.p, B, T, H, Hkv, D, {});
    const auto ht = tiled.host(), hl = tl.host();
    const std::string what = "T " + std::to_string(T) + " D " + std::to_string(D);
    EXPECT_LT(rel_to_max(ht, simple.host()), kReduceTol) << what;
    EXPECT_LT(rel_to_max(hl, sl.host()), kReduceTol) << what;
    EXPECT_LT(rel_to_max(ht, out), kReduceTol) << what;
    EXPECT_LT(rel_to_max(hl, lse), kReduceTol) << what;
  }
}

TEST(CudaBackend, RouterAndPermutation) {
  SY_NEED_GPU();
  const int64_t N = 53, E = 12, K = 3, Cc = 40;
  auto logits = test::randn(N * E, 14, 2.f), bias = test::randn(E, 15, 0.1f), dg = test::randn(N * K, 16);
  for (ScoreFn fn : {ScoreFn::softmax, ScoreFn::sigmoid}) {
    std::vector<float> s(N * E), p(N * E), gates(N * K), dl(N * E);
    std::vector<int32_t> idx(N * K);
    C.router_scores(s.data(), p.data(), logits.data(), N, E, fn, {});
    C.router_topk(idx.data(), gates.data(), s.data(), bias.data(), N, E, K, true, {}, {});
    RouterSums sums(E);
    C.router_sums(sums, idx.data(), logits.data(), p.data(), N, E, K, {});
    C.router_backward(dl.data(), dg.data(), idx.data(), logits.data(), s.data(), p.data(), sums, N, N, E, K, fn, true,
                      {0.01f, 0.001f, 0.002f}, {});
    Dev<float> gl(*G, logits), gb(*G, bias), gs(*G, s), gp(*G, p), gg(*G, gates), gdg(*G, dg), gdl(*G, dl);
    Dev<int32_t> gi(*G, idx);
    G->router_scores(gs.p, gp.p, gl.p, N, E, fn, {});
    G->router_topk(gi.p, gg.p, gs.p, gb.p, N, E, K, true, {}, {});
    EXPECT_LT(rel_to_max(gs.host(), s), kElementTol);
    EXPECT_EQ(gi.host(), idx);
    // Group-limited routing (4 groups of 3, at most 2 per token, and 1): the
    // same experts as the CPU from the same scores (same float arithmetic).
    for (int64_t limit : {1, 2}) {
      std::vector<int32_t> gidx(N * K);
      std::vector<float> ggate(N * K);
      C.router_topk(gidx.data(), ggate.data(), s.data(), bias.data(), N, E, K, true, {4, limit}, {});
      Dev<int32_t> di(*G, gidx);
      Dev<float> dg2(*G, ggate), ds(*G, s);
      G->router_topk(di.p, dg2.p, ds.p, gb.p, N, E, K, true, {4, limit}, {});
      EXPECT_EQ(di.host(), gidx) << "limit " << limit;
      EXPECT_NE(gidx, idx) << "limit " << limit << " changed no choice: the case tests nothing";
    }
    RouterSums gsums(E);
    G->router_sums(gsums, gi.p, gl.p, gp.p, N, E, K, {});
    EXPECT_EQ(gsums.counts, sums.counts);
    G->router_backward(gdl.p, gdg.p, gi.p, gl.p, gs.p, gp.p, gsums, N, N, E, K, fn, true, {0.01f, 0.001f, 0.002f}, {});
    EXPECT_LT(rel_to_max(gdl.host(), dl), kReduceTol);
  }
  // Gather, combine and their backward on contiguous rows; a dropped pick (-1).
  auto x = test::randn(N * Cc, 17), dout = test::randn(N * Cc, 18), gates = test::randn(N * K, 19);
  std::vector<int32_t> pos(N * K), row_token;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k) {
      pos[t * K + k] = (t + k) % 7 == 0 ? -1 : static_cast<int32_t>(row_token.size());
      if (pos[t * K + k] >= 0) row_token.push_back(static_cast<int32_t>(t));
    }
  const int64_t M = static_cast<int64_t>(row_token.size());
  std::vector<float> rows(M * Cc), out(N * Cc, 0.f), dx(N * Cc, 0.f), dy(M * Cc), dgt(N * K);
  C.moe_gather(RowMap::contiguous(rows.data()), x.data(), row_token.data(), M, Cc, {});
  C.moe_combine(out.data(), RowMap::contiguous(rows.data()), nullptr, gates.data(), pos.data(), N, K, Cc, {});
  C.moe_combine_backward(RowMap::contiguous(dy.data()), dgt.data(), dout.data(), RowMap::contiguous(rows.data()),
                         gates.data(), pos.data(), N, K, Cc, {});
  C.moe_gather_backward(dx.data(), RowMap::contiguous(dy.data()), pos.data(), N, K, Cc, {});
  Dev<float> gx(*G, x), gd(*G, dout), gg(*G, gates), grows(*G, rows), gout(*G, std::vector<float>(N * Cc, 0.f)),
      gdx(*G, std::vector<float>(N * Cc, 0.f)), gdy(*G, dy), gdgt(*G, dgt);
  Dev<int32_t> gpos(*G, pos), grt(*G, row_token);
  G->moe_gather(RowMap::contiguous(grows.p), gx.p, grt.p, M, Cc, {});
  G->moe_combine(gout.p, RowMap::contiguous(grows.p), nullptr, gg.p, gpos.p, N, K, Cc, {});
  G->moe_combine_backward(RowMap::contiguous(gdy.p), gdgt.p, gd.p, RowMap::contiguous(grows.p), gg.p, gpos.p, N, K,
                          Cc, {});
  G->moe_gather_backward(gdx.p, RowMap::contiguous(gdy.p), gpos.p, N, K, Cc, {});
  EXPECT_EQ(grows.host(), rows);
  EXPECT_LT(rel_to_max(gout.host(), out), kReduceTol);
  EXPECT_LT(rel_to_max(gdy.host(), dy), kElementTol);
  EXPECT_LT(rel_to_max(gdgt.host(), dgt), kReduceTol);
  EXPECT_LT(rel_to_max(gdx.host(), dx), kReduceTol);
}

TEST(CudaBackend, AdamwFp32AndBf16MomentsAreTheCpuUpdate) {
  SY_NEED_GPU();
  const int64_t n = 4099;
  auto p = test::randn(n, 20), g = test::randn(n, 21, 1e-2f);
  std::vector<float> m(n, 0.f), v(n, 0.f);
  AdamWParams a{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, 1.f};
  Dev<float> gp(*G, p), gg(*G, g), gm(*G, m), gv(*G, v);
  C.adamw_update(p.data(), g.data(), m.data(), v.data(), n, a, {});
  G->adamw_update(gp.p, gg.p, gm.p, gv.p, n, a, {});
  EXPECT_LT(rel_to_max(gp.host(), p), kElementTol);
  EXPECT_LT(rel_to_max(gm.host(), m), kElementTol);
  std::vector<uint16_t> m16(n, 0), v16(n, 0);
  Dev<uint16_t> gm16(*G, m16), gv16(*G, v16);
  C.adamw_update_bf16(p.data(), g.data(), m16.data(), v16.data(), n, a, {});
  G->adamw_update_bf16(gp.p, gg.p, gm16.p, gv16.p, n, a, {});
  EXPECT_LT(rel_to_max(gp.host(), p), kElementTol);
  int differ = 0;  // BF16 moments: a last-bit difference in FP32 may round to the neighbouring BF16
  const std::vector<uint16_t> got16 = gm16.host();
  for (int64_t i = 0; i < n; ++i) differ += got16[static_cast<size_t>(i)] != m16[static_cast<size_t>(i)];
  EXPECT_LE(differ, n / 100);
}

// Page-locked host copies: pinned, copied both ways, unpinned (twice is harmless).
TEST(CudaBackend, PinnedHostMemoryCopiesBothWays) {
  SY_NEED_GPU();
  (void)C;
  std::vector<float> h = test::randn(1 << 20, 13), back(h.size());
  EXPECT_TRUE(G->pin(h.data(), h.size() * sizeof(float)));
  EXPECT_TRUE(G->pin(back.data(), back.size() * sizeof(float)));
  Dev<float> d(*G, h);
  G->copy(back.data(), d.p, h.size() * sizeof(float), {});
  G->synchronize({});
  EXPECT_EQ(back, h);
  G->unpin(h.data());
  G->unpin(back.data());
  G->unpin(back.data());
}

// The gradient norm's terms. Both sides sum squares in double, in another
// order: relative 1e-12 (the reordering of ~1e5 double additions).
TEST(CudaBackend, SumSquaresMatchesTheCpu) {
  SY_NEED_GPU();
  const auto x = test::randn(250007, 12);
  const std::vector<int64_t> off = {0, 5, 5, 70000, 100}, cnt = {5, 0, 180007, 1, 65536};
  std::vector<double> want(off.size()), got(off.size());
  C.sum_squares(want.data(), x.data(), off.data(), cnt.data(), 5, {});
  Dev<float> gx(*G, x);
  G->sum_squares(got.data(), gx.p, off.data(), cnt.data(), 5, {});
  for (size_t r = 0; r < off.size(); ++r) EXPECT_NEAR(got[r], want[r], 1e-12 * std::max(1.0, want[r])) << r;
}

}  // namespace
}  // namespace sy
