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

// A scaled FP8 matrix on the device. Scales are stored as cuBLASLt reads
// them: tensor: one float; rows_1x128 (VEC128): scale_inv[kb * ld + r];
// blocks_128x128 (BLK128x128): scale_inv[kb * ld + r / 128]; ld is the
// scaled rows rounded up to a multiple of 4 (16-byte aligned columns).
struct DeviceFp8 {
  int64_t rows = 0, cols = 0;
  Fp8Format fmt = Fp8Format::e4m3;
  ScaleMode mode = ScaleMode::tensor;
  int64_t scale_ld = 1;
  DeviceBuffer q, scale_inv;
  int64_t kblocks() const { return (cols + kFp8Block - 1) / kFp8Block; }
};

// Quantizes x (device, rows x cols, row-major), or with `transpose` x^T,
// exactly as quantize_matrix does on the CPU. Returns amax and saturation.
QuantStats quantize(DeviceFp8& out, const float* x_dev, int64_t rows, int64_t cols, const QuantOptions& o,
                    bool transpose = false);

// The CPU layout of a device matrix (codes and scale_inv), for comparison.
Fp8Matrix to_host(const DeviceFp8& m);
// The inverse: a host matrix in the device layout (into out, grown as needed).
void from_host(DeviceFp8& out, const Fp8Matrix& h);

// C (device, M x N row-major) (+)= A * B^T through cuBLASLt. A.cols == B.cols == K,
// K a multiple of 16; E5M2 x E5M2 is not a tensor-core combination.
void fp8_gemm(float* C_dev, const DeviceFp8& A, const DeviceFp8& B, bool accumulate = false);

}  // namespace sy::cuda
