// sy-bench-fp8 [--rows R] [--cols C] [--shapes MxNxK,...]
// FP8 on the CPU, each figure next to its baseline measured in the same run:
//  - quantization (FP32 -> E4M3 with amax, per tensor and 1x128 / 128x128
//    blocks) in GB/s of FP32 read, against a memcpy of the same bytes;
//  - the scaled FP8 GEMM (decode 128-K blocks + OpenBLAS + promotion), per
//    tensor and block-wise, against sgemm on the same shapes.
// Never pass/fail.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <cstring>
#include <iostream>

#include "core/cpu.h"
#include "core/rng.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/fp8_gemm.h"

namespace {
using Clock = std::chrono::steady_clock;

template <class F>
double best_of(int reps, F f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

std::vector<float> randn(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t key = sy::stream_key(seed, "bench");
  for (size_t i = 0; i < n; ++i) v[i] = sy::normal_at(key, i);
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"FP8 quantization and GEMM on the CPU"};
  int64_t rows = 4096, cols = 4096;
  std::vector<std::string> shapes = {"1024x1024x1024", "2048x1536x512", "4096x512x1536"};
  app.add_option("--rows", rows);
  app.add_option("--cols", cols);
  app.add_option("--shapes", shapes, "GEMM shapes MxNxK")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  std::cout << fmt::format("OpenBLAS {} kernels, {} threads\n\n", sy::blas_info().core, omp_get_max_threads());

  const size_t n = static_cast<size_t>(rows * cols);
  auto x = randn(n, 1);
  std::vector<float> copy(n);
  std::memcpy(copy.data(), x.data(), n * 4);  // touch
  const double gb = static_cast<double>(n) * 4 / 1e9;
  double t_copy = best_of(5, [&] { std::memcpy(copy.data(), x.data(), n * 4); });
  std::cout << fmt::format("quantize {} x {} FP32 -> E4M3 (GB/s of FP32 read; memcpy of the same bytes {:.2f} GB/s)\n",
                           rows, cols, gb / t_copy);
  for (sy::ScaleMode mode : {sy::ScaleMode::tensor, sy::ScaleMode::rows_1x128, sy::ScaleMode::blocks_128x128}) {
    sy::Fp8Matrix q;
    double t = best_of(5, [&] { sy::quantize_matrix(q, x.data(), rows, cols, {sy::Fp8Format::e4m3, mode}); });
    double tt = best_of(3, [&] { sy::quantize_matrix(q, x.data(), rows, cols, {sy::Fp8Format::e4m3, mode}, true); });
    std::cout << fmt::format("  {:<8} {:>7.2f} GB/s ({:.2f}x memcpy)   transposed {:>6.2f} GB/s ({:.2f}x)\n",
                             sy::to_string(mode), gb / t, t_copy / t, gb / tt, t_copy / tt);
  }
  std::cout << "\nGEMM C = A B^T: FP8 (E4M3 x E4M3, FP32 accumulation) against sgemm on the same shape\n";
  std::cout << fmt::format("{:>16} {:>10} {:>14} {:>8} {:>16} {:>8}\n", "MxNxK", "sgemm GF/s", "fp8 tensor GF/s",
                           "ratio", "fp8 block GF/s", "ratio");
  for (const std::string& s : shapes) {
    int64_t M, N, K;
    if (std::sscanf(s.c_str(), "%ldx%ldx%ld", &M, &N, &K) != 3) {
      std::cerr << "bad shape " << s << "\n";
      return 2;
    }
    auto a = randn(static_cast<size_t>(M * K), 2), b = randn(static_cast<size_t>(N * K), 3);
    std::vector<float> c(static_cast<size_t>(M * N));
    const double flop = 2.0 * M * N * K;
    double t32 = best_of(3, [&] { sy::sgemm(false, true, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(), N); });
    sy::Fp8Matrix A, B;
    sy::quantize_matrix(A, a.data(), M, K, {sy::Fp8Format::e4m3, sy::ScaleMode::tensor});
    sy::quantize_matrix(B, b.data(), N, K, {sy::Fp8Format::e4m3, sy::ScaleMode::tensor});
    double tt = best_of(3, [&] { sy::fp8_gemm(c.data(), A, B); });
    sy::quantize_matrix(A, a.data(), M, K, {sy::Fp8Format::e4m3, sy::ScaleMode::rows_1x128});
    sy::quantize_matrix(B, b.data(), N, K, {sy::Fp8Format::e4m3, sy::ScaleMode::blocks_128x128});
    double tb = best_of(3, [&] { sy::fp8_gemm(c.data(), A, B); });
    std::cout << fmt::format("{:>16} {:>10.1f} {:>14.1f} {:>7.2f}x {:>16.1f} {:>7.2f}x\n", s, flop / t32 / 1e9,
                             flop / tt / 1e9, t32 / tt, flop / tb / 1e9, t32 / tb);
  }
  std::cout << "\n(the CPU has no FP8 arithmetic: FP8 here buys memory and Hopper-exact numerics, not speed)\n";
  return 0;
}
