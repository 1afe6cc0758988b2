// The op interface: every op the model, the MoE block, the decoder and the
// optimizer run, as a backend implements it. Arguments are raw pointers into
// the backend's device memory, sizes, and the Stream the op is ordered on
// (DeepEP's and TransformerEngine's shape): nothing here is a tensor class,
// and nothing assumes the host can read a buffer. Callers never name a
// backend's kernels (kernels/cpu/*.h, kernels/cuda/*.h); they get a Backend
// from backend(Device) and call through it.
//
// Backends: kernels/cpu/cpu_backend.cpp (the reference: today's CPU kernels,
// OpenBLAS GEMMs) and, with CUDA, kernels/cuda (cuBLAS/cuBLASLt GEMMs and a
// kernel per op), registered at start-up by register_backend().
//
// Shapes follow the CPU headers that document each op's math:
//   linear, grouped linear ... kernels/cpu/linear.h, grouped_gemm.h
//   FP8 quantize, FP8 GEMM ... kernels/cpu/fp8_gemm.h (types: kernels/fp8_types.h)
//   attention ................ kernels/cpu/attention.h
//   rmsnorm, rope, swiglu, embedding, cross_entropy, router, permute, adamw:
//                              the header of the same name in kernels/cpu/.
// Results the caller needs on the host (router_margin, router_sums,
// QuantStats) are returned as host values; a device backend synchronises
// the stream for them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "core/device.h"
#include "kernels/fp8_types.h"
#include "kernels/types.h"

namespace sy {

// What runs the ops (for the run's description and the thread check).
struct BackendInfo {
  std::string kernels;    // e.g. OpenBLAS's kernel family "Haswell", or "cuBLAS"
  std::string threading;  // e.g. "openmp", "pthreads", "sequential", "cuda"
  int max_threads = 0;    // host threads the op library was built for at most (0: no limit)
  bool emulated = false;  // a device emulated on the CPU (tests): its memory is host memory to any library
};

// GEMM time and work since the last reset (the step line's GEMM rate).
struct OpCounters {
  double gemm_seconds = 0, gemm_flops = 0;
  int64_t gemm_calls = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual const char* name() const = 0;
  virtual BackendInfo info() const = 0;
  // The host threads the backend's ops may use (OpenMP and OpenBLAS on the CPU).
  virtual void set_threads(int n) const = 0;
  virtual OpCounters counters() const = 0;
  virtual void reset_counters() const = 0;

  // Memory of this backend's device (arenas take it), copies within and to
  // or from it, and waiting for a stream.
  virtual Allocator& allocator() const = 0;
  // What the device's memory holds now, for the preflight (estimate/memory.h):
  // bytes free and in all, and which device it is. The CPU's memory is the
  // node's (available_memory): nullopt.
  struct DeviceMemory {
    double free = 0, total = 0;
    std::string id;  // which device of the node this process uses (its PCI bus id), to count who shares it
  };
  virtual std::optional<DeviceMemory> device_memory() const = 0;
  // Page-locks host memory that copies to and from the device use often (the
  // trainer's host copies of the weights and gradients), so they run at the
  // link's rate; false where it could not (the copies still work, slower).
  // unpin before the memory is freed. The CPU has nothing to pin: true.
  virtual bool pin(void* host, size_t bytes) const = 0;
  virtual void unpin(void* host) const = 0;
  // Whether p is this backend's memory (the CPU's: any pointer); a staged
  // device communicator refuses other buffers, as NCCL does (comm/staged.h).
  virtual bool holds(const void* p) const = 0;
  virtual void copy(void* dst, const void* src, size_t bytes, Stream s) const = 0;
  virtual void zero(void* dst, size_t bytes, Stream s) const = 0;
  virtual void synchronize(Stream s) const = 0;

  // z (n) = x + y, elementwise (the residual stream); z may alias x or y.
  virtual void add(float* z, const float* x, const float* y, int64_t n, Stream s) const = 0;
  // dst (n) = src rounded to BF16 (nearest even), kept in FP32: the operands
  // of the bf16 recipe's GEMMs. dst may alias src.
  virtual void round_bf16(float* dst, const float* src, int64_t n, Stream s) const = 0;

  // GEMM, row-major: C (M, N) = alpha op(A) op(B) + beta C.
  virtual void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, Stream s) const = 0;
  // Linear without bias, W (O, I): out (N, O) = inp . W^T.
  virtual void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                              Stream s) const = 0;
  // dinp (N, I) = dout . W (overwritten, or added with accumulate_dinp; skipped when null).
  virtual void linear_dgrad(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                            bool accumulate_dinp, Stream s) const = 0;
  // dW (O, I) += dout^T . inp.
  virtual void linear_wgrad(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O,
                            Stream s) const = 0;
  // All groups' linears in one call: rows [offsets[g], offsets[g+1]) use w[g].
  // dinp is overwritten; dw[g] accumulates. Empty groups are skipped.
  // offsets and the pointer arrays w / dw are host memory (the dispatch plan
  // is host data); the pointers in them and inp/out/dout are device memory.
  virtual void grouped_linear_forward(float* out, const float* inp, const float* const* w, const int64_t* offsets,
                                      int64_t groups, int64_t I, int64_t O, Stream s) const = 0;
  virtual void grouped_linear_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets,
                                    int64_t groups, int64_t I, int64_t O, Stream s) const = 0;
  virtual void grouped_linear_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets,
                                    int64_t groups, int64_t I, int64_t O, Stream s) const = 0;

  // BF16 linears (the bf16 recipe): the shapes and the overwrite/accumulate
  // rules of the FP32 linears above, on FP32 arrays; the result is the
  // products of the operands rounded to BF16 (nearest even, round_bf16)
  // accumulated in FP32, as a BF16 tensor-core GEMM with FP32 accumulation
  // computes it. The backend does the rounding (the CPU: round, then the FP32
  // GEMM, bit for bit; CUDA: BF16 copies in its workspace and a BF16 GEMM).
  virtual void linear_forward_bf16(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                                   Stream s) const = 0;
  virtual void linear_dgrad_bf16(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O,
                                 bool accumulate_dinp, Stream s) const = 0;
  virtual void linear_wgrad_bf16(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O,
                                 Stream s) const = 0;
  virtual void grouped_linear_forward_bf16(float* out, const float* inp, const float* const* w,
                                           const int64_t* offsets, int64_t groups, int64_t I, int64_t O,
                                           Stream s) const = 0;
  virtual void grouped_linear_dgrad_bf16(float* dinp, const float* dout, const float* const* w,
                                         const int64_t* offsets, int64_t groups, int64_t I, int64_t O,
                                         Stream s) const = 0;
  virtual void grouped_linear_wgrad_bf16(float* const* dw, const float* dout, const float* inp,
                                         const int64_t* offsets, int64_t groups, int64_t I, int64_t O,
                                         Stream s) const = 0;

  // FP8: quantize x (rows, cols) (or x^T with transpose) into out; C (+)= A . B^T.
  // out's codes and scales are this backend's memory (Fp8Matrix::shape).
  virtual QuantStats fp8_quantize(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols,
                                  const QuantOptions& o, bool transpose, Stream s) const = 0;
  virtual void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate, Stream s) const = 0;
  // x (rows, cols) = decode(q) * scale_inv: the values the FP8 GEMM computes with.
  virtual void fp8_dequantize(float* x, const Fp8Matrix& m, Stream s) const = 0;

  // Packed rows, the MoE payloads between ranks (moe/payload.h): n rows of C
  // values, row r at packed + r * row_words 4-byte words (kernels/cpu/pack.h).
  //   bf16: C BF16 values (nearest even, as round_bf16), zero-padded to a word.
  //   fp8:  a 1 x 128-scaled matrix's C codes, zero-padded to a word, then
  //         its ceil(C / 128) inverse scales.
  virtual void pack_bf16_rows(void* packed, int64_t row_words, const float* x, int64_t n, int64_t C,
                              Stream s) const = 0;
  virtual void unpack_bf16_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C,
                                Stream s) const = 0;
  virtual void fp8_pack_rows(void* packed, int64_t row_words, const Fp8Matrix& m, Stream s) const = 0;
  // m (n, C, fmt, 1 x 128 scales) from packed rows, in this backend's memory.
  virtual void fp8_unpack_rows(Fp8Matrix& m, const void* packed, int64_t row_words, int64_t n, int64_t C,
                               Fp8Format fmt, Stream s) const = 0;
  // x (n, C) = the values of packed FP8 rows (decode(code) * scale_inv), as fp8_dequantize of them.
  virtual void fp8_decode_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C,
                               Fp8Format fmt, Stream s) const = 0;

  // Causal attention over packed qkv (N, (H + 2 Hkv) D), grouped-query heads.
  virtual void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                                 int64_t Hkv, int64_t D, Stream s) const = 0;
  virtual void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                                  const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                  Stream s) const = 0;
  // Decoding: n new queries at positions pos0.. against a KV cache.
  virtual void attention_cached(float* out, const float* q, int64_t q_stride, const float* k_cache,
                                const float* v_cache, int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D,
                                Stream s) const = 0;

  virtual void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                               float eps, Stream s) const = 0;
  // dinp += ..., dw += ...
  virtual void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                                const float* rstd, int64_t N, int64_t C, Stream s) const = 0;

  virtual void rope_table(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta, Stream s) const = 0;
  virtual void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads,
                            int64_t D, int64_t stride, Stream s) const = 0;
  virtual void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int64_t T,
                             int64_t heads, int64_t D, int64_t stride, Stream s) const = 0;

  virtual void swiglu_forward(float* out, const float* inp, int64_t N, int64_t F, Stream s) const = 0;
  virtual void swiglu_backward(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F,
                               Stream s) const = 0;

  virtual void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C,
                                 Stream s) const = 0;
  virtual void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C,
                                  Stream s) const = 0;
  // losses (N); dlogits (N, V) = dscale * (softmax - onehot) when not null.
  virtual void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N,
                             int64_t V, float dscale, Stream s) const = 0;

  // Router: scores/probs, top-k with bias, the top-k margin, balance sums and terms, backward.
  virtual void router_scores(float* scores, float* probs, const float* logits, int64_t N, int64_t E, ScoreFn fn,
                             Stream s) const = 0;
  // groups: group-limited routing (DeepSeek-V3 n_group / topk_group; kernels/types.h), off by default.
  virtual void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N, int64_t E,
                           int64_t K, bool renormalize, RouterGroups groups, Stream s) const = 0;
  virtual double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E,
                               int64_t K, RouterGroups groups, Stream s) const = 0;
  virtual void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs, int64_t N,
                           int64_t E, int64_t K, Stream s) const = 0;
  virtual RouterLosses router_losses(const RouterSums& sums, int64_t Ntot, int64_t E, int64_t K) const = 0;
  virtual void router_backward(float* dlogits, const float* dgates, const int32_t* idx, const float* logits,
                               const float* scores, const float* probs, const RouterSums& sums, int64_t N,
                               int64_t Ntot, int64_t E, int64_t K, ScoreFn fn, bool renormalize, RouterCoefs coefs,
                               Stream s) const = 0;

  // MoE permutation: token rows to send order and back (kernels/cpu/permute.h).
  virtual void moe_gather(RowMap dst, const float* x, const int32_t* row_token, int64_t M, int64_t C,
                          Stream s) const = 0;
  virtual void moe_gather_backward(float* dx, RowMap src, const int32_t* pos, int64_t N, int64_t K, int64_t C,
                                   Stream s) const = 0;
  virtual void moe_combine(float* out, RowMap y, float* y_copy, const float* gates, const int32_t* pos, int64_t N,
                           int64_t K, int64_t C, Stream s) const = 0;
  virtual void moe_combine_backward(RowMap dy, float* dgates, const float* dout, RowMap y, const float* gates,
                                    const int32_t* pos, int64_t N, int64_t K, int64_t C, Stream s) const = 0;

  // The squared L2 norm of each run x[offsets[r], + counts[r]) in double,
  // into out[r] (host memory; offsets and counts are host arrays too); returns
  // once out is filled. The gradient norm's terms (kernels/cpu/adamw.h).
  virtual void sum_squares(double* out, const float* x, const int64_t* offsets, const int64_t* counts,
                           int64_t ranges, Stream s) const = 0;

  // AdamW on n parameters; moments in FP32 or BF16 (uint16 storage).
  virtual void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a,
                            Stream s) const = 0;
  virtual void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n,
                                 const AdamWParams& a, Stream s) const = 0;
};

// The backend of a device. The CPU backend always exists; another device's
// exists once its library registered it (else: an error naming the device
// and how to build with it).
const Backend& backend(Device d);
// Called once by a device backend's library at start-up.
void register_backend(Device d, const Backend* b);
// The backend a tool's --device (or run.device) asks for: the CPU's; for
// cuda the registered CUDA backend, else, for tests, the CUDA device emulated
// on the CPU when SY_EMULATE_CUDA=guarded (kernels/cpu/emulated_device.h),
// else the CUDA module loaded at run time (kernels/cpu/cuda_module.h). Without
// one, a ConfigError (exit 2) naming the device and why (no module in this
// build, a CUDA library missing, no GPU).
const Backend& open_backend(Device d);

}  // namespace sy
