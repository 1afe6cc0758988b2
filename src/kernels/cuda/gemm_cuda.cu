// The CUDA backend's GEMMs: see gemm_cuda.h.
#include "kernels/cuda/gemm_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <mutex>

#include "core/check.h"
#include "kernels/math.h"

namespace sy::cuda {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  SY_CHECK(e == cudaSuccess, "CUDA: {} failed: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}
void check_blas(cublasStatus_t s, const char* what) {
  SY_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLAS: {} failed with status {}", what, static_cast<int>(s));
}
cudaStream_t cs(Stream s) { return static_cast<cudaStream_t>(s.handle); }
int as_int(int64_t v, const char* what) {
  SY_CHECK(v >= 0 && v <= INT_MAX, "GEMM on the CUDA backend: {} = {} does not fit cuBLAS's int", what, v);
  return static_cast<int>(v);
}
cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>((n + kThreads - 1) / kThreads, 1), 4096));
}
constexpr size_t kAlign = 256;  // every operand the engine places starts on 256 bytes (cuBLAS wants 16)
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// ---- kernels -------------------------------------------------------------------
__global__ void to_bf16_kernel(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = math::bf16_round(src[i]);
}

// Up to kChunk arrays per launch, their pointers passed by value: captured
// at launch, so nothing on the host must outlive the call. 3 x 128 pointers
// plus lengths stay under the 4 KiB of kernel arguments every GPU takes.
constexpr int kChunk = 128;
struct RoundChunk {
  const float* src[kChunk];
  float* dst[kChunk];
  int64_t n[kChunk];
  int count;
};
// blockIdx.y: the array; dst = src rounded to BF16, kept in FP32.
__global__ void round_arrays_kernel(RoundChunk c) {
  const int a = blockIdx.y;
  const float* src = c.src[a];
  float* dst = c.dst[a];
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < c.n[a]; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = math::bf16_rounded(src[i]);
}
struct PtrChunk {
  void* p[3][kChunk];  // cuBLAS's A, B, C of each problem
  int count;
};
// out: [A[total], B[total], C[total]]; the chunk's problems start at `first`.
__global__ void fill_ptrs_kernel(void** out, int64_t total, int64_t first, PtrChunk c) {
  for (int i = threadIdx.x; i < c.count; i += blockDim.x)
    for (int r = 0; r < 3; ++r) out[r * total + first + i] = c.p[r][i];
}

// A grow-only device buffer; before it grows, the host waits for `done`
// (the last call that used it) so nothing in flight reads freed memory.
struct Workspace {
  void* p = nullptr;
  size_t n = 0;
  ~Workspace() {
    if (p) cudaFree(p);
  }
  void* get(size_t bytes, cudaEvent_t done) {
    if (bytes > n) {
      check_cuda(cudaEventSynchronize(done), "cudaEventSynchronize (workspace)");
      if (p) check_cuda(cudaFree(p), "cudaFree (workspace)");
      p = nullptr;
      const size_t want = std::max(bytes, n + n / 2);
      check_cuda(cudaMalloc(&p, want), "cudaMalloc (GEMM workspace)");
      n = want;
    }
    return p;
  }
};

}  // namespace

struct Gemms::Impl {
  cublasHandle_t blas = nullptr;
  // Recorded after each call's last use of the workspaces (and of the
  // handle's own cuBLAS workspace, which is one for all streams).
  cudaEvent_t done = nullptr;
  std::mutex mu;               // the handle's stream, the workspaces, the host arrays below
  Workspace operands, pointers;
  // The grouped GEMM's host arrays (read by cuBLAS during the call).
  std::vector<cublasOperation_t> opa, opb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  std::vector<float> alpha, beta;

  // Orders stream s after the previous user of the workspaces.
  void begin(Stream s) {
    check_cuda(cudaStreamWaitEvent(cs(s), done, 0), "cudaStreamWaitEvent");
    check_blas(cublasSetStream(blas, cs(s)), "cublasSetStream");
  }
  void end(Stream s) { check_cuda(cudaEventRecord(done, cs(s)), "cudaEventRecord"); }
};

Gemms::Gemms() : impl_(std::make_unique<Impl>()) {
  check_blas(cublasCreate(&impl_->blas), "cublasCreate");
  // FP32 GEMMs in FP32: the default math mode, set rather than assumed
  // (CUBLAS_TF32_TENSOR_OP_MATH would let cublasSgemm round inputs to TF32).
  check_blas(cublasSetMathMode(impl_->blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  check_cuda(cudaEventCreateWithFlags(&impl_->done, cudaEventDisableTiming), "cudaEventCreate");
}

Gemms::~Gemms() {
  cudaEventDestroy(impl_->done);
  cublasDestroy(impl_->blas);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS
// gets (B, A) with the dimensions (N, M, K).
void Gemms::fp32(const GemmProblem& p, float alpha, Stream s) {
  if (p.M == 0 || p.N == 0) return;
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lk(d.mu);
  d.begin(s);
  check_blas(cublasSgemm(d.blas, op(p.tb), op(p.ta), as_int(p.N, "N"), as_int(p.M, "M"), as_int(p.K, "K"), &alpha,
                         p.B, as_int(p.ldb, "ldb"), p.A, as_int(p.lda, "lda"), &p.beta, p.C, as_int(p.ldc, "ldc")),
             "cublasSgemm");
  d.end(s);
}

void Gemms::bf16(const GemmProblem& p, Stream s) {
  if (p.M == 0 || p.N == 0) return;
  Impl& d = *impl_;
  const int64_t na = p.M * p.K, nb = p.K * p.N;  // packed operands
  const float one = 1.f;
  std::lock_guard<std::mutex> lk(d.mu);
  auto* ws = static_cast<uint8_t*>(d.operands.get(aligned(na * 2) + aligned(nb * 2), d.done));
  auto* a16 = reinterpret_cast<uint16_t*>(ws);
  auto* b16 = reinterpret_cast<uint16_t*>(ws + aligned(na * 2));
  d.begin(s);
  if (na > 0) to_bf16_kernel<<<blocks_for(na), kThreads, 0, cs(s)>>>(a16, p.A, na);
  if (nb > 0) to_bf16_kernel<<<blocks_for(nb), kThreads, 0, cs(s)>>>(b16, p.B, nb);
  check_cuda(cudaGetLastError(), "BF16 operand conversion");
  check_blas(cublasGemmEx(d.blas, op(p.tb), op(p.ta), as_int(p.N, "N"), as_int(p.M, "M"), as_int(p.K, "K"), &one,
                          b16, CUDA_R_16BF, as_int(p.ldb, "ldb"), a16, CUDA_R_16BF, as_int(p.lda, "lda"), &p.beta,
                          p.C, CUDA_R_32F, as_int(p.ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx (BF16 inputs, FP32 output and accumulation)");
  d.end(s);
}

void Gemms::grouped(const std::vector<GemmProblem>& problems, bool bf16, Stream s) {
  const int64_t P = static_cast<int64_t>(problems.size());
  if (P == 0) return;
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lk(d.mu);
  const size_t np = static_cast<size_t>(P);
  d.opa.resize(np), d.opb.resize(np), d.m.resize(np), d.n.resize(np), d.k.resize(np), d.lda.resize(np);
  d.ldb.resize(np), d.ldc.resize(np), d.size.assign(np, 1), d.alpha.assign(np, 1.f), d.beta.resize(np);

  // BF16: each operand rounded into the workspace, each at 256 bytes.
  std::vector<const float*> a(np), b(np);
  for (size_t i = 0; i < np; ++i) a[i] = problems[i].A, b[i] = problems[i].B;
  uint8_t* ws = nullptr;
  if (bf16) {
    size_t bytes = 0;
    for (const GemmProblem& p : problems) bytes += aligned(p.M * p.K * 4) + aligned(p.K * p.N * 4);
    ws = static_cast<uint8_t*>(d.operands.get(bytes, d.done));
  }
  auto* ptrs = static_cast<void**>(d.pointers.get(3 * np * sizeof(void*), d.done));
  d.begin(s);

  bool aligned16 = true;  // FAST_TF32 wants 16-byte aligned matrices (else: plain FP32 compute)
  if (bf16) {
    RoundChunk rc{};
    size_t at = 0;
    int64_t longest = 0;
    auto flush = [&] {
      if (rc.count == 0) return;
      const dim3 grid(blocks_for(longest), static_cast<unsigned>(rc.count));
      round_arrays_kernel<<<grid, kThreads, 0, cs(s)>>>(rc);
      check_cuda(cudaGetLastError(), "BF16 rounding of grouped operands");
      rc.count = 0, longest = 0;
    };
    auto add = [&](const float* src, int64_t n) {
      float* dst = reinterpret_cast<float*>(ws + at);
      at += aligned(n * 4);
      if (n > 0) {
        rc.src[rc.count] = src, rc.dst[rc.count] = dst, rc.n[rc.count] = n, ++rc.count;
        longest = std::max(longest, n);
        if (rc.count == kChunk) flush();
      }
      return dst;
    };
    for (size_t i = 0; i < np; ++i) {
      a[i] = add(problems[i].A, problems[i].M * problems[i].K);
      b[i] = add(problems[i].B, problems[i].K * problems[i].N);
    }
    flush();
  }
  for (size_t i0 = 0; i0 < np; i0 += kChunk) {
    PtrChunk pc{};
    pc.count = static_cast<int>(std::min<size_t>(kChunk, np - i0));
    for (int j = 0; j < pc.count; ++j) {
      const size_t i = i0 + static_cast<size_t>(j);
      // swapped (column-major); cuBLAS only reads A and B
      pc.p[0][j] = const_cast<float*>(b[i]), pc.p[1][j] = const_cast<float*>(a[i]), pc.p[2][j] = problems[i].C;
      for (const void* q : {static_cast<const void*>(a[i]), static_cast<const void*>(b[i]),
                            static_cast<const void*>(problems[i].C)})
        aligned16 = aligned16 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
    }
    fill_ptrs_kernel<<<1, kThreads, 0, cs(s)>>>(ptrs, P, static_cast<int64_t>(i0), pc);
    check_cuda(cudaGetLastError(), "grouped GEMM pointer arrays");
  }
  for (size_t i = 0; i < np; ++i) {
    const GemmProblem& p = problems[i];
    d.opa[i] = op(p.tb), d.opb[i] = op(p.ta);
    d.m[i] = as_int(p.N, "N"), d.n[i] = as_int(p.M, "M"), d.k[i] = as_int(p.K, "K");
    d.lda[i] = as_int(p.ldb, "ldb"), d.ldb[i] = as_int(p.lda, "lda"), d.ldc[i] = as_int(p.ldc, "ldc");
    d.beta[i] = p.beta;
  }
  const cublasComputeType_t compute = bf16 && aligned16 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check_blas(cublasGemmGroupedBatchedEx(d.blas, d.opa.data(), d.opb.data(), d.m.data(), d.n.data(), d.k.data(),
                                        d.alpha.data(), ptrs, CUDA_R_32F, d.lda.data(), ptrs + P, CUDA_R_32F,
                                        d.ldb.data(), d.beta.data(), ptrs + 2 * P,
                                        CUDA_R_32F, d.ldc.data(), as_int(P, "groups"), d.size.data(), compute),
             "cublasGemmGroupedBatchedEx");
  d.end(s);
}

}  // namespace sy::cuda
