#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/check.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/cuda_module.h"
#include "kernels/cpu/emulated_device.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/fp8_gemm.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/linear_bf16.h"
#include "kernels/cpu/pack.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/router.h"
#include "kernels/cpu/swiglu.h"

extern "C" void openblas_set_num_threads(int);

namespace sy {

namespace {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  const char* name() const override { return "cpu"; }
  BackendInfo info() const override {
    const BlasInfo b = blas_info();
    const auto at = b.config.find("MAX_THREADS=");  // 64 in Debian's build
    return {b.core, b.parallel, at == std::string::npos ? 0 : std::atoi(b.config.c_str() + at + 12)};
  }
  void set_threads(int n) const override {
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
  }
  OpCounters counters() const override {
    const GemmCounters g = gemm_counters();
    return {g.seconds, g.flops, g.calls};
  }
  void reset_counters() const override { reset_gemm_counters(); }

  Allocator& allocator() const override { return host_allocator(); }
  void copy(void* dst, const void* src, size_t bytes, Stream) const override {
    if (bytes) std::memmove(dst, src, bytes);
  }
  void zero(void* dst, size_t bytes, Stream) const override {
    if (bytes) std::memset(dst, 0, bytes);
  }
  void synchronize(Stream) const override {}

  void add(float* z, const float* x, const float* y, int64_t n, Stream) const override { add_vectors(z, x, y, n); }
  void round_bf16(float* dst, const float* src, int64_t n, Stream) const override { round_to_bf16(dst, src, n); }

  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
            const float* B, int64_t ldb, float beta, float* C, int64_t ldc, Stream) const override {
    sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                      Stream) const override {
    sy::linear_forward(out, inp, w, N, I, O);
  }
  void linear_dgrad(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O, bool acc,
                    Stream) const override {
    if (dinp) sy::linear_dgrad(dinp, dout, w, N, I, O, acc);
  }
  void linear_wgrad(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O,
                    Stream) const override {
    sy::linear_wgrad(dw, dout, inp, N, I, O);
  }
  void grouped_linear_forward(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                              int64_t groups, int64_t I, int64_t O, Stream) const override {
    sy::grouped_linear_forward(out, inp, w, offsets, groups, I, O);
  }
  void grouped_linear_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                            int64_t groups, int64_t I, int64_t O, Stream) const override {
    sy::grouped_linear_dgrad(dinp, dout, w, offsets, groups, I, O);
  }
  void grouped_linear_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                            int64_t groups, int64_t I, int64_t O, Stream) const override {
    sy::grouped_linear_wgrad(dw, dout, inp, offsets, groups, I, O);
  }

  void linear_forward_bf16(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                           Stream) const override {
    sy::linear_forward_bf16(out, inp, w, N, I, O);
  }
  void linear_dgrad_bf16(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O, bool acc,
                         Stream) const override {
    if (dinp) sy::linear_dgrad_bf16(dinp, dout, w, N, I, O, acc);
  }
  void linear_wgrad_bf16(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O,
                         Stream) const override {
    sy::linear_wgrad_bf16(dw, dout, inp, N, I, O);
  }
  void grouped_linear_forward_bf16(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                                   int64_t groups, int64_t I, int64_t O, Stream) const override {
    sy::grouped_linear_forward_bf16(out, inp, w, offsets, groups, I, O);
  }
  void grouped_linear_dgrad_bf16(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                                 int64_t groups, int64_t I, int64_t O, Stream) const override {
    sy::grouped_linear_dgrad_bf16(dinp, dout, w, offsets, groups, I, O);
  }
  void grouped_linear_wgrad_bf16(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                                 int64_t groups, int64_t I, int64_t O, Stream) const override {
    sy::grouped_linear_wgrad_bf16(dw, dout, inp, offsets, groups, I, O);
  }

  QuantStats fp8_quantize(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o,
                          bool transpose, Stream) const override {
    return quantize_matrix(out, x, rows, cols, o, transpose);
  }
  void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate, Stream) const override {
    sy::fp8_gemm(C, A, B, accumulate);
  }
  void fp8_dequantize(float* x, const Fp8Matrix& m, Stream) const override { dequantize_matrix(x, m); }
  void pack_bf16_rows(void* packed, int64_t row_words, const float* x, int64_t n, int64_t C, Stream) const override {
    sy::pack_bf16_rows(packed, row_words, x, n, C);
  }
  void unpack_bf16_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C,
                        Stream) const override {
    sy::unpack_bf16_rows(x, packed, row_words, n, C);
  }
  void fp8_pack_rows(void* packed, int64_t row_words, const Fp8Matrix& m, Stream) const override {
    sy::fp8_pack_rows(packed, row_words, m);
  }
  void fp8_unpack_rows(Fp8Matrix& m, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt,
                       Stream) const override {
    sy::fp8_unpack_rows(m, packed, row_words, n, C, fmt);
  }
  void fp8_decode_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt,
                       Stream) const override {
    sy::fp8_decode_rows(x, packed, row_words, n, C, fmt);
  }

  void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                         int64_t D, Stream) const override {
    sy::attention_forward(out, lse, qkv, B, T, H, Hkv, D);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse,
                          int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, Stream) const override {
    sy::attention_backward(dqkv, dout, qkv, out, lse, B, T, H, Hkv, D);
  }
  void attention_cached(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                        int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D, Stream) const override {
    sy::attention_cached(out, q, q_stride, k_cache, v_cache, pos0, n, H, Hkv, D);
  }

  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C, float eps,
                       Stream) const override {
    sy::rmsnorm_forward(out, rstd, inp, w, N, C, eps);
  }
  void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                        const float* rstd, int64_t N, int64_t C, Stream) const override {
    sy::rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
  }

  void rope_table(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta, Stream) const override {
    sy::rope_table(cos_t, sin_t, T, D, theta);
  }
  void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads,
                    int64_t D, int64_t stride, Stream) const override {
    sy::rope_forward(x, cos_t, sin_t, N, T, heads, D, stride);
  }
  void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads,
                     int64_t D, int64_t stride, Stream) const override {
    sy::rope_backward(dx, cos_t, sin_t, N, T, heads, D, stride);
  }

  void swiglu_forward(float* out, const float* inp, int64_t N, int64_t F, Stream) const override {
    sy::swiglu_forward(out, inp, N, F);
  }
  void swiglu_backward(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F,
                       Stream) const override {
    sy::swiglu_backward(dinp, dout, inp, N, F);
  }

  void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C,
                         Stream) const override {
    sy::embedding_forward(out, tokens, wte, N, C);
  }
  void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C,
                          Stream) const override {
    sy::embedding_backward(dwte, dout, tokens, N, C);
  }
  void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N,
                     int64_t V, float dscale, Stream) const override {
    sy::cross_entropy(losses, dlogits, logits, targets, N, V, dscale);
  }

  void router_scores(float* scores, float* probs, const float* logits, int64_t N, int64_t E, ScoreFn fn,
                     Stream) const override {
    sy::router_scores(scores, probs, logits, N, E, fn);
  }
  void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N, int64_t E,
                   int64_t K, bool renormalize, RouterGroups groups, Stream) const override {
    sy::router_topk(idx, gates, scores, bias, N, E, K, renormalize, groups);
  }
  double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K,
                       RouterGroups groups, Stream) const override {
    return sy::router_margin(idx, scores, bias, N, E, K, groups);
  }
  void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs, int64_t N,
                   int64_t E, int64_t K, Stream) const override {
    sy::router_sums(sums, idx, logits, probs, N, E, K);
  }
  RouterLosses router_losses(const RouterSums& sums, int64_t Ntot, int64_t E, int64_t K) const override {
    return sy::router_losses(sums, Ntot, E, K);
  }
  void router_backward(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
                       const float* scores, const float* probs, const RouterSums& sums, int64_t N, int64_t Ntot,
                       int64_t E, int64_t K, ScoreFn fn, bool renormalize, RouterCoefs coefs,
                       Stream) const override {
    sy::router_backward(dlogits, dgates, idx, logits, scores, probs, sums, N, Ntot, E, K, fn, renormalize, coefs);
  }

  void moe_gather(RowMap dst, const float* x, const int32_t* row_token, int64_t M, int64_t C,
                  Stream) const override {
    sy::moe_gather(dst, x, row_token, M, C);
  }
  void moe_gather_backward(float* dx, RowMap src, const int32_t* pos, int64_t N, int64_t K, int64_t C,
                           Stream) const override {
    sy::moe_gather_backward(dx, src, pos, N, K, C);
  }
  void moe_combine(float* out, RowMap y, float* y_copy, const float* gates, const int32_t* pos, int64_t N,
                   int64_t K, int64_t C, Stream) const override {
    sy::moe_combine(out, y, y_copy, gates, pos, N, K, C);
  }
  void moe_combine_backward(RowMap dy, float* dgates, const float* dout, RowMap y, const float* gates,
                            const int32_t* pos, int64_t N, int64_t K, int64_t C, Stream) const override {
    sy::moe_combine_backward(dy, dgates, dout, y, gates, pos, N, K, C);
  }

  std::optional<DeviceMemory> device_memory() const override { return std::nullopt; }
  bool pin(void*, size_t) const override { return true; }
  void unpin(void*) const override {}
  bool holds(const void*) const override { return true; }
  void sum_squares(double* out, const float* x, const int64_t* offsets, const int64_t* counts, int64_t ranges,
                   Stream) const override {
    sy::sum_squares(out, x, offsets, counts, ranges);
  }
  void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a,
                    Stream) const override {
    sy::adamw_update(p, g, m, v, n, a);
  }
  void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWParams& a,
                         Stream) const override {
    sy::adamw_update_bf16(p, g, m, v, n, a);
  }
};

std::array<const Backend*, 2>& registry() {
  static std::array<const Backend*, 2> r{&cpu_backend(), nullptr};
  return r;
}

}  // namespace

const Backend& cpu_backend() {
  static const CpuBackend b;
  return b;
}

// The registry lives with the CPU backend, the one backend every build links.
const Backend& backend(Device d) {
  const Backend* b = registry()[static_cast<size_t>(d)];
  SY_CHECK(b, "no {} backend registered: open_backend({}) loads or emulates it (kernels/backend.h)", device_name(d),
           device_name(d));
  return *b;
}

void register_backend(Device d, const Backend* b) { registry()[static_cast<size_t>(d)] = b; }

const Backend& open_backend(Device d) {
  std::string why = "no backend registered";
  if (d == Device::cuda) {
    static bool emulated = false;  // whether the registered CUDA backend is the emulation
    if (const char* e = std::getenv(kEmulateCudaEnv)) {  // the emulation, when asked for, wins (tests)
      SY_CONFIG_CHECK(std::string_view(e) == "guarded", "{}='{}': the one emulation is 'guarded' (unset it to use a "
                      "real GPU)", kEmulateCudaEnv, e);
      register_backend(d, &emulated_cuda_backend());
      emulated = true;
    } else if (const Backend* b = load_cuda_module(&why)) {  // the module's backend (loaded once)
      register_backend(d, b);
      emulated = false;
    } else if (emulated) {
      register_backend(d, nullptr);  // the emulation is no longer asked for, and no GPU is there
      emulated = false;
    }
  }
  const Backend* b = registry()[static_cast<size_t>(d)];
  SY_CONFIG_CHECK(b, "device '{}' is not available: {}", device_name(d), why);
  return *b;
}

}  // namespace sy
