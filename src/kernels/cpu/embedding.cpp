#include "kernels/cpu/embedding.h"

#include <cstring>

#include "core/parallel.h"

namespace sy {

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C) {
  parallel_for(N, [&](int64_t n) {
    std::memcpy(out + n * C, wte + int64_t{tokens[n]} * C, static_cast<size_t>(C) * sizeof(float));
  });
}

void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C) {
  // Columns are split between chunks and every chunk walks all tokens in
  // order: no two threads touch one element, and each element sums its
  // contributions in token order whatever the thread count.
  int64_t chunks = chunk_count(C, 32);
  parallel_chunks(C, chunks, [&](int64_t c0, int64_t c1, int64_t) {
    for (int64_t n = 0; n < N; ++n) {
      float* dst = dwte + int64_t{tokens[n]} * C;
      const float* src = dout + n * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

}  // namespace sy
