// FP8 on NVIDIA GPUs: quantize and quantize-transpose kernels, and the
// cuBLASLt FP8 GEMM, with the CPU path's semantics (kernels/cpu/fp8_gemm.h):
// the same codes and scales bit for bit (NVIDIA's __nv_cvt_float_to_fp8 is
// the conversion the CPU encoder is tested against), and
//   C (M, N) (+)= A (M, K) * B (N, K)^T, FP32 accumulation and output,
// where per-tensor scales are cuBLASLt SCALAR_32F scale pointers and the
// block-wise recipe's scales are CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
// (1 x 128 tiles: activations, gradients) and BLK128x128_32F (weights), sm_90.
//
// Row-major operands map onto cuBLASLt's column-major TN form without a
// copy: cuBLAS A = our B (K x N, ld K, transposed), cuBLAS B = our A (K x M,
// ld K), D = C^T column-major = our C row-major.
//
// No CUDA type appears here: the trainer and tests link this library and
// ask fp8_device_available() first; CI builds it (nvcc) and the GPU tests
// skip without a device.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cpu/fp8_gemm.h"

namespace sy::cuda {

// A usable CUDA device (and, for block scaling, compute capability 9.x); why not in *why.
bool fp8_device_available(std::string* why = nullptr);
bool fp8_block_scaling_supported(std::string* why = nullptr);

// Device memory, freed with the owner.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { resize(bytes); }
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void resize(size_t bytes);  // grows only; contents not kept
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// cudaMalloc / cudaFree as an Allocator: where a matrix quantized outside a
// backend keeps its codes (tests, benchmarks); the CUDA backend hands in its own.
Allocator& device_memory();

// Quantizes x (device, rows x cols, row-major), or with `transpose` x^T,
// exactly as quantize_matrix does on the CPU: the same codes and scales in
// the same layout (kernels/fp8_types.h), in device memory from `mem`, on
// `stream` (a cudaStream_t; null: the default stream). Returns amax and
// saturation, so it returns once the stream has done the quantization.
QuantStats quantize(Fp8Matrix& out, const float* x_dev, int64_t rows, int64_t cols, const QuantOptions& o,
                    bool transpose = false, Allocator& mem = device_memory(), void* stream = nullptr);

// A device matrix's codes and scales copied into host memory, for comparison.
Fp8Matrix to_host(const Fp8Matrix& m);

// C (device, M x N row-major) (+)= A * B^T through cuBLASLt, A and B in
// device memory. A.cols == B.cols == K, K a multiple of 16; E5M2 x E5M2 is
// not a tensor-core combination. Enqueued on `stream` (not waited for); the
// process's one cuBLASLt workspace serves it, so callers on several streams
// take turns (the CUDA backend holds its lock).
void fp8_gemm(float* C_dev, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate = false, void* stream = nullptr);

}  // namespace sy::cuda
