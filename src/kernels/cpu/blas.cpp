#include "kernels/cpu/blas.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "core/check.h"
#include "core/timer.h"

extern "C" {
char* openblas_get_corename(void);
char* openblas_get_config(void);
int openblas_get_parallel(void);
int openblas_get_num_threads(void);
}

namespace sy {

namespace {
GemmCounters g_counters;

int as_int(int64_t v, const char* what) {
  SY_CHECK(v >= 0 && v <= INT32_MAX, "sgemm {} = {} is out of range for 32-bit BLAS", what, v);
  return static_cast<int>(v);
}
}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    // BLAS leaves C untouched only for beta == 1; scale explicitly.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  // Only calls outside any parallel region (active or not) are counted.
  bool top = omp_get_level() == 0;
  double t0 = top ? now_seconds() : 0;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, as_int(M, "M"), as_int(N, "N"),
              as_int(K, "K"), alpha, A, as_int(lda, "lda"), B, as_int(ldb, "ldb"), beta, C,
              as_int(ldc, "ldc"));
  if (top) {
    g_counters.seconds += now_seconds() - t0;
    g_counters.flops += 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
    g_counters.calls += 1;
  }
}

GemmCounters gemm_counters() { return g_counters; }
void reset_gemm_counters() { g_counters = {}; }

BlasInfo blas_info() {
  BlasInfo info;
  info.core = openblas_get_corename();
  switch (openblas_get_parallel()) {
    case 0: info.parallel = "sequential"; break;
    case 1: info.parallel = "pthreads"; break;
    default: info.parallel = "openmp"; break;
  }
  info.threads = openblas_get_num_threads();
  info.config = openblas_get_config();
  return info;
}

void prefer_fast_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("SY_BLAS_KEEP")) return;
  __builtin_cpu_init();
  bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vl");
  if (!avx512) return;
  std::string_view core = openblas_get_corename();
  if (core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids") return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  setenv("SY_BLAS_KEEP", "1", 1);  // never loop, whatever the child finds
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the kernels we have.
  unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace sy
