#include "core/arena.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "testing.h"

namespace sy {
namespace {

TEST(Philox, KnownAnswersFromRandom123) {
  // Known-answer vectors of philox4x32-10 from Random123's kat_vectors.
  EXPECT_EQ(philox4x32({0, 0, 0, 0}, 0), (Philox4x32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, 0xffffffffffffffffull),
            (Philox4x32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0x299f31d0a4093822ull),
            (Philox4x32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, NormalsHaveUnitMomentsAndAreIndexAddressed) {
  uint64_t key = stream_key(1234, "layers.0.attn.wqkv");
  const int n = 1 << 20;
  double s = 0, s2 = 0;
  for (int i = 0; i < n; ++i) {
    double x = normal_at(key, static_cast<uint64_t>(i));
    s += x, s2 += x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 5.0 / std::sqrt(double(n)));   // 5 sigma
  EXPECT_NEAR(s2 / n, 1.0, 5.0 * std::sqrt(2.0 / n));
  // The same (key, index) gives the same value; other names give other streams.
  EXPECT_EQ(normal_at(key, 777), normal_at(key, 777));
  EXPECT_NE(normal_at(key, 777), normal_at(stream_key(1234, "layers.1.attn.wqkv"), 777));
  EXPECT_NE(normal_at(key, 777), normal_at(stream_key(1235, "layers.0.attn.wqkv"), 777));
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(3.140625f)), 3.140625f);            // exactly representable
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);    // tie -> even
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);    // tie -> even (up)
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(Arena, AlignsAndRefusesOverflow) {
  ArenaPlan plan;
  EXPECT_EQ(plan.alloc<float>(3), nullptr);
  plan.alloc<int32_t>(100);
  Arena a(plan.bytes());
  float* f = a.alloc<float>(3);
  int32_t* i = a.alloc<int32_t>(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f) % Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(i) % Arena::kAlign, 0u);
  EXPECT_THROW(a.alloc<float>(1), Error);
}

}  // namespace
}  // namespace sy
