// The CUDA backend (see cuda_backend.h): the Backend interface over its
// kernels (backend_kernels.h: simple, correct kernels first, one thread per
// element, row or query; the per-element arithmetic is kernels/math.h),
// cuBLAS/cuBLASLt GEMMs (gemm_cuda.h, fp8_cuda.h) and tiled attention. Reductions whose order the CPU fixes
// (embedding, norm-weight and attention key/value gradients) use atomics
// here, so results agree with the CPU within the gpu tests' tolerances,
// not bit for bit.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/cuda_module.h"
#include "kernels/cpu/router.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/backend_kernels.h"
#include "kernels/cuda/fp8_cuda.h"
#include "kernels/cuda/gemm_cuda.h"
#include "kernels/math.h"

namespace sy::cuda {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  SY_CHECK(e == cudaSuccess, "CUDA: {} failed: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}
cudaStream_t cs(Stream s) { return static_cast<cudaStream_t>(s.handle); }
void launched(const char* what) { check_cuda(cudaGetLastError(), what); }

using namespace kern;  // the kernels and their launch shape (backend_kernels.h)

float* contiguous(RowMap m, const char* op) {
  SY_CHECK(m.local, "{} on the CUDA backend: rows scattered over shared-memory segments are a CPU transport's; "
           "the device transports use contiguous buffers", op);
  return m.local;
}

// ---- the backend ---------------------------------------------------------------
// Host copies of small device arrays (router statistics), pinned-free: the
// sizes are N x E.
template <class T>
std::vector<T> to_host(const T* dev, int64_t n, Stream s) {
  std::vector<T> h(static_cast<size_t>(n));
  if (n > 0) check_cuda(cudaMemcpyAsync(h.data(), dev, sizeof(T) * static_cast<size_t>(n), cudaMemcpyDeviceToHost, cs(s)),
                        "copy to host");
  check_cuda(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize");
  return h;
}

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::cuda; }
  const char* name() const override { return "cuda"; }
  BackendInfo info() const override { return {"cuBLAS", "cuda", 0}; }
  void set_threads(int) const override {}  // host threads do not run its ops
  OpCounters counters() const override { return {}; }  // GEMMs are asynchronous: not timed per call
  void reset_counters() const override {}
  Allocator& allocator() const override { return cuda::device_memory(); }  // kernels/cuda/fp8_cuda.h
  void copy(void* dst, const void* src, size_t bytes, Stream s) const override {
    if (bytes) check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cs(s)), "cudaMemcpyAsync");
  }
  void zero(void* dst, size_t bytes, Stream s) const override {
    if (bytes) check_cuda(cudaMemsetAsync(dst, 0, bytes, cs(s)), "cudaMemsetAsync");
  }
  void synchronize(Stream s) const override { check_cuda(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize"); }

  void add(float* z, const float* x, const float* y, int64_t n, Stream s) const override {
    add_kernel<<<blocks_for(n), kThreads, 0, cs(s)>>>(z, x, y, n);
    launched("add");
  }

  void round_bf16(float* dst, const float* src, int64_t n, Stream s) const override {
    round_bf16_kernel<<<blocks_for(n), kThreads, 0, cs(s)>>>(dst, src, n);
    launched("round_bf16");
  }

  // GEMMs through kernels/cuda/gemm_cuda.h (FP32 never TF32; BF16 inputs
  // with FP32 accumulation; grouped in one cuBLAS call).
  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
            const float* B, int64_t ldb, float beta, float* C, int64_t ldc, Stream s) const override {
    gemms_.fp32({ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc}, alpha, s);
  }
  void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                      Stream s) const override {
    gemms_.fp32(forward_problem(out, inp, w, N, I, O), 1.f, s);
  }
  void linear_dgrad(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O, bool acc,
                    Stream s) const override {
    if (dinp) gemms_.fp32(dgrad_problem(dinp, dout, w, N, I, O, acc), 1.f, s);
  }
  void linear_wgrad(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O,
                    Stream s) const override {
    gemms_.fp32(wgrad_problem(dw, dout, inp, N, I, O), 1.f, s);
  }
  void linear_forward_bf16(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                           Stream s) const override {
    gemms_.bf16(forward_problem(out, inp, w, N, I, O), s);
  }
  void linear_dgrad_bf16(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O, bool acc,
                         Stream s) const override {
    if (dinp) gemms_.bf16(dgrad_problem(dinp, dout, w, N, I, O, acc), s);
  }
  void linear_wgrad_bf16(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O,
                         Stream s) const override {
    gemms_.bf16(wgrad_problem(dw, dout, inp, N, I, O), s);
  }
  // offsets and the weight pointers are host arrays (the plan is host data):
  // one grouped GEMM over the non-empty groups, no host round trip.
  void grouped_linear_forward(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                              int64_t groups, int64_t I, int64_t O, Stream s) const override {
    grouped_forward(out, inp, w, offsets, groups, I, O, false, s);
  }
  void grouped_linear_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                            int64_t groups, int64_t I, int64_t O, Stream s) const override {
    grouped_dgrad(dinp, dout, w, offsets, groups, I, O, false, s);
  }
  void grouped_linear_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                            int64_t groups, int64_t I, int64_t O, Stream s) const override {
    grouped_wgrad(dw, dout, inp, offsets, groups, I, O, false, s);
  }
  void grouped_linear_forward_bf16(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                                   int64_t groups, int64_t I, int64_t O, Stream s) const override {
    grouped_forward(out, inp, w, offsets, groups, I, O, true, s);
  }
  void grouped_linear_dgrad_bf16(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                                 int64_t groups, int64_t I, int64_t O, Stream s) const override {
    grouped_dgrad(dinp, dout, w, offsets, groups, I, O, true, s);
  }
  void grouped_linear_wgrad_bf16(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                                 int64_t groups, int64_t I, int64_t O, Stream s) const override {
    grouped_wgrad(dw, dout, inp, offsets, groups, I, O, true, s);
  }

  // FP8 through kernels/cuda/fp8_cuda.h, on the op's stream: the codes and
  // scales are device memory and stay there. A quantization returns once its
  // statistics (amax) are on the host; the GEMM is only enqueued.
  QuantStats fp8_quantize(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                          bool transpose, Stream s) const override {
    std::lock_guard<std::mutex> lk(mu_);
    return quantize(out, x, rows, cols, o, transpose, cuda::device_memory(), s.handle);
  }
  void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate, Stream s) const override {
    std::lock_guard<std::mutex> lk(mu_);
    cuda::fp8_gemm(C, A, B, accumulate, s.handle);
  }
  void fp8_dequantize(float* x, const Fp8Matrix& m, Stream s) const override {
    const int64_t n = static_cast<int64_t>(m.code_count());
    const bool tensor = m.mode == ScaleMode::tensor;
    fp8_dequantize_kernel<<<blocks_for(n), kThreads, 0, cs(s)>>>(
        x, m.q.data(), m.scale_inv.data(), tensor ? 0 : m.scale_ld,
        m.mode == ScaleMode::blocks_128x128 ? kFp8Block : 1, m.rows, m.cols, m.fmt == Fp8Format::e4m3);
    launched("fp8_dequantize");
  }
  void pack_bf16_rows(void* packed, int64_t W, const float* x, int64_t n, int64_t C, Stream s) const override {
    SY_CHECK(W >= bf16_row_words(C), "pack_bf16_rows: rows of {} words cannot hold {} values", W, C);
    pack_bf16_kernel<<<blocks_for(n * W), kThreads, 0, cs(s)>>>(static_cast<uint32_t*>(packed), W, x, n, C);
    launched("pack_bf16_rows");
  }
  void unpack_bf16_rows(float* x, const void* packed, int64_t W, int64_t n, int64_t C, Stream s) const override {
    SY_CHECK(W >= bf16_row_words(C), "unpack_bf16_rows: rows of {} words cannot hold {} values", W, C);
    unpack_bf16_kernel<<<blocks_for(n * C), kThreads, 0, cs(s)>>>(x, static_cast<const uint32_t*>(packed), W, n, C);
    launched("unpack_bf16_rows");
  }
  void fp8_pack_rows(void* packed, int64_t W, const Fp8Matrix& m, Stream s) const override {
    SY_CHECK(m.mode == ScaleMode::rows_1x128, "fp8_pack_rows: the rows need 1x128 scales, got {}", to_string(m.mode));
    SY_CHECK(W >= fp8_row_words(m.cols), "fp8_pack_rows: rows of {} words cannot hold {} values", W, m.cols);
    fp8_pack_kernel<<<blocks_for(m.rows * W), kThreads, 0, cs(s)>>>(static_cast<uint32_t*>(packed), W, m.q.data(),
                                                                    m.scale_inv.data(), m.scale_ld, m.rows, m.cols);
    launched("fp8_pack_rows");
  }
  void fp8_unpack_rows(Fp8Matrix& m, const void* packed, int64_t W, int64_t n, int64_t C, Fp8Format fmt,
                       Stream s) const override {
    SY_CHECK(W >= fp8_row_words(C), "fp8_unpack_rows: rows of {} words cannot hold {} values", W, C);
    m.shape(n, C, fmt, ScaleMode::rows_1x128, cuda::device_memory());
    zero(m.scale_inv.data(), m.scale_count() * sizeof(float), s);  // the padding rows
    fp8_unpack_kernel<<<blocks_for(n * fp8_row_words(C)), kThreads, 0, cs(s)>>>(
        m.q.data(), m.scale_inv.data(), m.scale_ld, static_cast<const uint32_t*>(packed), W, n, C);
    launched("fp8_unpack_rows");
  }
  void fp8_decode_rows(float* x, const void* packed, int64_t W, int64_t n, int64_t C, Fp8Format fmt,
                       Stream s) const override {
    SY_CHECK(W >= fp8_row_words(C), "fp8_decode_rows: rows of {} words cannot hold {} values", W, C);
    fp8_decode_rows_kernel<<<blocks_for(n * C), kThreads, 0, cs(s)>>>(x, static_cast<const uint32_t*>(packed), W, n,
                                                                      C, fmt == Fp8Format::e4m3);
    launched("fp8_decode_rows");
  }

  void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                         int64_t D, Stream s) const override {
    attention_forward_tiled(out, lse, qkv, B, T, H, Hkv, D, s);  // kernels/cuda/attention_cuda.h
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse,
                          int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, Stream s) const override {
    zero(dqkv, sizeof(float) * static_cast<size_t>(B * T * (H + 2 * Hkv) * D), s);
    attention_bwd_kernel<<<blocks_for(B * H * T), kThreads, 0, cs(s)>>>(dqkv, dout, qkv, out, lse, B, T, H, Hkv, D);
    launched("attention_backward");
  }
  void attention_cached(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                        int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D, Stream s) const override {
    SY_CHECK(D <= kMaxHead, "attention on the CUDA backend: head size {} above {}", D, kMaxHead);
    attention_cached_kernel<<<blocks_for(n * H), kThreads, 0, cs(s)>>>(out, q, q_stride, k_cache, v_cache, pos0, n,
                                                                         H, Hkv, D);
    launched("attention_cached");
  }

  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C, float eps,
                       Stream s) const override {
    if (N > 0) rmsnorm_fwd_kernel<<<static_cast<unsigned>(N), kThreads, 0, cs(s)>>>(out, rstd, inp, w, C, eps);
    launched("rmsnorm_forward");
  }
  void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                        const float* rstd, int64_t N, int64_t C, Stream s) const override {
    if (N > 0) rmsnorm_bwd_kernel<<<static_cast<unsigned>(N), kThreads, 0, cs(s)>>>(dinp, dw, dout, inp, w, rstd, C);
    launched("rmsnorm_backward");
  }

  void rope_table(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta, Stream s) const override {
    rope_table_kernel<<<blocks_for(T * D / 2), kThreads, 0, cs(s)>>>(cos_t, sin_t, T, D, theta);
    launched("rope_table");
  }
  void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads, int64_t D,
                    int64_t stride, Stream s) const override {
    rope_kernel<<<blocks_for(N * heads * D / 2), kThreads, 0, cs(s)>>>(x, cos_t, sin_t, N, T, heads, D, stride, 1.f);
    launched("rope_forward");
  }
  void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads,
                     int64_t D, int64_t stride, Stream s) const override {
    rope_kernel<<<blocks_for(N * heads * D / 2), kThreads, 0, cs(s)>>>(dx, cos_t, sin_t, N, T, heads, D, stride, -1.f);
    launched("rope_backward");
  }

  void swiglu_forward(float* out, const float* inp, int64_t N, int64_t F, Stream s) const override {
    swiglu_fwd_kernel<<<blocks_for(N * F), kThreads, 0, cs(s)>>>(out, inp, N, F);
    launched("swiglu_forward");
  }
  void swiglu_backward(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F,
                       Stream s) const override {
    swiglu_bwd_kernel<<<blocks_for(N * F), kThreads, 0, cs(s)>>>(dinp, dout, inp, N, F);
    launched("swiglu_backward");
  }

  void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C,
                         Stream s) const override {
    embedding_fwd_kernel<<<blocks_for(N * C), kThreads, 0, cs(s)>>>(out, tokens, wte, N, C);
    launched("embedding_forward");
  }
  void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C,
                          Stream s) const override {
    embedding_bwd_kernel<<<blocks_for(N * C), kThreads, 0, cs(s)>>>(dwte, dout, tokens, N, C);
    launched("embedding_backward");
  }
  void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N, int64_t V,
                     float dscale, Stream s) const override {
    if (N > 0)
      cross_entropy_kernel<<<static_cast<unsigned>(N), kThreads, 0, cs(s)>>>(losses, dlogits, logits, targets, V,
                                                                              dscale);
    launched("cross_entropy");
  }

  void router_scores(float* scores, float* probs, const float* logits, int64_t N, int64_t E, ScoreFn fn,
                     Stream s) const override {
    router_scores_kernel<<<blocks_for(N), kThreads, 0, cs(s)>>>(scores, probs, logits, N, E, fn == ScoreFn::softmax);
    launched("router_scores");
  }
  void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K,
                   bool renormalize, RouterGroups groups, Stream s) const override {
    router_topk_kernel<<<blocks_for(N), kThreads, 0, cs(s)>>>(idx, gates, scores, bias, N, E, K, renormalize,
                                                               groups.groups, groups.limit);
    launched("router_topk");
  }
  // Statistics the host needs: computed there from copies (N x E values), in
  // the CPU's order, so they match the CPU backend exactly for equal inputs.
  double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K,
                       RouterGroups groups, Stream s) const override {
    const auto hi = to_host(idx, N * K, s);
    const auto hs = to_host(scores, N * E, s);
    const auto hb = bias ? to_host(bias, E, s) : std::vector<float>();
    return sy::router_margin(hi.data(), hs.data(), bias ? hb.data() : nullptr, N, E, K, groups);
  }
  void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs, int64_t N, int64_t E,
                   int64_t K, Stream s) const override {
    const auto hi = to_host(idx, N * K, s);
    const auto hl = to_host(logits, N * E, s);
    const auto hp = to_host(probs, N * E, s);
    sy::router_sums(sums, hi.data(), hl.data(), hp.data(), N, E, K);
  }
  RouterLosses router_losses(const RouterSums& sums, int64_t Ntot, int64_t E, int64_t K) const override {
    return sy::router_losses(sums, Ntot, E, K);
  }
  void router_backward(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
                       const float* scores, const float* probs, const RouterSums& sums, int64_t N, int64_t Ntot,
                       int64_t E, int64_t K, ScoreFn fn, bool renormalize, RouterCoefs coefs,
                       Stream s) const override {
    const float inv_n = 1.f / static_cast<float>(Ntot);
    std::vector<float> daux(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e)
      daux[static_cast<size_t>(e)] = math::router_daux(coefs.aux, E, sums.counts[static_cast<size_t>(e)], Ntot, K, inv_n);
    std::lock_guard<std::mutex> lk(mu_);
    router_scratch_.resize(sizeof(float) * static_cast<size_t>(E + 2 * N * E));
    float* d_daux = router_scratch_.as<float>();
    copy(d_daux, daux.data(), sizeof(float) * daux.size(), s);
    router_bwd_kernel<<<blocks_for(N), kThreads, 0, cs(s)>>>(dlogits, dgates, idx, logits, scores, probs, d_daux,
                                                               d_daux + E, N, E, K, fn == ScoreFn::softmax,
                                                               renormalize, inv_n, coefs.entropy, coefs.z);
    launched("router_backward");
    synchronize(s);  // the host daux and the shared scratch are reused by the next call
  }

  void moe_gather(RowMap dst, const float* x, const int32_t* row_token, int64_t M, int64_t C, Stream s) const override {
    gather_kernel<<<blocks_for(M * C), kThreads, 0, cs(s)>>>(contiguous(dst, "moe_gather"), x, row_token, M, C);
    launched("moe_gather");
  }
  void moe_gather_backward(float* dx, RowMap src, const int32_t* pos, int64_t N, int64_t K, int64_t C,
                           Stream s) const override {
    gather_bwd_kernel<<<blocks_for(N * C), kThreads, 0, cs(s)>>>(dx, contiguous(src, "moe_gather_backward"), pos, N,
                                                                   K, C);
    launched("moe_gather_backward");
  }
  void moe_combine(float* out, RowMap y, float* y_copy, const float* gates, const int32_t* pos, int64_t N, int64_t K,
                   int64_t C, Stream s) const override {
    combine_kernel<<<blocks_for(N * C), kThreads, 0, cs(s)>>>(out, contiguous(y, "moe_combine"), y_copy, gates, pos,
                                                                N, K, C);
    launched("moe_combine");
  }
  void moe_combine_backward(RowMap dy, float* dgates, const float* dout, RowMap y, const float* gates,
                            const int32_t* pos, int64_t N, int64_t K, int64_t C, Stream s) const override {
    combine_bwd_rows_kernel<<<blocks_for(N * K * C), kThreads, 0, cs(s)>>>(contiguous(dy, "moe_combine_backward"),
                                                                             dout, gates, pos, N, K, C);
    combine_bwd_gates_kernel<<<blocks_for(N * K), kThreads, 0, cs(s)>>>(dgates, dout,
                                                                          contiguous(y, "moe_combine_backward"), pos,
                                                                          N, K, C);
    launched("moe_combine_backward");
  }

  bool pin(void* host, size_t bytes) const override {
    if (!host || bytes == 0) return true;
    if (cudaHostRegister(host, bytes, cudaHostRegisterDefault) != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it, the copies run from pageable memory
      return false;
    }
    return true;
  }
  void unpin(void* host) const override {
    if (host && cudaHostUnregister(host) != cudaSuccess) cudaGetLastError();
  }
  bool holds(const void* p) const override {
    cudaPointerAttributes a{};
    if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) return cudaGetLastError(), false;
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  }
  std::optional<DeviceMemory> device_memory() const override {
    size_t free = 0, total = 0;
    int dev = 0;
    char bus[64] = {};
    check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetPCIBusId(bus, sizeof bus, dev), "cudaDeviceGetPCIBusId");
    return DeviceMemory{static_cast<double>(free), static_cast<double>(total), bus};
  }
  void sum_squares(double* out, const float* x, const int64_t* offsets, const int64_t* counts, int64_t ranges,
                   Stream s) const override {
    if (ranges <= 0) return;
    SY_CHECK(ranges <= 65535, "sum_squares on the CUDA backend: {} runs, at most 65535 per call", ranges);
    std::lock_guard<std::mutex> lk(mu_);
    const size_t R = static_cast<size_t>(ranges);
    norm_scratch_.resize(2 * R * sizeof(int64_t) + R * kSumParts * sizeof(double));
    auto* d_off = norm_scratch_.as<int64_t>();
    int64_t* d_cnt = d_off + R;
    auto* d_part = reinterpret_cast<double*>(d_cnt + R);
    copy(d_off, offsets, R * sizeof(int64_t), s);
    copy(d_cnt, counts, R * sizeof(int64_t), s);
    sum_squares_kernel<<<dim3(kSumParts, static_cast<unsigned>(R)), kThreads, 0, cs(s)>>>(d_part, x, d_off, d_cnt);
    launched("sum_squares");
    std::vector<double> part(R * kSumParts);
    copy(part.data(), d_part, part.size() * sizeof(double), s);
    synchronize(s);
    for (size_t r = 0; r < R; ++r) {
      double t = 0;
      for (int b = 0; b < kSumParts; ++b) t += part[r * kSumParts + static_cast<size_t>(b)];
      out[r] = t;
    }
  }
  void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a,
                    Stream s) const override {
    adamw_kernel<<<blocks_for(n), kThreads, 0, cs(s)>>>(p, g, m, v, n, consts(a));
    launched("adamw_update");
  }
  void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWParams& a,
                         Stream s) const override {
    adamw_bf16_kernel<<<blocks_for(n), kThreads, 0, cs(s)>>>(p, g, m, v, n, consts(a));
    launched("adamw_update_bf16");
  }

 private:
  // The bias corrections in double, as the CPU computes them.
  static math::AdamWConsts consts(const AdamWParams& a) {
    const double bc1 = 1.0 - std::pow(double(a.beta1), double(a.step));
    const double bc2 = 1.0 - std::pow(double(a.beta2), double(a.step));
    return {1.f - a.lr * a.weight_decay, a.beta1, a.beta2, a.eps, a.grad_scale, static_cast<float>(a.lr / bc1),
            static_cast<float>(std::sqrt(bc2))};
  }

  // The linears as GEMM problems (W (O, I), row-major; kernels/cpu/linear.h).
  static GemmProblem forward_problem(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O) {
    return {false, true, N, O, I, inp, I, w, I, 0.f, out, O};  // out = inp . W^T
  }
  static GemmProblem dgrad_problem(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                                   bool acc) {
    return {false, false, N, I, O, dout, O, w, I, acc ? 1.f : 0.f, dinp, I};  // dinp (+)= dout . W
  }
  static GemmProblem wgrad_problem(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O) {
    return {true, false, O, I, N, dout, O, inp, I, 1.f, dw, I};  // dW += dout^T . inp
  }
  // One problem per non-empty group.
  void grouped_forward(float* out, const float* inp, const float* const* w, const int64_t* offsets, int64_t groups,
                       int64_t I, int64_t O, bool bf16, Stream s) const {
    std::vector<GemmProblem> ps;
    for (int64_t e = 0; e < groups; ++e)
      if (const int64_t n = offsets[e + 1] - offsets[e]; n > 0)
        ps.push_back(forward_problem(out + offsets[e] * O, inp + offsets[e] * I, w[e], n, I, O));
    if (O > 0 && I > 0) gemms_.grouped(ps, bf16, s);
  }
  void grouped_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets, int64_t groups,
                     int64_t I, int64_t O, bool bf16, Stream s) const {
    std::vector<GemmProblem> ps;
    for (int64_t e = 0; e < groups; ++e)
      if (const int64_t n = offsets[e + 1] - offsets[e]; n > 0)
        ps.push_back(dgrad_problem(dinp + offsets[e] * I, dout + offsets[e] * O, w[e], n, I, O, false));
    if (O > 0 && I > 0) gemms_.grouped(ps, bf16, s);
  }
  void grouped_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets, int64_t groups,
                     int64_t I, int64_t O, bool bf16, Stream s) const {
    std::vector<GemmProblem> ps;
    for (int64_t e = 0; e < groups; ++e)
      if (const int64_t n = offsets[e + 1] - offsets[e]; n > 0)
        ps.push_back(wgrad_problem(dw[e], dout + offsets[e] * O, inp + offsets[e] * I, n, I, O));
    if (O > 0 && I > 0) gemms_.grouped(ps, bf16, s);
  }

  mutable Gemms gemms_;
  mutable std::mutex mu_;  // the scratch below, and the FP8 library's (kernels/cuda/fp8_cuda.cpp)
  mutable DeviceBuffer router_scratch_;
  mutable DeviceBuffer norm_scratch_;  // sum_squares: offsets, counts, partial sums
};

}  // namespace

void attention_forward_simple(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                              int64_t D, Stream s) {
  SY_CHECK(D <= kMaxHead, "attention on the CUDA backend: head size {} above {}", D, kMaxHead);
  attention_fwd_kernel<<<blocks_for(B * H * T), kThreads, 0, cs(s)>>>(out, lse, qkv, B, T, H, Hkv, D);
  launched("attention_forward_simple");
}

const Backend* backend_or_null(std::string* why) {
  static std::once_flag once;
  static const CudaBackend* instance = nullptr;
  static std::string reason;
  std::call_once(once, [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      reason = e != cudaSuccess ? std::string("no usable CUDA driver/device: ") + cudaGetErrorString(e)
                                : std::string("no CUDA device");
      return;
    }
    // One GPU per rank: the node-local rank picks among the visible devices.
    const int dev = node_local_rank() % n;
    if ((e = cudaSetDevice(dev)) != cudaSuccess) {
      reason = "cudaSetDevice(" + std::to_string(dev) + ") failed: " + cudaGetErrorString(e);
      return;
    }
    instance = new CudaBackend();  // lives for the process (handles outlive every user)
  });
  if (!instance && why) *why = reason;
  return instance;
}

bool register_backend(std::string* why) {
  const Backend* b = backend_or_null(why);
  if (b) sy::register_backend(Device::cuda, b);
  return b != nullptr;
}

}  // namespace sy::cuda
