// The CUDA backend's GEMMs (kernels/cuda/gemm_cuda.cu), in three precisions:
//   fp32     cublasSgemm on a handle in CUBLAS_DEFAULT_MATH: FP32 multiply-add,
//            never TF32 (the handle's math mode is set, not inherited);
//   bf16     the operands converted to BF16 (nearest even, kernels/math.h
//            bf16_round) into a workspace the engine keeps, then cublasGemmEx
//            with CUDA_R_16BF inputs, an FP32 output and CUBLAS_COMPUTE_32F:
//            products of the BF16 values accumulated in FP32 (the contract of
//            Backend::linear_*_bf16; the CPU computes it as round + FP32 GEMM);
//   grouped  all problems of a grouped linear (one per non-empty expert) in
//            one cublasGemmGroupedBatchedEx, no host loop of launches. FP32:
//            CUBLAS_COMPUTE_32F. BF16: cuBLAS 13's grouped GEMM takes BF16
//            inputs only with a BF16 output (which would round the result
//            and could not accumulate dW in FP32), so the operands are
//            rounded to BF16 values kept in FP32 and the GEMM runs with
//            CUBLAS_COMPUTE_32F_FAST_TF32: a BF16 value (8 significand bits)
//            is exactly a TF32 value (11), so the tensor cores multiply the
//            same BF16 values exactly and accumulate in FP32, the same
//            contract at TF32 rate. Where a pointer is not 16-byte aligned
//            (cuBLAS's rule for the FAST compute types) it runs with
//            CUBLAS_COMPUTE_32F instead: the same values, slower.
//
// The workspaces (BF16 operands, rounded grouped operands, the grouped
// GEMM's device pointer arrays) grow geometrically and are never freed in
// steady state: no cudaMalloc per call once the shapes repeat. They are
// shared by every stream: each call waits (on the device, an event) for the
// previous call's use to finish before it writes them, and before a
// workspace grows the host waits for that event. The pointer arrays are
// written by a kernel that gets the pointers as launch arguments (captured
// at launch), so no host buffer must outlive the call.
//
// Status: compiled in every CI run; not yet run on a GPU.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"

namespace sy::cuda {

// One GEMM, row-major: C (M, N) = op(A) (M, K) . op(B) (K, N) + beta C,
// A and B packed (lda, ldb the row lengths as stored).
struct GemmProblem {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;
  int64_t lda = 0;
  const float* B = nullptr;
  int64_t ldb = 0;
  float beta = 0.f;
  float* C = nullptr;
  int64_t ldc = 0;
};

class Gemms {
 public:
  Gemms();
  ~Gemms();
  Gemms(const Gemms&) = delete;
  Gemms& operator=(const Gemms&) = delete;

  // alpha op(A) op(B) + beta C in FP32 (any leading dimensions).
  void fp32(const GemmProblem& p, float alpha, Stream s);
  // op(A) op(B) + beta C with A and B rounded to BF16 (packed operands).
  void bf16(const GemmProblem& p, Stream s);
  // Each problem as fp32() / bf16() computes it, all in one grouped GEMM;
  // the C matrices must not overlap. Problems with M, N or K of 0 are left
  // to the caller (skip them: a grouped GEMM of K = 0 would not scale C).
  void grouped(const std::vector<GemmProblem>& problems, bool bf16, Stream s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy::cuda
