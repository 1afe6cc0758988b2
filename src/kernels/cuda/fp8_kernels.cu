// Device kernels of the FP8 path (host logic and cuBLASLt: fp8_cuda.cpp).
// Semantics mirror kernels/cpu/fp8_gemm.cpp exactly: amax ignores NaN,
// scale = fmax / amax (IEEE division), 1 for an all-zero or non-finite amax,
// 2^126 when the quotient overflows, optionally rounded down to a power of
// two; codes from __nv_cvt_float_to_fp8 of x * scale; saturation counted
// where |x * scale| is beyond what rounds to the largest finite value.
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/fp8_kernels.h"

namespace sy::cuda::detail {

namespace {

__device__ __forceinline__ uint8_t encode(float v, bool e4, bool saturate) {
  return static_cast<uint8_t>(
      __nv_cvt_float_to_fp8(v, saturate ? __NV_SATFINITE : __NV_NOSAT, e4 ? __NV_E4M3 : __NV_E5M2));
}

__device__ __forceinline__ bool overflows(float a, bool e4) { return e4 ? a > 464.f : a >= 61440.f; }

__device__ __forceinline__ float scale_for(float amax, bool e4, bool pow2) {
  if (!(amax > 0.f) || isinf(amax)) return 1.f;
  float s = __fdiv_rn(e4 ? 448.f : 57344.f, amax);
  if (isinf(s)) s = 0x1p126f;
  if (pow2) {
    int e = 0;
    frexpf(s, &e);
    s = ldexpf(1.f, e - 1);
  }
  return s;
}

// |x| as ordered bits (non-negative floats order as unsigned); NaN ignored.
__device__ __forceinline__ void atomic_amax(float* slot, float a) {
  if (a == a && a > 0.f) atomicMax(reinterpret_cast<unsigned int*>(slot), __float_as_uint(a));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void transpose_kernel(float* dst, const float* src, int64_t rows, int64_t cols) {
  __shared__ float tile[32][33];
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32, r0 = static_cast<int64_t>(blockIdx.y) * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;
    if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][i];
  }
}

__global__ void amax_kernel(const float* x, int64_t n, float* amax) {
  float m = 0.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(x[i]));
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) atomic_amax(amax, m);
}

__global__ void tensor_kernel(uint8_t* q, const float* x, int64_t n, float scale, bool e4, bool saturate,
                              unsigned long long* sat) {
  unsigned long long count = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i] * scale;
    count += overflows(fabsf(v), e4) ? 1 : 0;
    q[i] = encode(v, e4, saturate);
  }
  if (count) atomicAdd(sat, count);
}

// One warp per 1 x 128 tile (row r, k-block kb).
__global__ void rows_kernel(uint8_t* q, float* sinv, int64_t ld, const float* x, int64_t rows, int64_t cols,
                            bool e4, bool pow2, bool saturate, float* amax_all) {
  const int64_t kb_count = (cols + 127) / 128;
  const int64_t tile = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (tile >= rows * kb_count) return;
  const int64_t r = tile / kb_count, kb = tile % kb_count, k0 = kb * 128;
  const int lane = threadIdx.x & 31;
  float v[4], m = 0.f;
  for (int j = 0; j < 4; ++j) {
    const int64_t k = k0 + lane + 32 * j;
    v[j] = k < cols ? x[r * cols + k] : 0.f;
    m = fmaxf(m, fabsf(v[j]));
  }
  m = warp_max(m);
  const float s = scale_for(m, e4, pow2);
  if (lane == 0) {
    sinv[kb * ld + r] = 1.f / s;
    atomic_amax(amax_all, m);
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t k = k0 + lane + 32 * j;
    if (k < cols) q[r * cols + k] = encode(v[j] * s, e4, saturate);
  }
}

// One thread block (256 threads) per 128 x 128 tile.
__global__ void blocks_kernel(uint8_t* q, float* sinv, int64_t ld, const float* x, int64_t rows, int64_t cols,
                              bool e4, bool pow2, bool saturate, float* amax_all) {
  __shared__ float red[8];
  const int64_t rb = blockIdx.y, kb = blockIdx.x, r0 = rb * 128, k0 = kb * 128;
  const int64_t r1 = min(rows, r0 + 128), k1 = min(cols, k0 + 128);
  float m = 0.f;
  for (int64_t r = r0 + threadIdx.x / 128; r < r1; r += 2)
    for (int64_t k = k0 + threadIdx.x % 128; k < k1; k += 128) m = fmaxf(m, fabsf(x[r * cols + k]));
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = red[0];
  for (int i = 1; i < 8; ++i) m = fmaxf(m, red[i]);
  const float s = scale_for(m, e4, pow2);
  if (threadIdx.x == 0) {
    sinv[kb * ld + rb] = 1.f / s;
    atomic_amax(amax_all, m);
  }
  for (int64_t r = r0 + threadIdx.x / 128; r < r1; r += 2)
    for (int64_t k = k0 + threadIdx.x % 128; k < k1; k += 128) q[r * cols + k] = encode(x[r * cols + k] * s, e4, saturate);
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t g = (n + threads - 1) / threads;
  return static_cast<unsigned>(g < 65535 * 16 ? (g > 0 ? g : 1) : 65535 * 16);
}

}  // namespace

namespace {
cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }
}  // namespace

void transpose(float* dst, const float* src, int64_t rows, int64_t cols, void* stream) {
  dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>((rows + 31) / 32)), block(32, 8);
  transpose_kernel<<<grid, block, 0, cs(stream)>>>(dst, src, rows, cols);
}

void amax(const float* x, int64_t n, float* amax_dev, void* stream) {
  amax_kernel<<<grid_for(n, 256), 256, 0, cs(stream)>>>(x, n, amax_dev);
}

void quantize_tensor(uint8_t* q, const float* x, int64_t n, float scale, bool e4, bool saturate,
                     unsigned long long* sat_dev, void* stream) {
  tensor_kernel<<<grid_for(n, 256), 256, 0, cs(stream)>>>(q, x, n, scale, e4, saturate, sat_dev);
}

void quantize_rows(uint8_t* q, float* sinv, int64_t ld, const float* x, int64_t rows, int64_t cols, bool e4,
                   bool pow2, bool saturate, float* amax_dev, void* stream) {
  const int64_t tiles = rows * ((cols + 127) / 128);
  rows_kernel<<<static_cast<unsigned>((tiles + 7) / 8), 256, 0, cs(stream)>>>(q, sinv, ld, x, rows, cols, e4, pow2,
                                                                              saturate, amax_dev);
}

void quantize_blocks(uint8_t* q, float* sinv, int64_t ld, const float* x, int64_t rows, int64_t cols, bool e4,
                     bool pow2, bool saturate, float* amax_dev, void* stream) {
  dim3 grid(static_cast<unsigned>((cols + 127) / 128), static_cast<unsigned>((rows + 127) / 128));
  blocks_kernel<<<grid, 256, 0, cs(stream)>>>(q, sinv, ld, x, rows, cols, e4, pow2, saturate, amax_dev);
}

}  // namespace sy::cuda::detail
