// The tiled attention forward: see attention_cuda.h.
#include "kernels/cuda/attention_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "core/check.h"
#include "kernels/math.h"

namespace sy::cuda {

namespace {

constexpr int kWarps = 4;                          // per block
constexpr int kPerWarp = 4;                        // queries per warp
constexpr int kQueries = kWarps * kPerWarp;        // queries per block
constexpr int kKeys = 16;                          // key/value rows per shared-memory tile
constexpr int kSlices = int(kAttnMaxHead / 32);    // head values per lane at most

// grid (query tiles, H, B), kWarps x 32 threads; dynamic shared memory: K
// then V tile, (kKeys, D) each. Warp w's queries: i0 + q * kWarps + w, so
// the causal work is spread evenly over the warps.
__global__ void __launch_bounds__(kWarps * 32)
attention_fwd_tiled_kernel(float* out, float* lse, const float* qkv, int64_t T, int64_t H, int64_t Hkv, int64_t D) {
  extern __shared__ float tile[];
  float* ks = tile;
  float* vs = tile + kKeys * D;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = int64_t{blockIdx.x} * kQueries;
  const int64_t R = (H + 2 * Hkv) * D, g = h / (H / Hkv);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const float scale = 1.f / sqrtf(static_cast<float>(D));
  const float* rows = qkv + b * T * R;

  int64_t qi[kPerWarp];
  float q[kPerWarp][kSlices], acc[kPerWarp][kSlices];
  math::OnlineSoftmax sm[kPerWarp];
#pragma unroll
  for (int a = 0; a < kPerWarp; ++a) {
    qi[a] = i0 + a * kWarps + warp;
#pragma unroll
    for (int r = 0; r < kSlices; ++r) {
      const int64_t d = lane + 32 * r;
      q[a][r] = qi[a] < T && d < D ? rows[qi[a] * R + h * D + d] : 0.f;
      acc[a][r] = 0.f;
    }
  }
  const int64_t last = min(i0 + kQueries, T) - 1;  // the block's last query sees keys [0, last]
  for (int64_t k0 = 0; k0 <= last; k0 += kKeys) {
    __syncthreads();  // the previous tile is consumed
    for (int64_t x = threadIdx.x; x < kKeys * D; x += blockDim.x) {
      const int64_t j = k0 + x / D, d = x % D;
      ks[x] = j <= last ? rows[j * R + (H + g) * D + d] : 0.f;
      vs[x] = j <= last ? rows[j * R + (H + Hkv + g) * D + d] : 0.f;
    }
    __syncthreads();
    const int64_t n = min(int64_t{kKeys}, last - k0 + 1);
    for (int64_t jj = 0; jj < n; ++jj) {
      const float* kr = ks + jj * D;
      const float* vr = vs + jj * D;
      float s[kPerWarp];
#pragma unroll
      for (int a = 0; a < kPerWarp; ++a) {
        float p = 0.f;
#pragma unroll
        for (int r = 0; r < kSlices; ++r)
          if (lane + 32 * r < D) p += q[a][r] * kr[lane + 32 * r];
        s[a] = p;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int a = 0; a < kPerWarp; ++a) s[a] += __shfl_xor_sync(0xffffffffu, s[a], o);
      const int64_t j = k0 + jj;
#pragma unroll
      for (int a = 0; a < kPerWarp; ++a) {
        if (qi[a] >= T || j > qi[a]) continue;  // the same for the whole warp
        float rescale, w;
        sm[a].add(s[a] * scale, &rescale, &w);
#pragma unroll
        for (int r = 0; r < kSlices; ++r)
          if (lane + 32 * r < D) acc[a][r] = acc[a][r] * rescale + w * vr[lane + 32 * r];
      }
    }
  }
#pragma unroll
  for (int a = 0; a < kPerWarp; ++a) {
    if (qi[a] >= T) continue;
    float* o = out + (b * T + qi[a]) * H * D + h * D;
#pragma unroll
    for (int r = 0; r < kSlices; ++r)
      if (lane + 32 * r < D) o[lane + 32 * r] = acc[a][r] / sm[a].l;
    if (lane == 0) lse[(b * H + h) * T + qi[a]] = sm[a].lse();
  }
}

}  // namespace

void attention_forward_tiled(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                             int64_t D, Stream s) {
  SY_CHECK(D >= 1 && D <= kAttnMaxHead, "attention on the CUDA backend: head size {} outside [1, {}]", D,
           kAttnMaxHead);
  SY_CHECK(H <= 65535 && B <= 65535, "attention on the CUDA backend: {} heads x {} sequences above the grid's 65535",
           H, B);
  if (B == 0 || T == 0 || H == 0) return;
  const dim3 grid(static_cast<unsigned>((T + kQueries - 1) / kQueries), static_cast<unsigned>(H),
                  static_cast<unsigned>(B));
  const size_t shared = 2 * kKeys * static_cast<size_t>(D) * sizeof(float);  // 32 KiB at D = 256
  attention_fwd_tiled_kernel<<<grid, kWarps * 32, shared, static_cast<cudaStream_t>(s.handle)>>>(out, lse, qkv, T, H,
                                                                                                  Hkv, D);
  const cudaError_t e = cudaGetLastError();
  SY_CHECK(e == cudaSuccess, "CUDA: attention_forward (tiled) failed: {} ({})", cudaGetErrorString(e),
           cudaGetErrorName(e));
}

}  // namespace sy::cuda
