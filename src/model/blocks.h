// The attention half and the dense-FFN half of a transformer block.
// Shapes per micro-batch (Dims): N tokens, width C.
#pragma once

#include <algorithm>

#include "core/arena.h"
#include "model/ops.h"
#include "model/dims.h"
#include "model/layout.h"

namespace sy {

// Scratch buffers shared by all blocks in backward (one set per model).
struct Scratch {
  float* tmp;    // (N, C)
  float* dh;     // (N, C) gradient at a norm's output
  float* dqkv;   // (N, R)
  float* datt;   // (N, H*D)
  float* dup;    // (max(N*2Fd, N*2S)) gradient at a dense / shared up-projection output
  float* dact;   // (max(N*Fd, N*S))
  float* drl;    // (N, E) router logits gradient
  float* dgates; // (N, K)
  template <class A>
  void bind(A& a, const Dims& d);
};

template <class A>
void Scratch::bind(A& a, const Dims& d) {
  tmp = a.template alloc<float>(d.N * d.C);
  dh = a.template alloc<float>(d.N * d.C);
  dqkv = a.template alloc<float>(d.N * d.R);
  datt = a.template alloc<float>(d.N * d.H * d.D);
  dup = a.template alloc<float>(std::max(d.N * 2 * d.Fd, d.N * 2 * d.S));
  dact = a.template alloc<float>(std::max(d.N * d.Fd, d.N * d.S));
  drl = a.template alloc<float>(d.N * d.E);
  dgates = a.template alloc<float>(d.N * d.K);
}

// With FP8 activation storage, the inputs of FP8 linear layers that nothing
// else reads in backward are kept only in FP8 (Fp8Saved); their FP32 values
// live here for the moment forward needs them, shared by all blocks.
struct Fp8Staging {
  float* h = nullptr;    // (N, C) a norm's output: input of wqkv, of a dense w13
  float* act = nullptr;  // (N, max(Fd, S)) a SwiGLU output: input of a dense / shared w2
  bool enabled = false;  // (not the pointers: an ArenaPlan hands out nulls)
  bool on() const { return enabled; }
  template <class A>
  void bind(A& a, const Dims& d) {
    enabled = true;
    h = a.template alloc<float>(d.N * d.C);
    act = a.template alloc<float>(d.N * std::max(d.Fd, d.S));
  }
};

struct RopeTables {
  const float* cos;  // (T, D/2)
  const float* sin;
};

struct AttnActs {
  float* h1;     // (N, C) attn_norm(x_in) (with FP8 storage: staging, h1_q is kept)
  float* rstd1;  // (N)
  float* qkv;    // (N, R) q and k rotated
  float* att;    // (N, H*D) attention output before wo (attention backward reads it: FP32)
  float* lse;    // (B, H, T)
  bool fp8 = false;
  Fp8Saved h1_q;
  template <class A>
  void bind(A& a, const Dims& d, const Fp8Staging& st = {}) {
    fp8 = st.on();
    h1 = fp8 ? st.h : a.template alloc<float>(d.N * d.C);
    rstd1 = a.template alloc<float>(d.N);
    qkv = a.template alloc<float>(d.N * d.R);
    att = a.template alloc<float>(d.N * d.H * d.D);
    lse = a.template alloc<float>(d.B * d.H * d.T);
  }
};

// x_mid = x_in + wo(attention(rope(wqkv(norm(x_in)))))
void attention_block_forward(const Ops& ops, AttnActs& a, float* x_mid, const float* x_in, const float* params,
                             const BlockOffsets& o, const Dims& d, const RopeTables& rope,
                             float eps, Scratch& s);
// dres: in = dL/dx_mid, out = dL/dx_in (the residual passes straight through).
void attention_block_backward(const Ops& ops, float* dres, float* grads, const AttnActs& a, const float* x_in,
                              const float* params, const BlockOffsets& o, const Dims& d,
                              const RopeTables& rope, Scratch& s);

struct DenseActs {
  float* up;   // (N, 2Fd) [gate | up]
  float* act;  // (N, Fd) silu(gate) * up (with FP8 storage: staging, act_q is kept)
  bool fp8 = false;
  Fp8Saved h_q, act_q;  // FP8 storage: the input h and act
  template <class A>
  void bind(A& a, const Dims& d, const Fp8Staging& st = {}) {
    fp8 = st.on();
    up = a.template alloc<float>(d.N * 2 * d.Fd);
    act = fp8 ? st.act : a.template alloc<float>(d.N * d.Fd);
  }
};

// out (N, C) = w2(swiglu(w13(h)))  (overwritten). With FP8 storage h is
// not read again in backward.
void dense_ffn_forward(const Ops& ops, DenseActs& a, float* out, const float* h, const float* params,
                       const BlockOffsets& o, const Dims& d);
// dh (N, C) overwritten with dL/dh, given dout = dL/dout.
void dense_ffn_backward(const Ops& ops, float* dh, float* grads, const DenseActs& a, const float* dout,
                        const float* h, const float* params, const BlockOffsets& o, const Dims& d,
                        Scratch& s);

}  // namespace sy
