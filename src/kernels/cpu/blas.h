// The one door to OpenBLAS sgemm (row-major), with time/FLOP counters for the
// throughput report, and the choice of OpenBLAS kernel.
#pragma once

#include <cstdint>
#include <string>

namespace sy {

// C(M,N) = alpha * op(A) * op(B) + beta * C, all row-major with explicit
// leading dimensions. op(X) = X^T when trans_x. Multi-threaded through
// OpenBLAS at top level; single-threaded when called inside a parallel region.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// Counters of top-level sgemm calls (calls from inside parallel regions,
// e.g. attention tiles, are not counted here).
struct GemmCounters {
  double seconds = 0;
  double flops = 0;
  int64_t calls = 0;
};
GemmCounters gemm_counters();
void reset_gemm_counters();

struct BlasInfo {
  std::string core;      // OpenBLAS kernel family, e.g. "SkylakeX", "Haswell"
  std::string parallel;  // "openmp", "pthreads", "sequential"
  int threads = 1;
  std::string config;    // openblas_get_config()
};
BlasInfo blas_info();

// Debian's OpenBLAS picks Haswell kernels on AVX-512 AMD CPUs, about half the
// speed of its SkylakeX ones. When OPENBLAS_CORETYPE is unset, the CPU has the
// AVX-512 subsets SkylakeX kernels use (F, CD, BW, DQ, VL) and OpenBLAS chose
// a non-AVX-512 kernel, re-executes this program (same argv, same pid) with
// OPENBLAS_CORETYPE=SkylakeX. Must run before threads, MPI_Init or any I/O.
// SY_BLAS_KEEP=1 turns it off. Returns only if no re-exec was needed.
void prefer_fast_blas_kernels(char** argv);

}  // namespace sy
