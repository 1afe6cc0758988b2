#include "kernels/cpu/permute.h"
#include "testing.h"

namespace sy {
namespace {

using test::cast;
using test::randn;
using test::Tol;

TEST(Permute, GatherCombineAndBackwardsMatchReference) {
  // 5 tokens, K = 2, one pick dropped (pos = -1); rows in expert order.
  int64_t N = 5, K = 2, C = 19;
  std::vector<int32_t> pos = {0, 4, 1, -1, 5, 2, 3, 6, 7, 8};
  int64_t M = 9;
  std::vector<int32_t> row_token(M);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (pos[t * K + k] >= 0) row_token[pos[t * K + k]] = int32_t(t);
  auto x = randn(N * C, 1), y = randn(M * C, 2), gates = randn(N * K, 3), dout = randn(N * C, 4);
  auto xd = cast<double>(x), yd = cast<double>(y), gd = cast<double>(gates), dd = cast<double>(dout);

  std::vector<float> xp(M * C);
  std::vector<double> xpd(M * C);
  moe_gather(RowMap::contiguous(xp.data()), x.data(), row_token.data(), M, C);
  moe_gather_ref(xpd.data(), xd.data(), row_token.data(), M, C);
  SY_EXPECT_CLOSE(xp.data(), xpd.data(), M * C, 0.0);

  auto dx = randn(N * C, 5);
  auto dxd = cast<double>(dx);
  moe_gather_backward(dx.data(), RowMap::contiguous(y.data()), pos.data(), N, K, C);
  moe_gather_backward_ref(dxd.data(), yd.data(), pos.data(), N, K, C);
  SY_EXPECT_CLOSE(dx.data(), dxd.data(), N * C, Tol::f32);

  auto out = randn(N * C, 6);
  auto outd = cast<double>(out);
  std::vector<float> y_copy(M * C, -1.f);
  moe_combine(out.data(), RowMap::contiguous(y.data()), y_copy.data(), gates.data(), pos.data(), N, K, C);
  moe_combine_ref(outd.data(), yd.data(), gd.data(), pos.data(), N, K, C);
  SY_EXPECT_CLOSE(out.data(), outd.data(), N * C, Tol::f32);
  EXPECT_EQ(y_copy, y) << "every kept row is read once and copied";

  std::vector<float> dy(M * C), dg(N * K);
  std::vector<double> dyd(M * C), dgd(N * K);
  moe_combine_backward(RowMap::contiguous(dy.data()), dg.data(), dout.data(), RowMap::contiguous(y.data()), gates.data(),
                       pos.data(), N, K, C);
  moe_combine_backward_ref(dyd.data(), dgd.data(), dd.data(), yd.data(), gd.data(), pos.data(), N, K, C);
  SY_EXPECT_CLOSE(dy.data(), dyd.data(), M * C, Tol::f32);
  SY_EXPECT_CLOSE(dg.data(), dgd.data(), N * K, Tol::f32);
  EXPECT_EQ(dg[3], 0.f) << "a dropped pick gets no gate gradient";

  // Finite differences of <dout, combine(y, gates)> in y and gates.
  auto loss = [&] {
    std::vector<double> o(N * C, 0.0);
    moe_combine_ref(o.data(), yd.data(), gd.data(), pos.data(), N, K, C);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * dd[i];
    return s;
  };
  test::expect_fd_gradient(loss, yd.data(), dyd.data(), yd.size(), "combine rows");
  test::expect_fd_gradient(loss, gd.data(), dgd.data(), gd.size(), "combine gates");
}

TEST(Permute, ScatteredRowMapMatchesContiguous) {
  // Send rows scattered over two "ranks'" segments, in a shuffled order:
  // gather, combine and both backwards must agree with the contiguous map.
  int64_t N = 6, K = 2, C = 7, M = 10;
  std::vector<int32_t> pos = {0, 1, 2, 3, 4, -1, 5, 6, 7, 8, 9, -1};
  std::vector<int32_t> row_token(M), rank(M), row(M);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (pos[t * K + k] >= 0) row_token[pos[t * K + k]] = int32_t(t);
  for (int64_t r = 0; r < M; ++r) rank[r] = int32_t(r % 2), row[r] = int32_t(4 - r / 2 + (r % 2) * 3);  // distinct slots
  std::vector<float> seg0(8 * C, 0.f), seg1(8 * C, 0.f), flat(M * C);
  float* bases[2] = {seg0.data(), seg1.data()};
  RowMap scattered = RowMap::scattered(bases, rank.data(), row.data()), contiguous = RowMap::contiguous(flat.data());
  auto x = randn(N * C, 1), gates = randn(N * K, 2), dout = randn(N * C, 3);
  moe_gather(scattered, x.data(), row_token.data(), M, C);
  moe_gather(contiguous, x.data(), row_token.data(), M, C);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < C; ++c) ASSERT_EQ(scattered.at(r, C)[c], flat[r * C + c]);
  std::vector<float> o1(N * C, 0.f), o2(N * C, 0.f), copy(M * C);
  moe_combine(o1.data(), scattered, copy.data(), gates.data(), pos.data(), N, K, C);
  moe_combine(o2.data(), contiguous, nullptr, gates.data(), pos.data(), N, K, C);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(copy, flat);
  std::vector<float> g1(N * K), g2(N * K), d1(N * C, 0.f), d2(N * C, 0.f), dy_flat(M * C);
  RowMap dy_contiguous = RowMap::contiguous(dy_flat.data());
  std::vector<float> y_seg0 = seg0, y_seg1 = seg1;  // the gathered rows, as the y side
  float* y_bases[2] = {y_seg0.data(), y_seg1.data()};
  moe_combine_backward(scattered, g1.data(), dout.data(), RowMap::scattered(y_bases, rank.data(), row.data()),
                       gates.data(), pos.data(), N, K, C);
  moe_combine_backward(dy_contiguous, g2.data(), dout.data(), contiguous, gates.data(), pos.data(), N, K, C);
  EXPECT_EQ(g1, g2);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < C; ++c) ASSERT_EQ(scattered.at(r, C)[c], dy_flat[r * C + c]);
  moe_gather_backward(d1.data(), scattered, pos.data(), N, K, C);
  moe_gather_backward(d2.data(), dy_contiguous, pos.data(), N, K, C);
  EXPECT_EQ(d1, d2);
}

}  // namespace
}  // namespace sy
