// GEMM TFLOP/s on one NVIDIA GPU, each result checked before it is timed:
//   bf16        cublasGemmEx, BF16 in, FP32 accumulation;
//   fp8_tensor  cublasLtMatmul, E4M3 with one scale per tensor (SCALAR_32F,
//               FAST_ACCUM off): the per-tensor recipes' GEMM;
//   fp8_block   cublasLtMatmul, A in 1 x 128 tiles (VEC128_32F) x B in
//               128 x 128 blocks (BLK128x128_32F): the fp8-block recipe;
//   grouped     several experts' GEMMs (different row counts) in one
//               cublasGemmGroupedBatchedEx call, against one cublasGemmEx of
//               the same FLOPs and against a loop of one call per expert.
// These are the cuBLAS / cuBLASLt calls with the settings Switchyard's
// kernels/cuda/fp8_cuda.cpp makes (C = A * B^T, row-major, the TN mapping),
// called directly so that this program needs nothing but the CUDA toolkit.
//
// Check: C is poisoned (NaN) before the first run; after it and again after
// the timed runs every element must be finite and sampled entries must match
// a host reference in double from the same inputs (bench/gpu/gemm_check.h,
// tolerances stated there). A case that fails prints WRONG and no TFLOP/s,
// and the program exits 1.
// Timing: CUDA events around each call on one stream, warm-up (at least
// --warmup calls and 50 ms), median of --iters.
//
// Output: one JSON line per case (stdout or --json FILE) and a table.
// Exit: 0 all good, 1 a wrong result or a CUDA error, 2 bad arguments,
// 3 no usable GPU (one line on stderr saying why).
//
//   sy-bench-gemm-cuda                         the default shapes
//   sy-bench-gemm-cuda --small                 small shapes (a quick check)
//   sy-bench-gemm-cuda --probe                 the GPU and library versions, or exit 3
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm_check.h"

using namespace sybench;

namespace {

constexpr int kExitWrong = 1, kExitUsage = 2, kExitNoGpu = 3;

std::string strf(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(strf("CUDA %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}
// A combination cuBLAS(Lt) has no kernel for: reported, not an error.
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void ckb(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) throw Unsupported(strf("cuBLAS %s: %s", what, cublasGetStatusString(s)));
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(strf("cuBLAS %s: %s", what, cublasGetStatusString(s)));
}

struct Dev {
  void* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t bytes) : n(bytes) { ck(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc"); }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
  void upload(const void* h, size_t bytes) { ck(cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice), "upload"); }
};

constexpr int kThreads = 256;
int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 132 * 16)); }

__global__ void fill_bf16(uint16_t* out, int64_t rows, int64_t cols, uint64_t seed, int64_t row0) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * cols; t += gridDim.x * int64_t(blockDim.x))
    out[t] = bf16_bits(seed, static_cast<uint64_t>(row0 + t / cols), static_cast<uint64_t>(t % cols));
}
__global__ void fill_e4m3(uint8_t* out, int64_t rows, int64_t cols, uint64_t seed, int64_t row0) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * cols; t += gridDim.x * int64_t(blockDim.x))
    out[t] = e4m3_code(seed, static_cast<uint64_t>(row0 + t / cols), static_cast<uint64_t>(t % cols));
}
// 0x7FC07FC0 is a NaN as one FP32 word and as two BF16 halves.
__global__ void poison(uint32_t* p, int64_t words) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < words; t += gridDim.x * int64_t(blockDim.x))
    p[t] = 0x7FC07FC0u;
}
__global__ void count_nonfinite(const void* c, int64_t n, bool bf16, unsigned long long* bad) {
  unsigned long long mine = 0;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += gridDim.x * int64_t(blockDim.x)) {
    const bool inf_nan = bf16 ? (static_cast<const uint16_t*>(c)[t] & 0x7F80u) == 0x7F80u
                              : (static_cast<const uint32_t*>(c)[t] & 0x7F800000u) == 0x7F800000u;
    mine += inf_nan;
  }
  if (mine) atomicAdd(bad, mine);
}

struct Shape {
  int64_t M, N, K;
};

struct Opts {
  std::vector<Shape> shapes = {{4096, 4096, 4096}, {8192, 8192, 8192}, {16384, 2048, 7168}};
  std::vector<int64_t> group_rows = {2672, 1008, 2320, 1552, 2064, 3056, 1296, 2416};  // 16384 rows, uneven
  int64_t group_n = 2048, group_k = 7168;  // an expert's w1 in a DeepSeek-V3-sized layer (F x C)
  int iters = 20, warmup = 3, samples = 192;
  Out out = Out::f32;
  bool probe = false, layout_probe = true;
  std::string json;
};

struct Result {
  std::string op, status = "ok", why, layout, out;
  int64_t M = 0, N = 0, K = 0;
  double median_ms = 0, min_ms = 0, tflops = 0;
  int iters = 0;
  Verdict v;
  unsigned long long nonfinite = 0;
  std::string extra;  // more JSON fields, ',"key":value' each
};

std::string gpu_name;
FILE* json_out = stdout;
std::vector<Result> results;

void emit(const Result& r) {
  std::string s = strf("{\"bench\":\"gemm_cuda\",\"gpu\":\"%s\",\"op\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,"
                       "\"out\":\"%s\",\"status\":\"%s\"",
                       gpu_name.c_str(), r.op.c_str(), (long long)r.M, (long long)r.N, (long long)r.K, r.out.c_str(),
                       r.status.c_str());
  if (!r.layout.empty()) s += strf(",\"scale_layout\":\"%s\"", r.layout.c_str());
  if (r.status == "ok") s += strf(",\"median_ms\":%.5f,\"min_ms\":%.5f,\"tflops\":%.2f,\"iters\":%d", r.median_ms, r.min_ms, r.tflops, r.iters);
  if (r.v.checked) s += strf(",\"checked\":%d,\"wrong\":%d,\"worst_over_tol\":%.3g,\"nonfinite\":%llu", r.v.checked, r.v.wrong, r.v.worst, r.nonfinite);
  if (!r.why.empty()) {
    std::string w;
    for (char c : r.why) w += (c == '"' || c == '\\') ? ' ' : c;
    s += ",\"why\":\"" + w + "\"";
  }
  s += r.extra + "}";
  fprintf(json_out, "%s\n", s.c_str());
  fflush(json_out);
}

// One checked, timed GEMM case: `parts` are the GEMMs whose outputs land in
// C (one, or one per expert, C rows a_row0 .. a_row0 + M).
struct Case {
  std::string op;
  std::vector<Problem> parts;
  int64_t c_rows = 0, N = 0;
  Out out = Out::f32;
  double flops = 0;
};

Verdict check(const Case& c, const void* C, Out out, int samples, unsigned long long* nonfinite, cudaStream_t s) {
  ck(cudaStreamSynchronize(s), "GEMM");
  const int64_t n = c.c_rows * c.N;
  Dev bad(sizeof(unsigned long long));
  ck(cudaMemset(bad.p, 0, sizeof(unsigned long long)), "memset");
  count_nonfinite<<<grid_for(n), kThreads, 0, s>>>(C, n, out == Out::bf16, bad.as<unsigned long long>());
  ck(cudaGetLastError(), "count_nonfinite");
  ck(cudaMemcpy(nonfinite, bad.p, sizeof *nonfinite, cudaMemcpyDeviceToHost), "download");
  Verdict all;
  const size_t esz = out == Out::f32 ? 4 : 2;
  const int per = std::max(8, samples / static_cast<int>(c.parts.size()));
  for (size_t e = 0; e < c.parts.size(); ++e) {
    const Problem& p = c.parts[e];
    const auto smp = sybench::samples(p.M, p.N, per, 0x5EED + e);
    std::vector<double> got;
    for (const Sample& t : smp) {
      uint32_t raw = 0;
      const size_t idx = static_cast<size_t>((p.a_row0 + t.i) * c.N + t.j);
      ck(cudaMemcpy(&raw, static_cast<const char*>(C) + idx * esz, esz, cudaMemcpyDeviceToHost), "sample");
      got.push_back(out_value(&raw, 0, out));
    }
    // Sample rows are local to the part; the reference takes global A rows via a_row0.
    Verdict v = verify(p, smp, got, out);
    all.checked += v.checked, all.wrong += v.wrong;
    if (v.worst > all.worst || all.worst_i < 0) {
      all.worst = v.worst, all.worst_i = p.a_row0 + v.worst_i, all.worst_j = v.worst_j;
      all.worst_got = v.worst_got, all.worst_want = v.worst_want;
    }
  }
  return all;
}

void run_case(const Case& c, const std::function<void(cudaStream_t)>& op, void* C, const Opts& o, cudaStream_t s,
              Result r) {
  r.op = c.op, r.M = c.c_rows, r.N = c.N, r.K = c.parts[0].K, r.out = out_name(c.out);
  try {
    const int64_t words = (c.c_rows * c.N * (c.out == Out::f32 ? 4 : 2) + 3) / 4;
    poison<<<grid_for(words), kThreads, 0, s>>>(static_cast<uint32_t*>(C), words);
    ck(cudaGetLastError(), "poison");
    op(s);
    ck(cudaGetLastError(), "GEMM launch");
    r.v = check(c, C, c.out, o.samples, &r.nonfinite, s);
    auto wrong = [&](const char* when) {
      r.status = "wrong";
      r.why = strf("%s: %llu non-finite outputs, %d of %d sampled entries off (worst C[%lld][%lld] = %.9g, reference %.9g, "
                   "%.3g x tolerance)",
                   when, r.nonfinite, r.v.wrong, r.v.checked, (long long)r.v.worst_i, (long long)r.v.worst_j,
                   r.v.worst_got, r.v.worst_want, r.v.worst);
    };
    if (r.nonfinite || !r.v.ok()) {
      wrong("first run");
    } else {
      cudaEvent_t a, b;
      ck(cudaEventCreate(&a), "event");
      ck(cudaEventCreate(&b), "event");
      float warm_ms = 0;
      int w = 0;
      for (; w < 200 && (w < o.warmup || warm_ms < 50.f); ++w) {  // warm-up: clocks up, heuristics cached
        ck(cudaEventRecord(a, s), "event");
        op(s);
        ck(cudaEventRecord(b, s), "event");
        ck(cudaEventSynchronize(b), "warm-up");
        float ms = 0;
        ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
        warm_ms += ms;
      }
      // Each sample times `reps` calls queued back to back (about 5 ms), so
      // host launch gaps between calls do not count; its time per call.
      const double per_call = std::max(1e-3, static_cast<double>(warm_ms) / w);
      const int reps = std::max(1, std::min(50, static_cast<int>(std::ceil(5.0 / per_call))));
      std::vector<float> t;
      for (int i = 0; i < o.iters; ++i) {
        ck(cudaEventRecord(a, s), "event");
        for (int rep = 0; rep < reps; ++rep) op(s);
        ck(cudaEventRecord(b, s), "event");
        ck(cudaEventSynchronize(b), "timed run");
        float ms = 0;
        ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
        t.push_back(ms / reps);
      }
      r.extra += strf(",\"calls_per_sample\":%d", reps);
      cudaEventDestroy(a);
      cudaEventDestroy(b);
      std::sort(t.begin(), t.end());
      r.median_ms = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
      r.min_ms = t.front();
      r.iters = o.iters;
      r.tflops = c.flops / (r.median_ms * 1e-3) / 1e12;
      r.v = check(c, C, c.out, o.samples, &r.nonfinite, s);  // the timed runs wrote it again
      if (r.nonfinite || !r.v.ok()) wrong("after the timed runs");
    }
  } catch (const Unsupported& e) {
    r.status = "unsupported", r.why = e.what();
  } catch (const std::exception& e) {
    r.status = "error", r.why = e.what();
    cudaGetLastError();
  }
  emit(r);
  results.push_back(r);
}

cudaDataType_t out_type(Out o) { return o == Out::f32 ? CUDA_R_32F : CUDA_R_16BF; }
size_t out_bytes(Out o) { return o == Out::f32 ? 4 : 2; }

// cuBLAS A = our B (K x N col-major, ld K, transposed), cuBLAS B = our A
// (K x M, ld K), D = C^T column-major = our C row-major (ld N).
void gemm_bf16(cublasHandle_t h, cudaStream_t s, const void* A, const void* B, void* C, int64_t M, int64_t N, int64_t K,
               Out out) {
  const float one = 1.f, zero = 0.f;
  ckb(cublasSetStream(h, s), "SetStream");
  ckb(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &one, B, CUDA_R_16BF, int(K), A, CUDA_R_16BF,
                   int(K), &zero, C, out_type(out), int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx (BF16)");
}

// The FP8 matmul as kernels/cuda/fp8_cuda.cpp sets it up, descriptors made once.
struct LtFp8 {
  cublasLtHandle_t lt = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  cublasLtMatmulAlgo_t algo{};
  Dev* ws = nullptr;
  const void *A = nullptr, *B = nullptr;
  void* C = nullptr;
  LtFp8(cublasLtHandle_t h, Dev& workspace, Kind kind, const void* A_, const void* sa, const void* B_, const void* sb,
        void* C_, int64_t M, int64_t N, int64_t K, Out out)
      : lt(h), ws(&workspace), A(A_), B(B_), C(C_) {
    ckb(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
    ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
    ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb, sizeof sb), "A scale");  // cuBLAS A = our B
    ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa, sizeof sa), "B scale");
    if (kind == Kind::fp8_block) {
      const int32_t ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
      ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma), "A scale mode");
      ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb), "B scale mode");
    } else {
      const int8_t fast = 0;  // cuBLASLt promotes partial sums to FP32 (fp8_cuda's setting)
      ckb(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast), "FAST_ACCUM");
    }
    ckb(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), K), "layout A");
    ckb(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(M), K), "layout B");
    ckb(cublasLtMatrixLayoutCreate(&lc, out_type(out), uint64_t(N), uint64_t(M), N), "layout C");
    ckb(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
    const size_t wsz = ws->n;
    ckb(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz), "workspace");
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &heur, &found);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0)
      throw Unsupported(strf("cuBLASLt %zu has no %s kernel for %lldx%lldx%lld with %s output (%s)", cublasLtGetVersion(),
                             kind_name(kind), (long long)M, (long long)N, (long long)K, out_name(out),
                             st == CUBLAS_STATUS_SUCCESS ? "no algorithm found" : cublasGetStatusString(st)));
    algo = heur.algo;
  }
  void operator()(cudaStream_t s) const {
    const float one = 1.f, zero = 0.f;
    ckb(cublasLtMatmul(lt, desc, &one, B, la, A, lb, &zero, C, lc, C, lc, &algo, ws->p, ws->n, s), "cublasLtMatmul");
  }
  ~LtFp8() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

constexpr uint64_t kSeedA = 11, kSeedB = 22, kSeedW = 1000;

void bench_shape(const Shape& sh, const Opts& o, cublasHandle_t h, cublasLtHandle_t lt, Dev& ws, cudaStream_t s,
                 bool layout_probe) {
  const int64_t M = sh.M, N = sh.N, K = sh.K;
  const double flops = 2.0 * M * N * K;
  Dev C(static_cast<size_t>(M * N) * out_bytes(o.out));
  {  // BF16
    Problem p{Kind::bf16, M, N, K, kSeedA, kSeedB, 0};
    Dev A(size_t(M * K) * 2), B(size_t(N * K) * 2);
    fill_bf16<<<grid_for(M * K), kThreads, 0, s>>>(A.as<uint16_t>(), M, K, kSeedA, 0);
    fill_bf16<<<grid_for(N * K), kThreads, 0, s>>>(B.as<uint16_t>(), N, K, kSeedB, 0);
    ck(cudaGetLastError(), "fill");
    Case c{"bf16", {p}, M, N, o.out, flops};
    run_case(c, [&](cudaStream_t st) { gemm_bf16(h, st, A.p, B.p, C.p, M, N, K, o.out); }, C.p, o, s, Result{});
  }
  Dev A(size_t(M * K)), B(size_t(N * K));
  fill_e4m3<<<grid_for(M * K), kThreads, 0, s>>>(A.as<uint8_t>(), M, K, kSeedA, 0);
  fill_e4m3<<<grid_for(N * K), kThreads, 0, s>>>(B.as<uint8_t>(), N, K, kSeedB, 0);
  ck(cudaGetLastError(), "fill");
  {  // FP8, one scale per tensor
    Problem p{Kind::fp8_tensor, M, N, K, kSeedA, kSeedB, 0};
    const float sa = a_scale_inv(p, 0, 0), sb = b_scale_inv(p, 0, 0);
    Dev dsa(4), dsb(4);
    dsa.upload(&sa, 4), dsb.upload(&sb, 4);
    Case c{"fp8_tensor", {p}, M, N, o.out, flops};
    std::unique_ptr<LtFp8> g;
    run_case(c, [&](cudaStream_t st) {
        if (!g) g.reset(new LtFp8(lt, ws, Kind::fp8_tensor, A.p, dsa.p, B.p, dsb.p, C.p, M, N, K, o.out));
        (*g)(st);
      }, C.p, o, s, Result{});
  }
  // FP8 block scales: Switchyard's layout (outer-major for both: fp8_cuda.cpp's
  // from_host), then, once, the other three so a wrong layout names the right one.
  std::vector<std::pair<ScaleLayout, ScaleLayout>> layouts = {{ScaleLayout::outer_major, ScaleLayout::outer_major}};
  if (layout_probe)
    layouts.insert(layouts.end(), {{ScaleLayout::outer_major, ScaleLayout::k_major},
                                   {ScaleLayout::k_major, ScaleLayout::outer_major},
                                   {ScaleLayout::k_major, ScaleLayout::k_major}});
  for (size_t li = 0; li < layouts.size(); ++li) {
    Problem p{Kind::fp8_block, M, N, K, kSeedA, kSeedB, 0};
    const auto ha = block_scales(p, true, layouts[li].first), hb = block_scales(p, false, layouts[li].second);
    Dev dsa(ha.size() * 4), dsb(hb.size() * 4);
    dsa.upload(ha.data(), ha.size() * 4), dsb.upload(hb.data(), hb.size() * 4);
    Case c{li == 0 ? "fp8_block" : "fp8_block_layout_probe", {p}, M, N, o.out, flops};
    Result r;
    r.layout = strf("A:%s,B:%s", layout_name(layouts[li].first), layout_name(layouts[li].second));
    std::unique_ptr<LtFp8> g;
    run_case(c, [&](cudaStream_t st) {
        if (!g) g.reset(new LtFp8(lt, ws, Kind::fp8_block, A.p, dsa.p, B.p, dsb.p, C.p, M, N, K, o.out));
        (*g)(st);
      }, C.p, o, s, r);
  }
}

void bench_grouped(const Opts& o, cublasHandle_t h, cudaStream_t s) {
  const int64_t E = static_cast<int64_t>(o.group_rows.size()), N = o.group_n, K = o.group_k;
  std::vector<int64_t> off(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) off[e + 1] = off[e] + o.group_rows[e];
  const int64_t rows = off[E];
  const double flops = 2.0 * rows * N * K;
  // BF16 output for all three: what torch's grouped and per-expert products
  // write, and a type every cuBLAS grouped kernel takes.
  const Out out = Out::bf16;
  Dev A(size_t(rows * K) * 2), W(size_t(E * N * K) * 2), C(size_t(rows * N) * out_bytes(out));
  fill_bf16<<<grid_for(rows * K), kThreads, 0, s>>>(A.as<uint16_t>(), rows, K, kSeedA, 0);
  for (int64_t e = 0; e < E; ++e)
    fill_bf16<<<grid_for(N * K), kThreads, 0, s>>>(W.as<uint16_t>() + e * N * K, N, K, kSeedW + e, 0);
  ck(cudaGetLastError(), "fill");
  Case experts{"grouped_bf16", {}, rows, N, out, flops};
  for (int64_t e = 0; e < E; ++e) experts.parts.push_back(Problem{Kind::bf16, o.group_rows[e], N, K, kSeedA, kSeedW + e, off[e]});
  std::string rows_json = ",\"experts\":" + std::to_string(E) + ",\"rows\":[";
  for (int64_t e = 0; e < E; ++e) rows_json += (e ? "," : "") + std::to_string(o.group_rows[e]);
  rows_json += "]";

  // One grouped call: group e is expert e (group_size 1); pointer arrays on the device.
  const size_t ob = out_bytes(out);
  std::vector<const void*> pa(E), pb(E);
  std::vector<void*> pc(E);
  for (int64_t e = 0; e < E; ++e) {
    pa[e] = W.as<uint16_t>() + e * N * K;  // cuBLAS A = expert e's weight
    pb[e] = A.as<uint16_t>() + off[e] * K;  // cuBLAS B = its rows
    pc[e] = static_cast<char*>(C.p) + size_t(off[e] * N) * ob;
  }
  Dev dpa(E * sizeof(void*)), dpb(E * sizeof(void*)), dpc(E * sizeof(void*));
  dpa.upload(pa.data(), E * sizeof(void*)), dpb.upload(pb.data(), E * sizeof(void*)), dpc.upload(pc.data(), E * sizeof(void*));
  std::vector<cublasOperation_t> ta(E, CUBLAS_OP_T), tb(E, CUBLAS_OP_N);
  std::vector<int> m(E, int(N)), n(E), k(E, int(K)), lda(E, int(K)), ldb(E, int(K)), ldc(E, int(N)), gsize(E, 1);
  for (int64_t e = 0; e < E; ++e) n[e] = int(o.group_rows[e]);
  std::vector<float> alpha(E, 1.f), beta(E, 0.f);
  Result rg;
  rg.extra = rows_json;
  run_case(experts, [&](cudaStream_t st) {
      ckb(cublasSetStream(h, st), "SetStream");
      ckb(cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
                                     dpa.as<const void*>(), CUDA_R_16BF, lda.data(), dpb.as<const void*>(), CUDA_R_16BF,
                                     ldb.data(), beta.data(), dpc.as<void*>(), out_type(out), ldc.data(), int(E),
                                     gsize.data(), CUBLAS_COMPUTE_32F),
          "cublasGemmGroupedBatchedEx");
    }, C.p, o, s, rg);

  // The same experts, one cublasGemmEx each (what a loop over experts costs).
  Case loop = experts;
  loop.op = "loop_bf16";
  Result rl;
  rl.extra = rows_json;
  run_case(loop, [&](cudaStream_t st) {
      for (int64_t e = 0; e < E; ++e)
        gemm_bf16(h, st, pb[e], pa[e], pc[e], o.group_rows[e], N, K, out);
    }, C.p, o, s, rl);

  // One GEMM of the same FLOPs: all rows times expert 0's weight.
  Case single{"single_bf16", {Problem{Kind::bf16, rows, N, K, kSeedA, kSeedW, 0}}, rows, N, out, flops};
  Result rs;
  rs.extra = rows_json;
  run_case(single, [&](cudaStream_t st) { gemm_bf16(h, st, A.p, W.p, C.p, rows, N, K, out); }, C.p, o, s, rs);
}

[[noreturn]] void usage(const std::string& why) {
  fprintf(stderr,
          "sy-bench-gemm-cuda: %s\n"
          "usage: sy-bench-gemm-cuda [--shapes MxNxK,...] [--group-rows R1,R2,...] [--group-n N] [--group-k K]\n"
          "                          [--iters N] [--warmup N] [--samples N] [--out f32|bf16] [--json FILE]\n"
          "                          [--no-layout-probe] [--small] [--probe]\n",
          why.c_str());
  exit(kExitUsage);
}

int64_t parse_int(const std::string& s, const char* what) {
  char* end = nullptr;
  const long long v = strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || v <= 0) usage(strf("%s: '%s' is not a positive integer", what, s.c_str()));
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(sep, b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

Opts parse(int argc, char** argv) {
  Opts o;
  auto val = [&](int& i) -> std::string {
    if (i + 1 >= argc) usage(strf("%s needs a value", argv[i]));
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shapes") {
      o.shapes.clear();
      for (const auto& t : split(val(i), ',')) {
        const auto d = split(t, 'x');
        if (d.size() != 3) usage("--shapes: '" + t + "' is not MxNxK");
        o.shapes.push_back({parse_int(d[0], "M"), parse_int(d[1], "N"), parse_int(d[2], "K")});
      }
    } else if (a == "--group-rows") {
      o.group_rows.clear();
      for (const auto& t : split(val(i), ',')) o.group_rows.push_back(parse_int(t, "--group-rows"));
    } else if (a == "--group-n") {
      o.group_n = parse_int(val(i), "--group-n");
    } else if (a == "--group-k") {
      o.group_k = parse_int(val(i), "--group-k");
    } else if (a == "--iters") {
      o.iters = int(parse_int(val(i), "--iters"));
    } else if (a == "--warmup") {
      o.warmup = int(parse_int(val(i), "--warmup"));
    } else if (a == "--samples") {
      o.samples = int(parse_int(val(i), "--samples"));
    } else if (a == "--out") {
      const std::string v = val(i);
      if (v != "f32" && v != "bf16") usage("--out: '" + v + "' is not f32 or bf16");
      o.out = v == "f32" ? Out::f32 : Out::bf16;
    } else if (a == "--json") {
      o.json = val(i);
    } else if (a == "--no-layout-probe") {
      o.layout_probe = false;
    } else if (a == "--small") {
      o.shapes = {{256, 384, 512}, {384, 256, 1024}};
      o.group_rows = {48, 16, 80, 32};
      o.group_n = 256, o.group_k = 384;
      o.iters = 5;
    } else if (a == "--probe") {
      o.probe = true;
    } else {
      usage("unknown argument '" + a + "'");
    }
  }
  for (const Shape& s : o.shapes)
    if (s.K % 128 || s.N % 16 || s.M % 16 || s.M > INT32_MAX || s.N > INT32_MAX)
      usage(strf("shape %lldx%lldx%lld: M and N must be multiples of 16 and K of 128 (FP8 block scales)",
                 (long long)s.M, (long long)s.N, (long long)s.K));
  if (o.group_k % 16 || o.group_n % 16) usage("--group-n and --group-k must be multiples of 16");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Opts o = parse(argc, argv);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    fprintf(stderr, "sy-bench-gemm-cuda: no GPU: %s\n",
            e != cudaSuccess ? strf("%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e)).c_str()
                             : "the CUDA runtime found no device");
    return kExitNoGpu;
  }
  try {
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    gpu_name = prop.name;
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    cublasHandle_t h = nullptr;
    ckb(cublasCreate(&h), "cublasCreate");
    int cublas_ver = 0;
    cublasGetVersion(h, &cublas_ver);
    fprintf(stderr, "GPU: %s, sm_%d%d, %d SMs, %.0f GiB; CUDA runtime %d, driver %d, cuBLAS %d, cuBLASLt %zu\n",
            prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, rt, drv,
            cublas_ver, cublasLtGetVersion());
    if (o.probe) return 0;
    if (!o.json.empty() && !(json_out = fopen(o.json.c_str(), "w"))) {
      fprintf(stderr, "sy-bench-gemm-cuda: cannot write %s: %s\n", o.json.c_str(), strerror(errno));
      return kExitUsage;
    }
    cublasLtHandle_t lt = nullptr;
    ckb(cublasLtCreate(&lt), "cublasLtCreate");
    cudaStream_t s;
    ck(cudaStreamCreate(&s), "cudaStreamCreate");
    Dev ws(32u << 20);
    for (size_t i = 0; i < o.shapes.size(); ++i) bench_shape(o.shapes[i], o, h, lt, ws, s, o.layout_probe && i == 0);
    bench_grouped(o, h, s);

    // The table: every case, then the ratios.
    printf("\n%-24s %6s %6s %6s %4s %10s %9s  %s\n", "op", "M", "N", "K", "out", "median_ms", "TFLOP/s", "check");
    bool bad = false;
    for (const Result& r : results) {
      std::string chk = r.status == "ok" ? strf("ok: %d samples, worst %.2g of tol", r.v.checked, r.v.worst)
                                         : r.status == "wrong" ? "WRONG: " + r.why : r.status + ": " + r.why;
      if (!r.layout.empty()) chk += " [scales " + r.layout + "]";
      printf("%-24s %6lld %6lld %6lld %4s %10s %9s  %s\n", r.op.c_str(), (long long)r.M, (long long)r.N, (long long)r.K,
             r.out.c_str(), r.status == "ok" ? strf("%.4f", r.median_ms).c_str() : "-",
             r.status == "ok" ? strf("%.1f", r.tflops).c_str() : "-", chk.c_str());
      // The layout probe's other layouts are expected to be wrong: only the chosen one must verify.
      if (r.op != "fp8_block_layout_probe") bad |= r.status == "wrong" || r.status == "error";
    }
    auto find = [&](const std::string& op, int64_t M, int64_t N, int64_t K) -> const Result* {
      for (const Result& r : results)
        if (r.op == op && r.M == M && r.N == N && r.K == K && r.status == "ok") return &r;
      return nullptr;
    };
    printf("\n");
    for (const Shape& sh : o.shapes) {
      const Result* b = find("bf16", sh.M, sh.N, sh.K);
      for (const char* f8 : {"fp8_tensor", "fp8_block"}) {
        const Result* f = find(f8, sh.M, sh.N, sh.K);
        if (b && f) printf("%-10s / bf16 at %lldx%lldx%lld: %.2fx (target >= 1.5x)\n", f8, (long long)sh.M, (long long)sh.N, (long long)sh.K, f->tflops / b->tflops);
      }
    }
    const Result* g = nullptr;
    const Result* sg = nullptr;
    const Result* lp = nullptr;
    for (const Result& r : results) {
      if (r.status != "ok") continue;
      if (r.op == "grouped_bf16") g = &r;
      if (r.op == "single_bf16") sg = &r;
      if (r.op == "loop_bf16") lp = &r;
    }
    if (g && sg) printf("grouped (%zu experts) / one GEMM of the same FLOPs: %.2fx\n", o.group_rows.size(), g->tflops / sg->tflops);
    if (lp && sg) printf("loop over experts / one GEMM of the same FLOPs: %.2fx\n", lp->tflops / sg->tflops);
    cudaStreamDestroy(s);
    cublasLtDestroy(lt);
    cublasDestroy(h);
    if (json_out != stdout) fclose(json_out);
    return bad ? kExitWrong : 0;
  } catch (const std::exception& ex) {
    fprintf(stderr, "sy-bench-gemm-cuda: %s\n", ex.what());
    return kExitWrong;
  }
}
