#include "kernels/cuda/fp8_cuda.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <vector>

#include "core/check.h"
#include "kernels/cuda/fp8_kernels.h"

namespace sy::cuda {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  SY_CHECK(e == cudaSuccess, "CUDA: {} failed: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}
void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }
cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }
// A device value into host memory, once the stream has computed it.
template <class T>
T fetch(const DeviceBuffer& b, void* stream, const char* what) {
  T v{};
  check_cuda(cudaMemcpyAsync(&v, b.as<T>(), sizeof(T), cudaMemcpyDeviceToHost, cs(stream)), what);
  check_cuda(cudaStreamSynchronize(cs(stream)), what);
  return v;
}
void check_lt(cublasStatus_t s, const char* what) {
  SY_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt: {} failed with status {}", what, static_cast<int>(s));
}

class CudaMemory final : public Allocator {
 public:
  Device device() const override { return Device::cuda; }
  void* allocate(size_t bytes, size_t) override {  // cudaMalloc aligns to 256 bytes
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc");
    return p;
  }
  void deallocate(void* p, size_t, size_t) override { cudaFree(p); }  // at exit the runtime may be gone: no check
};

// A GEMM shape's cuBLASLt descriptor, layouts and algorithm, found once and
// reused: the heuristic query costs more than a small GEMM. Only the scale
// pointers change per call. Kept for the process (its handles are not
// destroyed at exit, when the CUDA runtime may be gone already).
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
};
// M, N, K, the formats and scale modes of A and B, and the alignments of A, B
// and C (an algorithm is chosen for the alignment the pointers have).
using LtKey = std::array<int64_t, 10>;

struct Lt {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace;
  std::mutex mu;  // the plans, and a plan's descriptor while its scale pointers are set and the GEMM enqueued
  std::map<LtKey, LtPlan> plans;
  Lt() {
    check_lt(cublasLtCreate(&handle), "cublasLtCreate");
    workspace.resize(32u << 20);
  }
};
Lt& lt() {
  static Lt instance;
  return instance;
}

thread_local DeviceBuffer t_transposed, t_amax, t_sat;

cudaDataType_t data_type(Fp8Format f) { return f == Fp8Format::e4m3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2; }

// The alignment of a device pointer that cuBLASLt asks about: its lowest set
// bit, at most 256 (cudaMalloc's; cuBLASLt's default assumption).
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return a == 0 ? 256u : static_cast<uint32_t>(std::min<uintptr_t>(256, a & (~a + 1)));
}

int32_t lt_scale_mode(ScaleMode m) {
  switch (m) {
    case ScaleMode::tensor: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    case ScaleMode::rows_1x128: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    default: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  }
}

}  // namespace

namespace {
// Device 0 as found once per process: its properties, or why there is none.
struct DeviceInfo {
  bool present = false;
  std::string why;
  cudaDeviceProp prop{};
};
const DeviceInfo& device() {
  static const DeviceInfo info = [] {
    DeviceInfo d;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      d.why = e != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(e) : "no CUDA device";
      cudaGetLastError();  // clear it
      return d;
    }
    check_cuda(cudaGetDeviceProperties(&d.prop, 0), "cudaGetDeviceProperties");
    d.present = true;
    return d;
  }();
  return info;
}
}  // namespace

bool fp8_device_available(std::string* why) {
  const DeviceInfo& d = device();
  if (!d.present) {
    if (why) *why = d.why;
    return false;
  }
  const cudaDeviceProp& p = d.prop;
  if (p.major * 10 + p.minor < 89) {
    if (why) *why = fmt::format("{} is sm_{}{}: FP8 tensor cores need sm_89 or newer", p.name, p.major, p.minor);
    return false;
  }
  return true;
}

bool fp8_block_scaling_supported(std::string* why) {
  if (!fp8_device_available(why)) return false;
  const cudaDeviceProp& p = device().prop;
  if (p.major != 9) {
    if (why) *why = fmt::format("{} is sm_{}{}: cuBLASLt's VEC128 / BLK128x128 scales are an sm_90 feature", p.name,
                                p.major, p.minor);
    return false;
  }
  if (cublasLtGetVersion() < 120900) {
    if (why) *why = fmt::format("cuBLASLt {} predates block scaling (12.9)", cublasLtGetVersion());
    return false;
  }
  return true;
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) cudaFree(p_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}

void DeviceBuffer::resize(size_t bytes) {
  if (bytes <= n_) return;
  if (p_) cudaFree(p_);
  p_ = nullptr, n_ = 0;
  check_cuda(cudaMalloc(&p_, std::max<size_t>(bytes, 16)), "cudaMalloc");
  n_ = bytes;
}

void DeviceBuffer::upload(const void* host, size_t bytes) {
  resize(bytes);
  check_cuda(cudaMemcpy(p_, host, bytes, cudaMemcpyHostToDevice), "upload");
}

void DeviceBuffer::download(void* host, size_t bytes) const {
  SY_CHECK(bytes <= n_, "download of {} bytes from a device buffer of {}", bytes, n_);
  check_cuda(cudaMemcpy(host, p_, bytes, cudaMemcpyDeviceToHost), "download");
}

Allocator& device_memory() {
  static CudaMemory m;
  return m;
}

QuantStats quantize(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                    bool transpose, Allocator& mem, void* stream) {
  if (transpose) {  // quantize x^T: transpose first, as the CPU does
    t_transposed.resize(static_cast<size_t>(rows * cols) * sizeof(float));
    detail::transpose(t_transposed.as<float>(), x, rows, cols, stream);
    check_launch("transpose");
    return quantize(out, t_transposed.as<float>(), cols, rows, o, false, mem, stream);
  }
  SY_CHECK(mem.device() == Device::cuda, "FP8 quantize on the GPU into {} memory", device_name(mem.device()));
  out.shape(rows, cols, o.fmt, o.mode, mem);
  const bool e4 = o.fmt == Fp8Format::e4m3;
  t_amax.resize(sizeof(float));
  check_cuda(cudaMemsetAsync(t_amax.as<float>(), 0, sizeof(float), cs(stream)), "memset");
  QuantStats st;
  if (o.mode == ScaleMode::tensor) {
    detail::amax(x, rows * cols, t_amax.as<float>(), stream);
    check_launch("amax");
    st.amax = fetch<float>(t_amax, stream, "amax");
    const float s = o.scale > 0 ? o.scale : fp8_scale_for(st.amax, o.fmt, o.pow2);
    const float sinv = 1.f / s;  // pageable: copied out before the call returns
    check_cuda(cudaMemcpyAsync(out.scale_inv.data(), &sinv, sizeof(float), cudaMemcpyHostToDevice, cs(stream)),
               "scale upload");
    t_sat.resize(sizeof(unsigned long long));
    check_cuda(cudaMemsetAsync(t_sat.as<void>(), 0, sizeof(unsigned long long), cs(stream)), "memset");
    detail::quantize_tensor(out.q.data(), x, rows * cols, s, e4, o.saturate, t_sat.as<unsigned long long>(), stream);
    check_launch("quantize (tensor)");
    st.saturated = static_cast<int64_t>(fetch<unsigned long long>(t_sat, stream, "saturation count"));
    return st;
  }
  check_cuda(cudaMemsetAsync(out.scale_inv.data(), 0, out.scale_count() * sizeof(float), cs(stream)), "memset");
  if (o.mode == ScaleMode::rows_1x128)
    detail::quantize_rows(out.q.data(), out.scale_inv.data(), out.scale_ld, x, rows, cols, e4, o.pow2, o.saturate,
                          t_amax.as<float>(), stream);
  else
    detail::quantize_blocks(out.q.data(), out.scale_inv.data(), out.scale_ld, x, rows, cols, e4, o.pow2, o.saturate,
                            t_amax.as<float>(), stream);
  check_launch("quantize (block scales)");
  st.amax = fetch<float>(t_amax, stream, "amax");
  return st;  // block scales come from each block's own amax: nothing saturates
}

Fp8Matrix to_host(const Fp8Matrix& m) {
  Fp8Matrix h;
  h.shape(m.rows, m.cols, m.fmt, m.mode, host_allocator());
  check_cuda(cudaMemcpy(h.q.data(), m.q.data(), m.code_count(), cudaMemcpyDeviceToHost), "codes to the host");
  check_cuda(cudaMemcpy(h.scale_inv.data(), m.scale_inv.data(), m.scale_count() * sizeof(float),
                        cudaMemcpyDeviceToHost), "scales to the host");
  return h;
}

void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate, void* stream) {
  const int64_t M = A.rows, N = B.rows, K = A.cols;
  SY_CHECK(A.cols == B.cols, "FP8 GEMM: A is {}x{}, B is {}x{}: K differs", A.rows, A.cols, B.rows, B.cols);
  SY_CHECK(K % 16 == 0, "FP8 GEMM: K = {} must be a multiple of 16 for cuBLASLt FP8", K);
  SY_CHECK(!(A.fmt == Fp8Format::e5m2 && B.fmt == Fp8Format::e5m2), "FP8 GEMM: E5M2 x E5M2 has no tensor-core kernel");
  const bool block = A.mode != ScaleMode::tensor || B.mode != ScaleMode::tensor;
  if (block) {
    SY_CHECK(A.mode == ScaleMode::rows_1x128 && B.mode != ScaleMode::tensor,
             "FP8 GEMM: block scaling takes A in 1 x 128 tiles and B in 1 x 128 tiles or 128 x 128 blocks "
             "(got {} and {})", to_string(A.mode), to_string(B.mode));
    std::string why;
    SY_CHECK(fp8_block_scaling_supported(&why), "FP8 GEMM with block scales: {}", why);
  }
  Lt& l = lt();
  // cuBLAS A is our B, cuBLAS B is our A; D = C.
  const uint32_t align_a = alignment(B.q.data()), align_b = alignment(A.q.data()), align_c = alignment(C);
  const LtKey key{M, N, K, static_cast<int64_t>(A.fmt), static_cast<int64_t>(B.fmt), static_cast<int64_t>(A.mode),
                  static_cast<int64_t>(B.mode), align_a, align_b, align_c};
  std::lock_guard<std::mutex> lk(l.mu);
  auto it = l.plans.find(key);
  if (it == l.plans.end()) {
    LtPlan p;
    check_lt(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
    check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
    if (block) {
      const int32_t ma = lt_scale_mode(B.mode), mb = lt_scale_mode(A.mode);
      check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof(ma)),
               "A scale mode");
      check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof(mb)),
               "B scale mode");
    } else {
      const int8_t fast = 0;  // keep cuBLASLt's promotion of partial sums to FP32
      check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)),
               "FAST_ACCUM");
    }
    check_lt(cublasLtMatrixLayoutCreate(&p.la, data_type(B.fmt), static_cast<uint64_t>(K), static_cast<uint64_t>(N), K),
             "layout A");
    check_lt(cublasLtMatrixLayoutCreate(&p.lb, data_type(A.fmt), static_cast<uint64_t>(K), static_cast<uint64_t>(M), K),
             "layout B");
    check_lt(cublasLtMatrixLayoutCreate(&p.lc, CUDA_R_32F, static_cast<uint64_t>(N), static_cast<uint64_t>(M), N),
             "layout C");
    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
    const size_t ws = l.workspace.bytes();
    check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
             "workspace");
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a}, {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c}, {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}};
    for (const auto& [attr, v] : aligns)
      check_lt(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v)), "alignment");
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    check_lt(cublasLtMatmulAlgoGetHeuristic(l.handle, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &heur, &found),
             "heuristic");
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      cublasLtMatrixLayoutDestroy(p.lc);
      cublasLtMatrixLayoutDestroy(p.lb);
      cublasLtMatrixLayoutDestroy(p.la);
      cublasLtMatmulDescDestroy(p.desc);
      SY_FAIL("cuBLASLt has no FP8 kernel for {}x{}x{} with {} / {} scales ({} x {}), operands aligned to {} / {} / "
              "{} bytes", M, N, K, to_string(A.mode), to_string(B.mode), to_string(A.fmt), to_string(B.fmt), align_b,
              align_a, align_c);
    }
    p.algo = heur.algo;
    it = l.plans.emplace(key, p).first;
  }
  const LtPlan& p = it->second;
  const void* sa = B.scale_inv.data();
  const void* sb = A.scale_inv.data();
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa)), "A scale");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb)), "B scale");
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  check_lt(cublasLtMatmul(l.handle, p.desc, &alpha, B.q.data(), p.la, A.q.data(), p.lb, &beta, C, p.lc, C, p.lc,
                          &p.algo, l.workspace.as<void>(), l.workspace.bytes(), cs(stream)),
           "cublasLtMatmul");
}

}  // namespace sy::cuda
