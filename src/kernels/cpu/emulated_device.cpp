#include "kernels/cpu/emulated_device.h"

#include <execinfo.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>

#include "core/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/fp8_gemm.h"
#include "kernels/cpu/pack.h"

namespace sy {

namespace {

// One reserved range (address space only until used), handed out first-fit.
std::atomic<size_t> g_host_copy_bytes{0};  // bytes copied between host and device memory

class GuardedMemory final : public Allocator {
 public:
  GuardedMemory() {
    const char* gib = std::getenv("SY_EMULATE_CUDA_GIB");
    reserved_ = (gib ? std::strtoull(gib, nullptr, 10) : 64ull) << 30;
    SY_CHECK(reserved_ > 0, "SY_EMULATE_CUDA_GIB must be a positive number of GiB, got '{}'", gib ? gib : "");
    void* p = ::mmap(nullptr, reserved_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    SY_CHECK(p != MAP_FAILED, "emulated CUDA device: cannot reserve {} GiB of address space: {}", reserved_ >> 30,
             std::strerror(errno));
    base_ = static_cast<std::byte*>(p);
    free_[0] = reserved_;
  }
  Device device() const override { return Device::cuda; }
  void* allocate(size_t bytes, size_t align) override {
    std::lock_guard<std::mutex> lk(mu_);
    bytes = round(std::max<size_t>(bytes, 1));
    align = std::max<size_t>(align, kGrain);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      const size_t at = (it->first + align - 1) / align * align, end = it->first + it->second;
      if (at + bytes > end) continue;
      const size_t lo = it->first;
      free_.erase(it);
      if (at > lo) free_[lo] = at - lo;
      if (at + bytes < end) free_[at + bytes] = end - at - bytes;
      used_[at] = bytes;
      in_use_ += bytes, peak_ = std::max(peak_, in_use_);
      high_ = std::max(high_, at + bytes);
      if (open_ > 0) unprotect_to(high_);
      return base_ + at;
    }
    SY_CHECK(false, "emulated CUDA device: out of memory ({} bytes asked, {} in use of {} GiB; set "
             "SY_EMULATE_CUDA_GIB)", bytes, in_use_, reserved_ >> 30);
    return nullptr;
  }
  void deallocate(void* p, size_t, size_t) override {
    std::lock_guard<std::mutex> lk(mu_);
    const size_t at = static_cast<size_t>(static_cast<std::byte*>(p) - base_);
    auto u = used_.find(at);
    SY_CHECK(u != used_.end(), "emulated CUDA device: freeing {} which it did not hand out", p);
    size_t lo = at, size = u->second;
    in_use_ -= size;
    used_.erase(u);
    auto next = free_.lower_bound(lo);
    if (next != free_.end() && next->first == lo + size) size += next->second, next = free_.erase(next);
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == lo) lo = prev->first, size += prev->second, free_.erase(prev);
    }
    free_[lo] = size;
  }
  // The range is readable and writable while at least one op runs.
  void open() {
    std::lock_guard<std::mutex> lk(mu_);
    if (open_++ == 0) unprotect_to(high_);
  }
  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    if (--open_ == 0 && open_to_ > 0) {
      SY_CHECK(::mprotect(base_, open_to_, PROT_NONE) == 0, "emulated CUDA device: mprotect: {}", std::strerror(errno));
      open_to_ = 0;
    }
  }
  bool contains(const void* p) const {
    const auto* b = static_cast<const std::byte*>(p);
    return b >= base_ && b < base_ + reserved_;
  }
  size_t offset(const void* p) const { return static_cast<size_t>(static_cast<const std::byte*>(p) - base_); }
  size_t in_use() const { return in_use_; }
  size_t reserved() const { return reserved_; }
  size_t peak() const { return peak_; }

 private:
  static constexpr size_t kGrain = 4096;  // page-sized slices: a fault names one buffer's pages
  static size_t round(size_t n) { return (n + kGrain - 1) / kGrain * kGrain; }
  void unprotect_to(size_t end) {
    if (end <= open_to_) return;
    SY_CHECK(::mprotect(base_ + open_to_, end - open_to_, PROT_READ | PROT_WRITE) == 0,
             "emulated CUDA device: mprotect: {}", std::strerror(errno));
    open_to_ = end;
  }
  std::mutex mu_;
  std::byte* base_ = nullptr;
  size_t reserved_ = 0, high_ = 0, open_to_ = 0, in_use_ = 0, peak_ = 0;
  int open_ = 0;
  std::map<size_t, size_t> free_, used_;  // offset -> bytes
};

GuardedMemory* g_memory = nullptr;  // for the fault handler

void on_fault(int sig, siginfo_t* info, void*) {
  if (g_memory && g_memory->contains(info->si_addr)) {
    char msg[256];
    const int n = std::snprintf(msg, sizeof msg,
                                "emulated CUDA device: host code touched device memory (device offset %zu, "
                                "outside any backend op: a missing copy to or from the device); host stack:\n",
                                g_memory->offset(info->si_addr));
    if (n > 0) (void)!::write(2, msg, static_cast<size_t>(n));
    void* frames[64];
    backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
    ::_exit(86);
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

class EmulatedCuda final : public Backend {
 public:
  EmulatedCuda() : cpu_(cpu_backend()) {
    g_memory = &mem_;
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGSEGV, &sa, nullptr);
    ::sigaction(SIGBUS, &sa, nullptr);
  }
  Device device() const override { return Device::cuda; }
  const char* name() const override { return "cuda (emulated on the CPU)"; }
  BackendInfo info() const override {
    BackendInfo i = cpu_.info();
    i.kernels = "emulated CUDA device over " + i.kernels;
    i.emulated = true;
    return i;
  }
  void set_threads(int n) const override { cpu_.set_threads(n); }
  OpCounters counters() const override { return cpu_.counters(); }
  void reset_counters() const override { cpu_.reset_counters(); }
  Allocator& allocator() const override { return mem_; }

  void copy(void* dst, const void* src, size_t bytes, Stream s) const override {
    if (mem_.contains(dst) != mem_.contains(src)) g_host_copy_bytes += bytes;  // between host and device
    Open open(*this);
    cpu_.copy(dst, src, bytes, s);
  }
  void zero(void* dst, size_t bytes, Stream s) const override {
    Open open(*this);
    cpu_.zero(dst, bytes, s);
  }
  void synchronize(Stream s) const override {
    Open open(*this);
    cpu_.synchronize(s);
  }
  void add(float* z, const float* x, const float* y, int64_t n, Stream s) const override {
    on_device(z, "add", "z");
    on_device(x, "add", "x");
    on_device(y, "add", "y");
    Open open(*this);
    cpu_.add(z, x, y, n, s);
  }
  void round_bf16(float* dst, const float* src, int64_t n, Stream s) const override {
    on_device(dst, "round_bf16", "dst");
    on_device(src, "round_bf16", "src");
    Open open(*this);
    cpu_.round_bf16(dst, src, n, s);
  }
  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, Stream s) const override {
    on_device(A, "gemm", "A");
    on_device(B, "gemm", "B");
    on_device(C, "gemm", "C");
    Open open(*this);
    cpu_.gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, s);
  }
  void linear_forward(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O, Stream s) const override {
    on_device(out, "linear_forward", "out");
    on_device(inp, "linear_forward", "inp");
    on_device(w, "linear_forward", "w");
    Open open(*this);
    cpu_.linear_forward(out, inp, w, N, I, O, s);
  }
  void linear_dgrad(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O, bool accumulate_dinp, Stream s) const override {
    on_device(dinp, "linear_dgrad", "dinp");
    on_device(dout, "linear_dgrad", "dout");
    on_device(w, "linear_dgrad", "w");
    Open open(*this);
    cpu_.linear_dgrad(dinp, dout, w, N, I, O, accumulate_dinp, s);
  }
  void linear_wgrad(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O, Stream s) const override {
    on_device(dw, "linear_wgrad", "dw");
    on_device(dout, "linear_wgrad", "dout");
    on_device(inp, "linear_wgrad", "inp");
    Open open(*this);
    cpu_.linear_wgrad(dw, dout, inp, N, I, O, s);
  }
  void grouped_linear_forward(float* out, const float* inp, const float* const* w, const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Stream s) const override {
    on_device(out, "grouped_linear_forward", "out");
    on_device(inp, "grouped_linear_forward", "inp");
    on_device(w, groups, "grouped_linear_forward", "w");
    Open open(*this);
    cpu_.grouped_linear_forward(out, inp, w, offsets, groups, I, O, s);
  }
  void grouped_linear_dgrad(float* dinp, const float* dout, const float* const* w, const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Stream s) const override {
    on_device(dinp, "grouped_linear_dgrad", "dinp");
    on_device(dout, "grouped_linear_dgrad", "dout");
    on_device(w, groups, "grouped_linear_dgrad", "w");
    Open open(*this);
    cpu_.grouped_linear_dgrad(dinp, dout, w, offsets, groups, I, O, s);
  }
  void grouped_linear_wgrad(float* const* dw, const float* dout, const float* inp, const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Stream s) const override {
    on_device(dw, groups, "grouped_linear_wgrad", "dw");
    on_device(dout, "grouped_linear_wgrad", "dout");
    on_device(inp, "grouped_linear_wgrad", "inp");
    Open open(*this);
    cpu_.grouped_linear_wgrad(dw, dout, inp, offsets, groups, I, O, s);
  }
  void linear_forward_bf16(float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O, Stream s) const override {
    on_device(out, "linear_forward_bf16", "out");
    on_device(inp, "linear_forward_bf16", "inp");
    on_device(w, "linear_forward_bf16", "w");
    Open open(*this);
    cpu_.linear_forward_bf16(out, inp, w, N, I, O, s);
  }
  void linear_dgrad_bf16(float* dinp, const float* dout, const float* w, int64_t N, int64_t I, int64_t O, bool accumulate_dinp, Stream s) const override {
    on_device(dinp, "linear_dgrad_bf16", "dinp");
    on_device(dout, "linear_dgrad_bf16", "dout");
    on_device(w, "linear_dgrad_bf16", "w");
    Open open(*this);
    cpu_.linear_dgrad_bf16(dinp, dout, w, N, I, O, accumulate_dinp, s);
  }
  void linear_wgrad_bf16(float* dw, const float* dout, const float* inp, int64_t N, int64_t I, int64_t O, Stream s) const override {
    on_device(dw, "linear_wgrad_bf16", "dw");
    on_device(dout, "linear_wgrad_bf16", "dout");
    on_device(inp, "linear_wgrad_bf16", "inp");
    Open open(*this);
    cpu_.linear_wgrad_bf16(dw, dout, inp, N, I, O, s);
  }
  void grouped_linear_forward_bf16(float* out, const float* inp, const float* const* w, const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Stream s) const override {
    on_device(out, "grouped_linear_forward_bf16", "out");
    on_device(inp, "grouped_linear_forward_bf16", "inp");
    on_device(w, groups, "grouped_linear_forward_bf16", "w");
    Open open(*this);
    cpu_.grouped_linear_forward_bf16(out, inp, w, offsets, groups, I, O, s);
  }
  void grouped_linear_dgrad_bf16(float* dinp, const float* dout, const float* const* w, const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Stream s) const override {
    on_device(dinp, "grouped_linear_dgrad_bf16", "dinp");
    on_device(dout, "grouped_linear_dgrad_bf16", "dout");
    on_device(w, groups, "grouped_linear_dgrad_bf16", "w");
    Open open(*this);
    cpu_.grouped_linear_dgrad_bf16(dinp, dout, w, offsets, groups, I, O, s);
  }
  void grouped_linear_wgrad_bf16(float* const* dw, const float* dout, const float* inp, const int64_t* offsets, int64_t groups, int64_t I, int64_t O, Stream s) const override {
    on_device(dw, groups, "grouped_linear_wgrad_bf16", "dw");
    on_device(dout, "grouped_linear_wgrad_bf16", "dout");
    on_device(inp, "grouped_linear_wgrad_bf16", "inp");
    Open open(*this);
    cpu_.grouped_linear_wgrad_bf16(dw, dout, inp, offsets, groups, I, O, s);
  }
  // FP8 codes and scales are device memory, as on a GPU: host code that
  // reads them outside an op faults.
  QuantStats fp8_quantize(Fp8Matrix& out, const float* x, int64_t rows, int64_t cols, const QuantOptions& o, bool transpose, Stream) const override {
    on_device(x, "fp8_quantize", "x");
    Open open(*this);
    return quantize_matrix(out, x, rows, cols, o, transpose, mem_);
  }
  void fp8_gemm(float* C, const Fp8Matrix& A, const Fp8Matrix& B, bool accumulate, Stream s) const override {
    on_device(C, "fp8_gemm", "C");
    on_device(A, "fp8_gemm", "A");
    on_device(B, "fp8_gemm", "B");
    Open open(*this);
    cpu_.fp8_gemm(C, A, B, accumulate, s);
  }
  void fp8_dequantize(float* x, const Fp8Matrix& m, Stream s) const override {
    on_device(x, "fp8_dequantize", "x");
    on_device(m, "fp8_dequantize", "m");
    Open open(*this);
    cpu_.fp8_dequantize(x, m, s);
  }
  void pack_bf16_rows(void* packed, int64_t row_words, const float* x, int64_t n, int64_t C, Stream s) const override {
    on_device(packed, "pack_bf16_rows", "packed");
    on_device(x, "pack_bf16_rows", "x");
    Open open(*this);
    cpu_.pack_bf16_rows(packed, row_words, x, n, C, s);
  }
  void unpack_bf16_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C, Stream s) const override {
    on_device(x, "unpack_bf16_rows", "x");
    on_device(packed, "unpack_bf16_rows", "packed");
    Open open(*this);
    cpu_.unpack_bf16_rows(x, packed, row_words, n, C, s);
  }
  void fp8_pack_rows(void* packed, int64_t row_words, const Fp8Matrix& m, Stream s) const override {
    on_device(packed, "fp8_pack_rows", "packed");
    on_device(m, "fp8_pack_rows", "m");
    Open open(*this);
    cpu_.fp8_pack_rows(packed, row_words, m, s);
  }
  void fp8_unpack_rows(Fp8Matrix& m, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt, Stream) const override {
    on_device(packed, "fp8_unpack_rows", "packed");
    Open open(*this);
    sy::fp8_unpack_rows(m, packed, row_words, n, C, fmt, mem_);
  }
  void fp8_decode_rows(float* x, const void* packed, int64_t row_words, int64_t n, int64_t C, Fp8Format fmt, Stream s) const override {
    on_device(x, "fp8_decode_rows", "x");
    on_device(packed, "fp8_decode_rows", "packed");
    Open open(*this);
    cpu_.fp8_decode_rows(x, packed, row_words, n, C, fmt, s);
  }
  void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, Stream s) const override {
    on_device(out, "attention_forward", "out");
    on_device(lse, "attention_forward", "lse");
    on_device(qkv, "attention_forward", "qkv");
    Open open(*this);
    cpu_.attention_forward(out, lse, qkv, B, T, H, Hkv, D, s);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, Stream s) const override {
    on_device(dqkv, "attention_backward", "dqkv");
    on_device(dout, "attention_backward", "dout");
    on_device(qkv, "attention_backward", "qkv");
    on_device(out, "attention_backward", "out");
    on_device(lse, "attention_backward", "lse");
    Open open(*this);
    cpu_.attention_backward(dqkv, dout, qkv, out, lse, B, T, H, Hkv, D, s);
  }
  void attention_cached(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int64_t pos0, int64_t n, int64_t H, int64_t Hkv, int64_t D, Stream s) const override {
    on_device(out, "attention_cached", "out");
    on_device(q, "attention_cached", "q");
    on_device(k_cache, "attention_cached", "k_cache");
    on_device(v_cache, "attention_cached", "v_cache");
    Open open(*this);
    cpu_.attention_cached(out, q, q_stride, k_cache, v_cache, pos0, n, H, Hkv, D, s);
  }
  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C, float eps, Stream s) const override {
    on_device(out, "rmsnorm_forward", "out");
    on_device(rstd, "rmsnorm_forward", "rstd");
    on_device(inp, "rmsnorm_forward", "inp");
    on_device(w, "rmsnorm_forward", "w");
    Open open(*this);
    cpu_.rmsnorm_forward(out, rstd, inp, w, N, C, eps, s);
  }
  void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, const float* rstd, int64_t N, int64_t C, Stream s) const override {
    on_device(dinp, "rmsnorm_backward", "dinp");
    on_device(dw, "rmsnorm_backward", "dw");
    on_device(dout, "rmsnorm_backward", "dout");
    on_device(inp, "rmsnorm_backward", "inp");
    on_device(w, "rmsnorm_backward", "w");
    on_device(rstd, "rmsnorm_backward", "rstd");
    Open open(*this);
    cpu_.rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C, s);
  }
  void rope_table(float* cos_t, float* sin_t, int64_t T, int64_t D, double theta, Stream s) const override {
    on_device(cos_t, "rope_table", "cos_t");
    on_device(sin_t, "rope_table", "sin_t");
    Open open(*this);
    cpu_.rope_table(cos_t, sin_t, T, D, theta, s);
  }
  void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads, int64_t D, int64_t stride, Stream s) const override {
    on_device(x, "rope_forward", "x");
    on_device(cos_t, "rope_forward", "cos_t");
    on_device(sin_t, "rope_forward", "sin_t");
    Open open(*this);
    cpu_.rope_forward(x, cos_t, sin_t, N, T, heads, D, stride, s);
  }
  void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int64_t T, int64_t heads, int64_t D, int64_t stride, Stream s) const override {
    on_device(dx, "rope_backward", "dx");
    on_device(cos_t, "rope_backward", "cos_t");
    on_device(sin_t, "rope_backward", "sin_t");
    Open open(*this);
    cpu_.rope_backward(dx, cos_t, sin_t, N, T, heads, D, stride, s);
  }
  void swiglu_forward(float* out, const float* inp, int64_t N, int64_t F, Stream s) const override {
    on_device(out, "swiglu_forward", "out");
    on_device(inp, "swiglu_forward", "inp");
    Open open(*this);
    cpu_.swiglu_forward(out, inp, N, F, s);
  }
  void swiglu_backward(float* dinp, const float* dout, const float* inp, int64_t N, int64_t F, Stream s) const override {
    on_device(dinp, "swiglu_backward", "dinp");
    on_device(dout, "swiglu_backward", "dout");
    on_device(inp, "swiglu_backward", "inp");
    Open open(*this);
    cpu_.swiglu_backward(dinp, dout, inp, N, F, s);
  }
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C, Stream s) const override {
    on_device(out, "embedding_forward", "out");
    on_device(tokens, "embedding_forward", "tokens");
    on_device(wte, "embedding_forward", "wte");
    Open open(*this);
    cpu_.embedding_forward(out, tokens, wte, N, C, s);
  }
  void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C, Stream s) const override {
    on_device(dwte, "embedding_backward", "dwte");
    on_device(dout, "embedding_backward", "dout");
    on_device(tokens, "embedding_backward", "tokens");
    Open open(*this);
    cpu_.embedding_backward(dwte, dout, tokens, N, C, s);
  }
  void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t N, int64_t V, float dscale, Stream s) const override {
    on_device(losses, "cross_entropy", "losses");
    on_device(dlogits, "cross_entropy", "dlogits");
    on_device(logits, "cross_entropy", "logits");
    on_device(targets, "cross_entropy", "targets");
    Open open(*this);
    cpu_.cross_entropy(losses, dlogits, logits, targets, N, V, dscale, s);
  }
  void router_scores(float* scores, float* probs, const float* logits, int64_t N, int64_t E, ScoreFn fn, Stream s) const override {
    on_device(scores, "router_scores", "scores");
    on_device(probs, "router_scores", "probs");
    on_device(logits, "router_scores", "logits");
    Open open(*this);
    cpu_.router_scores(scores, probs, logits, N, E, fn, s);
  }
  void router_topk(int32_t* idx, float* gates, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K, bool renormalize, RouterGroups groups, Stream s) const override {
    on_device(idx, "router_topk", "idx");
    on_device(gates, "router_topk", "gates");
    on_device(scores, "router_topk", "scores");
    on_device(bias, "router_topk", "bias");
    Open open(*this);
    cpu_.router_topk(idx, gates, scores, bias, N, E, K, renormalize, groups, s);
  }
  double router_margin(const int32_t* idx, const float* scores, const float* bias, int64_t N, int64_t E, int64_t K, RouterGroups groups, Stream s) const override {
    on_device(idx, "router_margin", "idx");
    on_device(scores, "router_margin", "scores");
    on_device(bias, "router_margin", "bias");
    Open open(*this);
    return cpu_.router_margin(idx, scores, bias, N, E, K, groups, s);
  }
  void router_sums(RouterSums& sums, const int32_t* idx, const float* logits, const float* probs, int64_t N, int64_t E, int64_t K, Stream s) const override {
    on_device(idx, "router_sums", "idx");
    on_device(logits, "router_sums", "logits");
    on_device(probs, "router_sums", "probs");
    Open open(*this);
    cpu_.router_sums(sums, idx, logits, probs, N, E, K, s);
  }
  RouterLosses router_losses(const RouterSums& sums, int64_t Ntot, int64_t E, int64_t K) const override {
    Open open(*this);
    return cpu_.router_losses(sums, Ntot, E, K);
  }
  void router_backward(float* dlogits, const float* dgates, const int32_t* idx, const float* logits, const float* scores, const float* probs, const RouterSums& sums, int64_t N, int64_t Ntot, int64_t E, int64_t K, ScoreFn fn, bool renormalize, RouterCoefs coefs, Stream s) const override {
    on_device(dlogits, "router_backward", "dlogits");
    on_device(dgates, "router_backward", "dgates");
    on_device(idx, "router_backward", "idx");
    on_device(logits, "router_backward", "logits");
    on_device(scores, "router_backward", "scores");
    on_device(probs, "router_backward", "probs");
    Open open(*this);
    cpu_.router_backward(dlogits, dgates, idx, logits, scores, probs, sums, N, Ntot, E, K, fn, renormalize, coefs, s);
  }
  void moe_gather(RowMap dst, const float* x, const int32_t* row_token, int64_t M, int64_t C, Stream s) const override {
    on_device(dst, "moe_gather", "dst");
    on_device(x, "moe_gather", "x");
    on_device(row_token, "moe_gather", "row_token");
    Open open(*this);
    cpu_.moe_gather(dst, x, row_token, M, C, s);
  }
  void moe_gather_backward(float* dx, RowMap src, const int32_t* pos, int64_t N, int64_t K, int64_t C, Stream s) const override {
    on_device(dx, "moe_gather_backward", "dx");
    on_device(src, "moe_gather_backward", "src");
    on_device(pos, "moe_gather_backward", "pos");
    Open open(*this);
    cpu_.moe_gather_backward(dx, src, pos, N, K, C, s);
  }
  void moe_combine(float* out, RowMap y, float* y_copy, const float* gates, const int32_t* pos, int64_t N, int64_t K, int64_t C, Stream s) const override {
    on_device(out, "moe_combine", "out");
    on_device(y, "moe_combine", "y");
    on_device(y_copy, "moe_combine", "y_copy");
    on_device(gates, "moe_combine", "gates");
    on_device(pos, "moe_combine", "pos");
    Open open(*this);
    cpu_.moe_combine(out, y, y_copy, gates, pos, N, K, C, s);
  }
  void moe_combine_backward(RowMap dy, float* dgates, const float* dout, RowMap y, const float* gates, const int32_t* pos, int64_t N, int64_t K, int64_t C, Stream s) const override {
    on_device(dy, "moe_combine_backward", "dy");
    on_device(dgates, "moe_combine_backward", "dgates");
    on_device(dout, "moe_combine_backward", "dout");
    on_device(y, "moe_combine_backward", "y");
    on_device(gates, "moe_combine_backward", "gates");
    on_device(pos, "moe_combine_backward", "pos");
    Open open(*this);
    cpu_.moe_combine_backward(dy, dgates, dout, y, gates, pos, N, K, C, s);
  }
  bool pin(void* host, size_t) const override {  // host memory only; nothing to lock in an emulation
    SY_CHECK(!mem_.contains(host), "emulated CUDA device: pin is for host memory, got device memory");
    return true;
  }
  void unpin(void* host) const override {
    SY_CHECK(!mem_.contains(host), "emulated CUDA device: unpin is for host memory, got device memory");
  }
  bool holds(const void* p) const override { return p && mem_.contains(p); }
  std::optional<DeviceMemory> device_memory() const override {  // its reserved range (SY_EMULATE_CUDA_GIB)
    // Each process emulates a device of its own.
    return DeviceMemory{static_cast<double>(mem_.reserved() - mem_.in_use()), static_cast<double>(mem_.reserved()),
                        "emulated:" + std::to_string(::getpid())};
  }
  void sum_squares(double* out, const float* x, const int64_t* offsets, const int64_t* counts, int64_t ranges,
                   Stream s) const override {
    on_device(x, "sum_squares", "x");
    SY_CHECK(!mem_.contains(out) && !mem_.contains(offsets) && !mem_.contains(counts),
             "emulated CUDA device: sum_squares's out, offsets and counts are host memory by contract");
    Open open(*this);
    cpu_.sum_squares(out, x, offsets, counts, ranges, s);
  }
  void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& a, Stream s) const override {
    on_device(p, "adamw_update", "p");
    on_device(g, "adamw_update", "g");
    on_device(m, "adamw_update", "m");
    on_device(v, "adamw_update", "v");
    Open open(*this);
    cpu_.adamw_update(p, g, m, v, n, a, s);
  }
  void adamw_update_bf16(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWParams& a, Stream s) const override {
    on_device(p, "adamw_update_bf16", "p");
    on_device(g, "adamw_update_bf16", "g");
    on_device(m, "adamw_update_bf16", "m");
    on_device(v, "adamw_update_bf16", "v");
    Open open(*this);
    cpu_.adamw_update_bf16(p, g, m, v, n, a, s);
  }

 private:
  // While one of the ops runs, device memory is open to it.
  struct Open {
    explicit Open(const EmulatedCuda& b) : m(b.mem_) { m.open(); }
    ~Open() { m.close(); }
    GuardedMemory& m;
  };
  // An op's buffers must be device memory (null: an absent optional one):
  // a host pointer handed to a device op is a missing copy to the device.
  void on_device(const void* p, const char* op, const char* arg) const {
    SY_CHECK(!p || mem_.contains(p), "emulated CUDA device: {}'s argument '{}' ({}) is host memory, not device "
             "memory (a missing copy to the device)", op, arg, p);
  }
  void on_device(const RowMap& m, const char* op, const char* arg) const {
    SY_CHECK(m.local || !m.base, "emulated CUDA device: {}'s argument '{}' is a scattered row map (shared memory "
             "across ranks), which a device does not have", op, arg);
    on_device(m.local, op, arg);
  }
  void on_device(const Fp8Matrix& m, const char* op, const char* arg) const {
    if (m.rows == 0 || m.cols == 0) return;
    SY_CHECK(mem_.contains(m.q.data()) && mem_.contains(m.scale_inv.data()), "emulated CUDA device: {}'s FP8 "
             "matrix '{}' ({}x{}) is host memory, not device memory (quantized by another backend)", op, arg, m.rows,
             m.cols);
  }
  template <class T>
  void on_device(T* const* ps, int64_t n, const char* op, const char* arg) const {
    for (int64_t i = 0; i < n; ++i) on_device(ps[i], op, arg);
  }
  const Backend& cpu_;
  mutable GuardedMemory mem_;
};

EmulatedCuda& instance() {
  static EmulatedCuda b;  // lives for the process
  return b;
}

}  // namespace

const Backend& emulated_cuda_backend() { return instance(); }
size_t emulated_device_bytes() { return g_memory ? g_memory->in_use() : 0; }
size_t emulated_device_host_copy_bytes() { return g_host_copy_bytes; }
size_t emulated_device_peak_bytes() { return g_memory ? g_memory->peak() : 0; }

}  // namespace sy
