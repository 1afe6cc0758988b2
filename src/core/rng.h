// Counter-based random numbers (Philox4x32-10, Salmon et al. SC'11).
// A value is a pure function of (key, counter): any rank can draw element i
// of a tensor without drawing elements 0..i-1, which is what makes every
// parallel layout initialise (and sample data for) the same model.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace sy {

using Philox4x32 = std::array<uint32_t, 4>;

inline Philox4x32 philox4x32(Philox4x32 ctr, uint64_t key64) {
  uint32_t k0 = static_cast<uint32_t>(key64), k1 = static_cast<uint32_t>(key64 >> 32);
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t{M0} * ctr[0];
    uint64_t p1 = uint64_t{M1} * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ k0, static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ k1, static_cast<uint32_t>(p0)};
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

// 64-bit FNV-1a, to turn names into keys.
constexpr uint64_t fnv1a64(std::string_view s, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Mixes a seed and a name into one stream key (splitmix64 finaliser).
constexpr uint64_t stream_key(uint64_t seed, std::string_view name) {
  uint64_t z = fnv1a64(name) ^ (seed + 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in (0, 1): 24 random bits, never exactly 0 or 1.
inline float u32_to_unit(uint32_t x) { return (static_cast<float>(x >> 8) + 0.5f) * 0x1p-24f; }

// Element `index` of a stream: one standard normal (Box-Muller on two
// uniforms made from the Philox output; double inside for accuracy).
inline float normal_at(uint64_t key, uint64_t index) {
  Philox4x32 r = philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0, 0}, key);
  double u1 = (static_cast<double>(r[0]) + 0.5) * 0x1p-32;
  double u2 = (static_cast<double>(r[1]) + 0.5) * 0x1p-32;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

// A uniform 64-bit integer at (a, b) in a stream.
inline uint64_t u64_at(uint64_t key, uint64_t a, uint64_t b) {
  Philox4x32 r = philox4x32({static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32),
                             static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32)},
                            key);
  return (uint64_t{r[0]} << 32) | r[1];
}

}  // namespace sy
