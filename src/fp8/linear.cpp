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
// Grows v to hold n, by a quarter at a time once it holds anything: after the
// first steps a pool stops growing, a little above the largest step's need.
template <class T>
void pool_fit(std::vector<T>& v, size_t n) {
  if (n > v.capacity()) v.reserve(std::max(n, v.capacity() + v.capacity() / 4));
  if (n > v.size()) v.resize(n);
}
}  // namespace

void Fp8Saved::add(int64_t row, const Fp8Matrix& m) {
  Part p{row, m.rows, m.cols, m.fmt, m.mode, q_used_, s_used_, m.scale_inv.size()};
  pool_fit(q_, q_used_ + m.q.size());
  pool_fit(s_, s_used_ + m.scale_inv.size());
  std::copy(m.q.begin(), m.q.end(), q_.begin() + static_cast<std::ptrdiff_t>(q_used_));
  std::copy(m.scale_inv.begin(), m.scale_inv.end(), s_.begin() + static_cast<std::ptrdiff_t>(s_used_));
  q_used_ += m.q.size(), s_used_ += m.scale_inv.size();
  parts_.push_back(p);
}

void Fp8Saved::get(int64_t row, Fp8Matrix& m) const {
  for (const Part& p : parts_) {
    if (p.row != row) continue;
    m.rows = p.rows, m.cols = p.cols, m.fmt = p.fmt, m.mode = p.mode;
    const auto q0 = q_.begin() + static_cast<std::ptrdiff_t>(p.q);
    m.q.assign(q0, q0 + p.rows * p.cols);
    const auto s0 = s_.begin() + static_cast<std::ptrdiff_t>(p.s);
    m.scale_inv.assign(s0, s0 + static_cast<std::ptrdiff_t>(p.ns));
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
    save->add(save_row, t_b);
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
    saved->get(save_row, t_b);
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
    save->add(save_row, t_b);
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
