// Deterministic CPU parallelism. Work over n items is cut into chunks whose
// boundaries depend only on n (never on the thread count), and reductions
// combine per-chunk partials in chunk order, so our own loops give bitwise
// the same results on 1 or 16 threads. (OpenBLAS sgemm is reproducible for
// a fixed thread count, but its K blocking can change with the thread
// count, e.g. K = 517 rows of an expert: runs on different thread counts
// agree to rounding, not to the bit.)
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace sy {

inline int max_threads() { return omp_get_max_threads(); }

// Number of fixed chunks for n items of roughly `grain` items each.
inline int64_t chunk_count(int64_t n, int64_t grain, int64_t max_chunks = 64) {
  if (n <= 0) return 0;
  return std::clamp<int64_t>((n + grain - 1) / grain, 1, max_chunks);
}

// Calls f(begin, end, chunk) for each of `chunks` contiguous ranges of [0, n).
template <class F>
void parallel_chunks(int64_t n, int64_t chunks, F&& f) {
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    f(b, e, c);
  }
}

// Calls f(i) for i in [0, n) on all threads (no cross-item reduction).
// One item runs here, without entering OpenMP: even a parallel region that
// its `if` turns off costs a team (allocated and cleared) when it is nested,
// and callers inside a parallel loop call this per row.
template <class F>
void parallel_for(int64_t n, F&& f) {
  if (n <= 1) {
    if (n == 1) f(int64_t{0});
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

}  // namespace sy
