#include "kernels/cpu/swiglu.h"

#include "core/parallel.h"
#include "kernels/cpu/vmath.h"

namespace sy {

void swiglu_forward(float* out, const float* inp, int64_t N, int64_t F) {
  parallel_for(N, [&](int64_t n) {
    const float* a = inp + n * 2 * F;
    const float* b = a + F;
    float* y = out + n * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) y[f] = a[f] * fast_sigmoid(a[f]) * b[f];
  });
}

void swiglu_backward(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F) {
  parallel_for(N, [&](int64_t n) {
    const float* a = inp + n * 2 * F;
    const float* b = a + F;
    const float* dy = dout + n * F;
    float* da = dinp + n * 2 * F;
    float* db = da + F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      float sig = fast_sigmoid(a[f]);
      da[f] = dy[f] * b[f] * sig * (1.f + a[f] * (1.f - sig));
      db[f] = dy[f] * a[f] * sig;
    }
  });
}

}  // namespace sy
