#include "model/blocks.h"

#include <algorithm>


namespace sy {

void attention_block_forward(const Ops& ops, AttnActs& a, float* x_mid, const float* x_in, const float* params,
                             const BlockOffsets& o, const Dims& d, const RopeTables& rope,
                             float eps, Scratch& s) {
  ops.b().rmsnorm_forward(a.h1, a.rstd1, x_in, params + o.attn_norm, d.N, d.C, eps, ops.stream);
  mm_forward(ops, Fp8Group::attn_qkv, a.qkv, a.h1, params + o.wqkv, d.N, d.C, d.R, a.fp8 ? &a.h1_q : nullptr);
  ops.b().rope_forward(a.qkv, rope.cos, rope.sin, d.N, d.T, d.H + d.Hkv, d.D, d.R, ops.stream);
  ops.b().attention_forward(a.att, a.lse, a.qkv, d.B, d.T, d.H, d.Hkv, d.D, ops.stream);
  mm_forward(ops, Fp8Group::attn_out, s.tmp, a.att, params + o.wo, d.N, d.H * d.D, d.C);
  ops.b().add(x_mid, x_in, s.tmp, d.N * d.C, ops.stream);
}

void attention_block_backward(const Ops& ops, float* dres, float* grads, const AttnActs& a, const float* x_in,
                              const float* params, const BlockOffsets& o, const Dims& d,
                              const RopeTables& rope, Scratch& s) {
  mm_backward(ops, Fp8Group::attn_out, s.datt, grads + o.wo, dres, a.att, params + o.wo, d.N, d.H * d.D, d.C);
  ops.b().attention_backward(s.dqkv, s.datt, a.qkv, a.att, a.lse, d.B, d.T, d.H, d.Hkv, d.D, ops.stream);
  ops.b().rope_backward(s.dqkv, rope.cos, rope.sin, d.N, d.T, d.H + d.Hkv, d.D, d.R, ops.stream);
  mm_backward(ops, Fp8Group::attn_qkv, s.dh, grads + o.wqkv, s.dqkv, a.h1, params + o.wqkv, d.N, d.C, d.R, false,
              a.fp8 ? &a.h1_q : nullptr);
  ops.b().rmsnorm_backward(dres, grads + o.attn_norm, s.dh, x_in, params + o.attn_norm, a.rstd1, d.N, d.C, ops.stream);
}

void dense_ffn_forward(const Ops& ops, DenseActs& a, float* out, const float* h, const float* params,
                       const BlockOffsets& o, const Dims& d) {
  mm_forward(ops, Fp8Group::mlp, a.up, h, params + o.mlp_w13, d.N, d.C, 2 * d.Fd, a.fp8 ? &a.h_q : nullptr);
  ops.b().swiglu_forward(a.act, a.up, d.N, d.Fd, ops.stream);
  mm_forward(ops, Fp8Group::mlp, out, a.act, params + o.mlp_w2, d.N, d.Fd, d.C, a.fp8 ? &a.act_q : nullptr);
}

void dense_ffn_backward(const Ops& ops, float* dh, float* grads, const DenseActs& a, const float* dout,
                        const float* h, const float* params, const BlockOffsets& o, const Dims& d,
                        Scratch& s) {
  mm_backward(ops, Fp8Group::mlp, s.dact, grads + o.mlp_w2, dout, a.act, params + o.mlp_w2, d.N, d.Fd, d.C, false,
              a.fp8 ? &a.act_q : nullptr);
  ops.b().swiglu_backward(s.dup, s.dact, a.up, d.N, d.Fd, ops.stream);
  mm_backward(ops, Fp8Group::mlp, dh, grads + o.mlp_w13, s.dup, h, params + o.mlp_w13, d.N, d.C, 2 * d.Fd, false,
              a.fp8 ? &a.h_q : nullptr);
}

}  // namespace sy
