// Softmax cross-entropy over a vocabulary, fused with its gradient.
//   logits (N, V), targets (N) -> losses (N) = logsumexp(row) - row[target]
//   if dlogits: dlogits (N, V) = (softmax(row) - onehot(target)) * dscale;
//   dlogits may alias logits (the gradient overwrites the logits in place).
#pragma once

#include <cmath>
#include <cstdint>

namespace sy {

void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                   int64_t N, int64_t V, float dscale);

template <class T>
void cross_entropy_ref(T* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N,
                       int64_t V, T dscale) {
  for (int64_t n = 0; n < N; ++n) {
    const T* z = logits + n * V;
    T m = z[0];
    for (int64_t v = 1; v < V; ++v) m = z[v] > m ? z[v] : m;
    T s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - m);
    T lse = m + std::log(s);
    T zt = z[targets[n]];
    if (dlogits)
      for (int64_t v = 0; v < V; ++v)
        dlogits[n * V + v] = (std::exp(z[v] - lse) - (v == targets[n] ? T(1) : T(0))) * dscale;
    losses[n] = lse - zt;
  }
}

}  // namespace sy
