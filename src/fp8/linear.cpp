#include "fp8/linear.h"

#include <algorithm>

#include "core/check.h"

namespace sy {

namespace {
// Quantized operands of the GEMM being run (scratch, reused: no allocation
// per call once grown). Per thread, as GEMMs of different layers may run on
// different threads.
thread_local Fp8Matrix t_a, t_b;
}  // namespace

namespace {
// Grows pool v (`used` elements kept) to hold n, by a quarter at a time once
// it holds anything: after the first steps a pool stops growing, a little
// above the largest step's need.
template <class T>
void pool_fit(GrowBuffer<T>& v, size_t used, size_t n, const Backend& be, Stream s) {
  if (n <= v.capacity()) return;
  GrowBuffer<T> bigger(be.allocator());
  bigger.ensure(std::max(n, v.capacity() + v.capacity() / 4));
  if (used > 0) be.copy(bigger.data(), v.data(), used * sizeof(T), s);
  be.synchronize(s);  // the old pool goes now
  v = std::move(bigger);
}
}  // namespace

void Fp8Saved::add(int64_t row, const Fp8Matrix& m, const Backend& be, Stream s) {
  const size_t nq = m.code_count(), ns = m.scale_count();
  Part p{row, m.rows, m.cols, m.fmt, m.mode, q_used_, s_used_, ns};
  if (q_.device() != be.device()) q_ = GrowBuffer<uint8_t>(be.allocator()), s_ = GrowBuffer<float>(be.allocator());
  pool_fit(q_, q_used_, q_used_ + nq, be, s);
  pool_fit(s_, s_used_, s_used_ + ns, be, s);
  be.copy(q_.data() + q_used_, m.q.data(), nq, s);
  be.copy(s_.data() + s_used_, m.scale_inv.data(), ns * sizeof(float), s);
  q_used_ += nq, s_used_ += ns;
  parts_.push_back(p);
}

void Fp8Saved::get(int64_t row, Fp8Matrix& m, const Backend& be, Stream s) const {
  for (const Part& p : parts_) {
    if (p.row != row) continue;
    m.shape(p.rows, p.cols, p.fmt, p.mode, be.allocator());
    SY_CHECK(m.scale_count() == p.ns, "FP8-saved part at row {}: {} scales saved, its shape has {}", row, p.ns,
             m.scale_count());
    be.copy(m.q.data(), q_.data() + p.q, m.code_count(), s);
    be.copy(m.scale_inv.data(), s_.data() + p.s, p.ns * sizeof(float), s);
    return;
  }
  SY_CHECK(false, "no FP8-saved activation starting at row {} ({} parts saved): forward and backward disagree", row,
           parts_.size());
}

void Fp8Linear::forward(Fp8Group g, float* out, const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                        Fp8Saved* save, int64_t save_row) {
  scaler_.note(g, Fp8Role::act, quantize(t_a, inp, N, I, scaler_.options(Fp8Role::act, Fp8Format::e4m3, w)), w);
  scaler_.note(g, Fp8Role::weight, quantize(t_b, w, O, I, scaler_.options(Fp8Role::weight, Fp8Format::e4m3, w)), w);
  be_.fp8_gemm(out, t_a, t_b, false, stream_);
  if (save) {
    quantize(t_b, inp, N, I, scaler_.wgrad_options(Fp8Role::act, Fp8Format::e4m3, w), true);
    save->add(save_row, t_b, be_, stream_);
  }
}

void Fp8Linear::backward(Fp8Group g, float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                         int64_t N, int64_t I, int64_t O, bool accumulate_dinp, const Fp8Saved* saved,
                         int64_t save_row) {
  SY_CHECK(inp || saved, "FP8 linear backward ({}): no input (FP32 or saved in FP8) for the weight gradient",
           to_string(g));
  const Fp8Format gf = recipe().grad_format;
  if (dinp) {  // dx (N, I) = dy (N, O) . W (O, I): K = O
    scaler_.note(g, Fp8Role::grad, quantize(t_a, dout, N, O, scaler_.options(Fp8Role::grad, gf, w)), w);
    quantize(t_b, w, O, I, scaler_.options(Fp8Role::weight, Fp8Format::e4m3, w), true);  // W^T (I, O)
    be_.fp8_gemm(dinp, t_a, t_b, accumulate_dinp, stream_);
  }
  wgrad(g, dw, dout, inp, w, N, I, O, saved, save_row);
}

void Fp8Linear::wgrad(Fp8Group, float* dw, const float* dout, const float* inp, const float* w, int64_t N, int64_t I,
                      int64_t O, const Fp8Saved* saved, int64_t save_row) {
  const Fp8Format gf = recipe().grad_format;
  // dW (O, I) += dy^T (O, N) . x (N, I): K = N, both quantized along the tokens.
  quantize(t_a, dout, N, O, scaler_.wgrad_options(Fp8Role::grad, gf, w), true);
  if (saved) {
    saved->get(save_row, t_b, be_, stream_);
    SY_CHECK(t_b.rows == I && t_b.cols == N, "FP8-saved input is {}x{}, the weight gradient needs {}x{}", t_b.rows,
             t_b.cols, I, N);
  } else {
    quantize(t_b, inp, N, I, scaler_.wgrad_options(Fp8Role::act, Fp8Format::e4m3, w), true);
  }
  be_.fp8_gemm(dw, t_a, t_b, true, stream_);
}

void Fp8Linear::quantize_operand(Fp8Group g, Fp8Role role, Fp8Matrix& m, const float* x, int64_t N, int64_t K,
                                 const float* w) {
  const Fp8Format f = role == Fp8Role::grad ? recipe().grad_format : Fp8Format::e4m3;
  scaler_.note(g, role, quantize(m, x, N, K, scaler_.options(role, f, w)), w);
}

namespace {
void check_operand(const Fp8Matrix& m, int64_t rows, int64_t cols, Fp8Format f, const char* what) {
  SY_CHECK(m.rows == rows && m.cols == cols && m.fmt == f, "FP8 linear: the pre-quantized {} is {}x{} {}, the GEMM "
           "needs {}x{} {}", what, m.rows, m.cols, to_string(m.fmt), rows, cols, to_string(f));
}
}  // namespace

void Fp8Linear::forward_quantized(Fp8Group g, float* out, const Fp8Matrix& x_q, const float* inp, const float* w,
                                  int64_t N, int64_t I, int64_t O, Fp8Saved* save, int64_t save_row) {
  check_operand(x_q, N, I, Fp8Format::e4m3, "input");
  scaler_.note(g, Fp8Role::weight, quantize(t_b, w, O, I, scaler_.options(Fp8Role::weight, Fp8Format::e4m3, w)), w);
  be_.fp8_gemm(out, x_q, t_b, false, stream_);
  if (save) {
    quantize(t_b, inp, N, I, scaler_.wgrad_options(Fp8Role::act, Fp8Format::e4m3, w), true);
    save->add(save_row, t_b, be_, stream_);
  }
}

void Fp8Linear::backward_quantized(Fp8Group g, float* dinp, float* dw, const Fp8Matrix& dout_q, const float* dout,
                                   const float* inp, const float* w, int64_t N, int64_t I, int64_t O,
                                   const Fp8Saved* saved, int64_t save_row) {
  SY_CHECK(inp || saved, "FP8 linear backward ({}): no input (FP32 or saved in FP8) for the weight gradient",
           to_string(g));
  check_operand(dout_q, N, O, recipe().grad_format, "output gradient");
  quantize(t_b, w, O, I, scaler_.options(Fp8Role::weight, Fp8Format::e4m3, w), true);  // W^T (I, O)
  be_.fp8_gemm(dinp, dout_q, t_b, false, stream_);
  wgrad(g, dw, dout, inp, w, N, I, O, saved, save_row);
}

}  // namespace sy
