#include "model/blocks.h"

#include <algorithm>

#include "core/parallel.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/fp8_linear.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"

namespace sy {

void attention_block_forward(AttnActs& a, float* x_mid, const float* x_in, const float* params,
                             const BlockOffsets& o, const Dims& d, const RopeTables& rope,
                             float eps, Scratch& s) {
  rmsnorm_forward(a.h1, a.rstd1, x_in, params + o.attn_norm, d.N, d.C, eps);
  mm_forward(Fp8Group::attn_qkv, a.qkv, a.h1, params + o.wqkv, d.N, d.C, d.R, a.fp8 ? &a.h1_q : nullptr);
  rope_forward(a.qkv, rope.cos, rope.sin, d.N, d.T, d.H + d.Hkv, d.D, d.R);
  attention_forward(a.att, a.lse, a.qkv, d.B, d.T, d.H, d.Hkv, d.D);
  mm_forward(Fp8Group::attn_out, s.tmp, a.att, params + o.wo, d.N, d.H * d.D, d.C);
  parallel_for(d.N, [&](int64_t n) {
    const float* x = x_in + n * d.C;
    const float* y = s.tmp + n * d.C;
    float* z = x_mid + n * d.C;
#pragma omp simd
    for (int64_t c = 0; c < d.C; ++c) z[c] = x[c] + y[c];
  });
}

void attention_block_backward(float* dres, float* grads, const AttnActs& a, const float* x_in,
                              const float* params, const BlockOffsets& o, const Dims& d,
                              const RopeTables& rope, Scratch& s) {
  mm_backward(Fp8Group::attn_out, s.datt, grads + o.wo, dres, a.att, params + o.wo, d.N, d.H * d.D, d.C);
  attention_backward(s.dqkv, s.datt, a.qkv, a.att, a.lse, d.B, d.T, d.H, d.Hkv, d.D);
  rope_backward(s.dqkv, rope.cos, rope.sin, d.N, d.T, d.H + d.Hkv, d.D, d.R);
  mm_backward(Fp8Group::attn_qkv, s.dh, grads + o.wqkv, s.dqkv, a.h1, params + o.wqkv, d.N, d.C, d.R, false,
              a.fp8 ? &a.h1_q : nullptr);
  rmsnorm_backward(dres, grads + o.attn_norm, s.dh, x_in, params + o.attn_norm, a.rstd1, d.N, d.C);
}

void dense_ffn_forward(DenseActs& a, float* out, const float* h, const float* params,
                       const BlockOffsets& o, const Dims& d) {
  mm_forward(Fp8Group::mlp, a.up, h, params + o.mlp_w13, d.N, d.C, 2 * d.Fd, a.fp8 ? &a.h_q : nullptr);
  swiglu_forward(a.act, a.up, d.N, d.Fd);
  mm_forward(Fp8Group::mlp, out, a.act, params + o.mlp_w2, d.N, d.Fd, d.C, a.fp8 ? &a.act_q : nullptr);
}

void dense_ffn_backward(float* dh, float* grads, const DenseActs& a, const float* dout,
                        const float* h, const float* params, const BlockOffsets& o, const Dims& d,
                        Scratch& s) {
  mm_backward(Fp8Group::mlp, s.dact, grads + o.mlp_w2, dout, a.act, params + o.mlp_w2, d.N, d.Fd, d.C, false,
              a.fp8 ? &a.act_q : nullptr);
  swiglu_backward(s.dup, s.dact, a.up, d.N, d.Fd);
  mm_backward(Fp8Group::mlp, dh, grads + o.mlp_w13, s.dup, h, params + o.mlp_w13, d.N, d.C, 2 * d.Fd, false,
              a.fp8 ? &a.h_q : nullptr);
}

}  // namespace sy
