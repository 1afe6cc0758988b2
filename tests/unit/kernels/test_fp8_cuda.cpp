// The CUDA FP8 path against the CPU one: device quantization gives the same
// codes and scales bit for bit (every mode, both formats, power-of-two scales,
// transposed), and the cuBLASLt FP8 GEMM (per-tensor SCALAR_32F, block-wise
// VEC128_32F x BLK128x128_32F, VEC128 x VEC128) matches the naive reference
// with per-128-K promotion. Scales differ by row and by K block, so a wrong
// scale layout cannot pass. Label gpu: skips with the reason where no GPU is.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/fp8_gemm.h"
#include "kernels/cuda/fp8_cuda.h"
#include "testing.h"

namespace sy {
namespace {

#define SY_NEED_GPU()                                               \
  do {                                                              \
    std::string why;                                                \
    if (!cuda::fp8_device_available(&why)) GTEST_SKIP() << why;     \
  } while (0)

// Magnitudes that change with the row and the 128-column block.
std::vector<float> uneven(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> x = test::randn(static_cast<size_t>(rows * cols), seed);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      x[static_cast<size_t>(r * cols + c)] *= std::ldexp(1.f, static_cast<int>(r % 7) - 3 + static_cast<int>((c / 128) % 3));
  for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(5 * cols + c)] = 0.f;  // an all-zero row
  return x;
}

struct Device {
  cuda::DeviceBuffer buf;
  explicit Device(const std::vector<float>& h) { buf.upload(h.data(), h.size() * sizeof(float)); }
  const float* ptr() const { return buf.as<float>(); }
};

TEST(Fp8Cuda, QuantizeMatchesTheCpuBitForBit) {
  SY_NEED_GPU();
  const int64_t R = 200, C = 300;
  const std::vector<float> x = uneven(R, C, 7);
  Device dx(x);
  for (ScaleMode mode : {ScaleMode::tensor, ScaleMode::rows_1x128, ScaleMode::blocks_128x128})
    for (Fp8Format fmt : {Fp8Format::e4m3, Fp8Format::e5m2})
      for (bool pow2 : {false, true})
        for (bool transpose : {false, true}) {
          SCOPED_TRACE(to_string(mode) + " " + to_string(fmt) + (pow2 ? " pow2" : "") + (transpose ? " T" : ""));
          QuantOptions o{fmt, mode, pow2};
          Fp8Matrix cpu;
          Fp8Matrix dev;
          QuantStats a = quantize_matrix(cpu, x.data(), R, C, o, transpose);
          QuantStats b = cuda::quantize(dev, dx.ptr(), R, C, o, transpose);
          Fp8Matrix got = cuda::to_host(dev);
          EXPECT_EQ(got.rows, cpu.rows);
          EXPECT_EQ(got.cols, cpu.cols);
          EXPECT_EQ(got.scale_ld, cpu.scale_ld);
          EXPECT_EQ(test::codes(got), test::codes(cpu));
          EXPECT_EQ(test::scales(got), test::scales(cpu));  // one layout on both, the padding zero
          EXPECT_EQ(a.amax, b.amax);
          EXPECT_EQ(a.saturated, b.saturated);
        }
}

TEST(Fp8Cuda, GivenScaleSaturatesAndCountsLikeTheCpu) {
  SY_NEED_GPU();
  const int64_t R = 64, C = 128;
  const std::vector<float> x = uneven(R, C, 8);
  Device dx(x);
  for (bool saturate : {true, false}) {
    QuantOptions o{Fp8Format::e4m3, ScaleMode::tensor, false, saturate, 400.f};  // far too large: many overflow
    Fp8Matrix cpu;
    Fp8Matrix dev;
    QuantStats a = quantize_matrix(cpu, x.data(), R, C, o);
    QuantStats b = cuda::quantize(dev, dx.ptr(), R, C, o);
    EXPECT_GT(a.saturated, 0);
    EXPECT_EQ(a.saturated, b.saturated);
    EXPECT_EQ(test::codes(cuda::to_host(dev)), test::codes(cpu));
  }
}

// c_offset: C starts that many floats into its buffer (an expert segment's
// rows: cuBLASLt must be asked for an algorithm that takes that alignment).
void check_gemm(int64_t M, int64_t N, int64_t K, QuantOptions oa, QuantOptions ob, int64_t c_offset = 0) {
  const std::vector<float> a = uneven(M, K, 11), b = uneven(N, K, 12);
  Fp8Matrix qa, qb;
  quantize_matrix(qa, a.data(), M, K, oa);
  quantize_matrix(qb, b.data(), N, K, ob);
  std::vector<double> ref(static_cast<size_t>(M * N));
  fp8_gemm_ref(ref.data(), qa, qb);
  Device da(a), db(b);
  Fp8Matrix ga, gb;
  cuda::quantize(ga, da.ptr(), M, K, oa);
  cuda::quantize(gb, db.ptr(), N, K, ob);
  cuda::DeviceBuffer c(static_cast<size_t>(M * N + c_offset) * sizeof(float));
  std::vector<float> ones(static_cast<size_t>(M * N + c_offset), 1.f), all(ones.size());
  std::vector<float> got(static_cast<size_t>(M * N));
  for (bool accumulate : {false, true}) {
    c.upload(ones.data(), ones.size() * sizeof(float));
    cuda::fp8_gemm(c.as<float>() + c_offset, ga, gb, accumulate);
    c.download(all.data(), all.size() * sizeof(float));
    for (int64_t i = 0; i < c_offset; ++i) EXPECT_EQ(all[static_cast<size_t>(i)], 1.f) << "written before C";
    std::copy(all.begin() + c_offset, all.end(), got.begin());
    double mx = 0, err = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      mx = std::max(mx, std::fabs(ref[i]));
      err = std::max(err, std::fabs(got[i] - (ref[i] + (accumulate ? 1.0 : 0.0))));
    }
    EXPECT_LT(err, 2e-3 * mx) << "accumulate " << accumulate << ": max error " << err << " of max " << mx;
  }
}

TEST(Fp8Cuda, PerTensorGemmMatchesTheReference) {
  SY_NEED_GPU();
  for (int64_t K : {512, 320}) {  // 320: a partial last 128-K block
    SCOPED_TRACE(K);
    check_gemm(256, 384, K, {Fp8Format::e4m3, ScaleMode::tensor}, {Fp8Format::e4m3, ScaleMode::tensor});
    check_gemm(256, 384, K, {Fp8Format::e5m2, ScaleMode::tensor}, {Fp8Format::e4m3, ScaleMode::tensor});  // dgrad
  }
  // The same shape again into C 16 bytes past an allocation's start (cuBLASLt FP8's least alignment, as an
  // expert segment's rows may be): the cached plan of the 256-byte aligned call must not be reused for it.
  check_gemm(256, 384, 512, {Fp8Format::e4m3, ScaleMode::tensor}, {Fp8Format::e4m3, ScaleMode::tensor}, 4);
}

TEST(Fp8Cuda, BlockScaledGemmMatchesTheReference) {
  SY_NEED_GPU();
  std::string why;
  if (!cuda::fp8_block_scaling_supported(&why)) GTEST_SKIP() << why;
  for (bool pow2 : {false, true}) {
    SCOPED_TRACE(pow2);
    // forward: activations 1 x 128, weights 128 x 128; dgrad: E5M2 gradients.
    check_gemm(256, 384, 512, {Fp8Format::e4m3, ScaleMode::rows_1x128, pow2},
               {Fp8Format::e4m3, ScaleMode::blocks_128x128, pow2});
    check_gemm(200, 384, 384, {Fp8Format::e5m2, ScaleMode::rows_1x128, pow2},
               {Fp8Format::e4m3, ScaleMode::blocks_128x128, pow2});
    // wgrad: both operands 1 x 128 along the tokens.
    check_gemm(384, 256, 512, {Fp8Format::e5m2, ScaleMode::rows_1x128, pow2},
               {Fp8Format::e4m3, ScaleMode::rows_1x128, pow2});
  }
}

TEST(Fp8Cuda, BadShapesAreRefusedWithTheReason) {
  SY_NEED_GPU();
  const std::vector<float> a = uneven(32, 40, 1);
  Device da(a);
  Fp8Matrix qa, qb;
  cuda::quantize(qa, da.ptr(), 32, 40, {});
  cuda::quantize(qb, da.ptr(), 32, 40, {});
  cuda::DeviceBuffer c(32 * 32 * sizeof(float));
  try {
    cuda::fp8_gemm(c.as<float>(), qa, qb);
    FAIL() << "K = 40 accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sy
