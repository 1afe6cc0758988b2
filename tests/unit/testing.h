// Shared helpers for the unit tests: seeded random tensors, comparisons with
// stated tolerances, finite-difference gradient checks.
#pragma once

#include <gtest/gtest.h>

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/fp8_types.h"

namespace sy::test {

// Tolerances, one table (TransformerEngine's habit). A result passes when
// max|got - want| <= tol * max(max|want|, 1e-30). "want" is the naive
// reference evaluated in double, so the error measured is the float path's
// own rounding: a few ulp times sqrt(reduction length) stays well below 1e-5
// for the reduction lengths in these tests (<= 2048).
struct Tol {
  static constexpr double f32 = 1e-5;       // float fast path vs double reference
  static constexpr double f32_long = 5e-5;  // float, softmax/exp chains (attention, router)
  static constexpr double fd = 1e-6;        // double analytic vs double central difference
};

// An FP8 matrix's codes and scales (scale_count(), the padding included)
// as host vectors, to compare; m must be host memory.
inline std::vector<uint8_t> codes(const Fp8Matrix& m) { return {m.q.data(), m.q.data() + m.code_count()}; }
inline std::vector<float> scales(const Fp8Matrix& m) {
  return {m.scale_inv.data(), m.scale_inv.data() + m.scale_count()};
}

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.f) {
  std::vector<float> v(n);
  uint64_t key = stream_key(seed, "test");
  for (size_t i = 0; i < n; ++i) v[i] = scale * normal_at(key, i);
  return v;
}

inline std::vector<int32_t> rand_ints(size_t n, uint64_t seed, int32_t hi) {
  std::vector<int32_t> v(n);
  uint64_t key = stream_key(seed, "ints");
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>(u64_at(key, i, 0) % static_cast<uint64_t>(hi));
  return v;
}

template <class To, class From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// Relative max-norm error of got against want.
template <class A, class B>
double max_rel_err(const A* got, const B* want, size_t n) {
  double diff = 0, mag = 0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - double(want[i])));
    mag = std::max(mag, std::abs(double(want[i])));
  }
  return diff / std::max(mag, 1e-30);
}

#define SY_EXPECT_CLOSE(got, want, n, tol)                                              \
  do {                                                                                  \
    double sy_err_ = ::sy::test::max_rel_err((got), (want), static_cast<size_t>(n));    \
    EXPECT_LE(sy_err_, (tol)) << #got " vs " #want " over " << (n) << " elements";      \
  } while (0)

// Central differences of `loss` in coordinates of x (all if n <= max_coords,
// else an evenly spread subset), against the analytic gradient `grad`.
inline void expect_fd_gradient(const std::function<double()>& loss, double* x, const double* grad,
                               size_t n, const std::string& what, double h = 1e-6,
                               double tol = Tol::fd, size_t max_coords = 256) {
  size_t stride = std::max<size_t>(1, n / max_coords);
  double worst = 0, gmax = 1e-12;
  for (size_t i = 0; i < n; ++i) gmax = std::max(gmax, std::abs(grad[i]));
  for (size_t i = 0; i < n; i += stride) {
    double keep = x[i];
    x[i] = keep + h;
    double up = loss();
    x[i] = keep - h;
    double down = loss();
    x[i] = keep;
    double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(fd - grad[i]) / gmax);
  }
  EXPECT_LE(worst, tol) << "finite-difference gradient of " << what;
}

// A scratch directory of its own under the system's temp dir, removed with
// everything in it when the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() / fmt::format("sy_test_{}_{}", ::getpid(), counter++);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // Writes `text` to a file of that name in the directory; returns its path.
  std::string file(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

}  // namespace sy::test
