#include "kernels/cuda/fp8_cuda.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "core/check.h"
#include "kernels/cuda/fp8_kernels.h"

namespace sy::cuda {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  SY_CHECK(e == cudaSuccess, "CUDA: {} failed: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}
void check_launch(const char* what) {
  check_cuda(cudaGetLastError(), what);
  check_cuda(cudaDeviceSynchronize(), what);
}
void check_lt(cublasStatus_t s, const char* what) {
  SY_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt: {} failed with status {}", what, static_cast<int>(s));
}

int64_t round_up4(int64_t n) { return (n + 3) / 4 * 4; }

// Rows of scales: one per row (1 x 128 tiles), one per 128 rows (blocks).
int64_t scaled_rows(const DeviceFp8& m) {
  return m.mode == ScaleMode::rows_1x128 ? m.rows : (m.rows + kFp8Block - 1) / kFp8Block;
}

struct Lt {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace;
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

QuantStats quantize(DeviceFp8& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                    bool transpose) {
  if (transpose) {  // quantize x^T: transpose first, as the CPU does
    t_transposed.resize(static_cast<size_t>(rows * cols) * sizeof(float));
    detail::transpose(t_transposed.as<float>(), x, rows, cols);
    check_launch("transpose");
    return quantize(out, t_transposed.as<float>(), cols, rows, o, false);
  }
  out.rows = rows, out.cols = cols, out.fmt = o.fmt, out.mode = o.mode;
  out.q.resize(static_cast<size_t>(rows * cols));
  const bool e4 = o.fmt == Fp8Format::e4m3;
  t_amax.resize(sizeof(float));
  check_cuda(cudaMemset(t_amax.as<float>(), 0, sizeof(float)), "memset");
  QuantStats st;
  if (o.mode == ScaleMode::tensor) {
    detail::amax(x, rows * cols, t_amax.as<float>());
    check_launch("amax");
    t_amax.download(&st.amax, sizeof(float));
    const float s = o.scale > 0 ? o.scale : fp8_scale_for(st.amax, o.fmt, o.pow2);
    const float sinv = 1.f / s;
    out.scale_ld = 1;
    out.scale_inv.upload(&sinv, sizeof(float));
    t_sat.resize(sizeof(unsigned long long));
    check_cuda(cudaMemset(t_sat.as<void>(), 0, sizeof(unsigned long long)), "memset");
    detail::quantize_tensor(out.q.as<uint8_t>(), x, rows * cols, s, e4, o.saturate, t_sat.as<unsigned long long>());
    check_launch("quantize (tensor)");
    unsigned long long sat = 0;
    t_sat.download(&sat, sizeof(sat));
    st.saturated = static_cast<int64_t>(sat);
    return st;
  }
  out.scale_ld = round_up4(scaled_rows(out));
  const size_t scale_bytes = static_cast<size_t>(out.scale_ld * out.kblocks()) * sizeof(float);
  out.scale_inv.resize(scale_bytes);
  check_cuda(cudaMemset(out.scale_inv.as<void>(), 0, scale_bytes), "memset");
  if (o.mode == ScaleMode::rows_1x128)
    detail::quantize_rows(out.q.as<uint8_t>(), out.scale_inv.as<float>(), out.scale_ld, x, rows, cols, e4, o.pow2,
                          o.saturate, t_amax.as<float>());
  else
    detail::quantize_blocks(out.q.as<uint8_t>(), out.scale_inv.as<float>(), out.scale_ld, x, rows, cols, e4, o.pow2,
                            o.saturate, t_amax.as<float>());
  check_launch("quantize (block scales)");
  t_amax.download(&st.amax, sizeof(float));
  return st;  // block scales come from each block's own amax: nothing saturates
}

Fp8Matrix to_host(const DeviceFp8& m) {
  Fp8Matrix h;
  h.rows = m.rows, h.cols = m.cols, h.fmt = m.fmt, h.mode = m.mode;
  h.q.resize(static_cast<size_t>(m.rows * m.cols));
  m.q.download(h.q.data(), h.q.size());
  if (m.mode == ScaleMode::tensor) {
    h.scale_inv.resize(1);
    m.scale_inv.download(h.scale_inv.data(), sizeof(float));
    return h;
  }
  const int64_t sr = scaled_rows(m), kb = m.kblocks();
  std::vector<float> dev(static_cast<size_t>(m.scale_ld * kb));
  m.scale_inv.download(dev.data(), dev.size() * sizeof(float));
  h.scale_inv.resize(static_cast<size_t>(sr * kb));
  for (int64_t r = 0; r < sr; ++r)
    for (int64_t b = 0; b < kb; ++b) h.scale_inv[static_cast<size_t>(r * kb + b)] = dev[static_cast<size_t>(b * m.scale_ld + r)];
  return h;
}

void from_host(DeviceFp8& m, const Fp8Matrix& h) {
  m.rows = h.rows, m.cols = h.cols, m.fmt = h.fmt, m.mode = h.mode;
  m.q.resize(h.q.size());
  m.q.upload(h.q.data(), h.q.size());
  if (h.mode == ScaleMode::tensor) {
    m.scale_ld = 1;
    m.scale_inv.resize(sizeof(float));
    m.scale_inv.upload(h.scale_inv.data(), sizeof(float));
    return;
  }
  const int64_t sr = scaled_rows(m), kb = m.kblocks();
  SY_CHECK(static_cast<int64_t>(h.scale_inv.size()) == sr * kb, "FP8 matrix {}x{} ({}) carries {} scales, not {}",
           h.rows, h.cols, to_string(h.mode), h.scale_inv.size(), sr * kb);
  m.scale_ld = round_up4(sr);
  std::vector<float> dev(static_cast<size_t>(m.scale_ld * kb), 0.f);
  for (int64_t r = 0; r < sr; ++r)
    for (int64_t b = 0; b < kb; ++b) dev[static_cast<size_t>(b * m.scale_ld + r)] = h.scale_inv[static_cast<size_t>(r * kb + b)];
  m.scale_inv.resize(dev.size() * sizeof(float));
  m.scale_inv.upload(dev.data(), dev.size() * sizeof(float));
}

void fp8_gemm(float* C, const DeviceFp8& A, const DeviceFp8& B, bool accumulate) {
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
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
  // cuBLAS A is our B, cuBLAS B is our A.
  const void* sa = B.scale_inv.as<void>();
  const void* sb = A.scale_inv.as<void>();
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa)), "A scale");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb)), "B scale");
  if (block) {
    const int32_t ma = lt_scale_mode(B.mode), mb = lt_scale_mode(A.mode);
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof(ma)), "A scale mode");
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof(mb)), "B scale mode");
  } else {
    const int8_t fast = 0;  // keep cuBLASLt's promotion of partial sums to FP32
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)), "FAST_ACCUM");
  }
  check_lt(cublasLtMatrixLayoutCreate(&la, data_type(B.fmt), static_cast<uint64_t>(K), static_cast<uint64_t>(N), K),
           "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&lb, data_type(A.fmt), static_cast<uint64_t>(K), static_cast<uint64_t>(M), K),
           "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, static_cast<uint64_t>(N), static_cast<uint64_t>(M), N),
           "layout C");
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  const size_t ws = l.workspace.bytes();
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
           "workspace");
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  check_lt(cublasLtMatmulAlgoGetHeuristic(l.handle, desc, la, lb, lc, lc, pref, 1, &heur, &found), "heuristic");
  SY_CHECK(found > 0, "cuBLASLt has no FP8 kernel for {}x{}x{} with {} / {} scales ({} x {})", M, N, K,
           to_string(A.mode), to_string(B.mode), to_string(A.fmt), to_string(B.fmt));
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  check_lt(cublasLtMatmul(l.handle, desc, &alpha, B.q.as<void>(), la, A.q.as<void>(), lb, &beta, C, lc, C, lc,
                          &heur.algo, l.workspace.as<void>(), ws, nullptr),
           "cublasLtMatmul");
  check_cuda(cudaDeviceSynchronize(), "FP8 GEMM");
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(desc);
}

}  // namespace sy::cuda
