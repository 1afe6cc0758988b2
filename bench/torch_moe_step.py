#!/usr/bin/env python3
"""A plain PyTorch MoE training step on one GPU: the baseline for Switchyard's
device training (issue 17's benchmark: tokens/s and MFU of a ~1B MoE).

usage: torch_moe_step.py [CONFIG.toml] [--device cuda|cpu] [--dtype bf16|fp32] [--steps N] [--warmup W]
                         [--micro-batch B] [--peak-tflops P] [--small] [--json] [--print-model]

The model is the one a Switchyard config describes (configs/moe_1b.toml by
default): RMSNorm, grouped-query attention with RoPE (scaled_dot_product_
attention, causal), SwiGLU; the first model.dense_layers layers dense, the
others MoE: a softmax or sigmoid router, top-k (renormalised), dropless
(every pick computed: tokens sorted by expert, one matmul pair per expert,
as plain PyTorch MoE code does), shared experts, the load-balancing loss. A
step is forward, backward, gradient clipping and fused AdamW, on FP32 master
weights; --dtype bf16 runs the matmuls under autocast(bfloat16) (Megatron's
default mixed precision; PyTorch has no FP8 training recipe without
Transformer Engine, so there is no FP8 column here). Tokens are random ids:
a step costs the same whatever they are.

MFU = 3 x forward FLOPs per token x tokens/s / peak, with the forward FLOPs
counted as Switchyard counts them (src/config/model.cpp: layer_flops,
head_flops), so the two sides' MFU compare; --print-model prints the
parameter count and the FLOPs per token (tests/gpu checks both against
moe-launch --dry-run). Peak: --peak-tflops, else the dense BF16 (or FP32)
tensor peak of the GPU by name (H100/H200 SXM 989 TFLOP/s BF16).

--device cpu --small shrinks the model for a smoke test of this script on a
machine without a GPU (its figures mean nothing); without CUDA and without
--device cpu it exits 3 saying so.
"""
import argparse
import json
import math
import statistics
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = 3

# Dense tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name() (NVIDIA data sheets, SXM parts).
PEAKS = {"H200": {"bf16": 989.4, "fp32": 494.7}, "H100": {"bf16": 989.4, "fp32": 494.7},
         "A100": {"bf16": 312.0, "fp32": 156.0}}


def load_config(path, small):
    cfg = tomllib.loads(Path(path).read_text())
    m = {"head_dim": 0, "norm_eps": 1e-5, "tie_embeddings": False, "rope_theta": 10000.0, "dense_layers": 1,
         "dense_hidden": 0}
    m.update(cfg.get("model", {}))
    e = {"shared_experts": 0, "score": "softmax", "renormalize": True, "aux_loss_coef": 0.01, "top_k": 2,
         "experts": 8, "expert_hidden": 0}
    e.update(cfg.get("moe", {}))
    t = {"global_batch": 8, "micro_batch": 0, "lr": 3e-4, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
         "eps": 1e-8, "grad_clip": 1.0}
    t.update(cfg.get("train", {}))
    if small:
        m.update(vocab_size=512, seq_len=64, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, dense_hidden=128)
        e.update(experts=4, expert_hidden=96)
        t.update(global_batch=2, micro_batch=0)
    if not m["dense_hidden"]:
        m["dense_hidden"] = (8 * m["d_model"] // 3 + 63) // 64 * 64
    if not e["expert_hidden"]:
        e["expert_hidden"] = m["dense_hidden"]
    return m, e, t


def head_size(m):
    return m["head_dim"] or m["d_model"] // m["n_heads"]


def forward_flops_per_token(m, e):
    """Switchyard's count (src/config/model.cpp): projections, causal attention, FFN or router + K and shared
    experts, and the LM head."""
    C, T, D = m["d_model"], m["seq_len"], head_size(m)
    HD = m["n_heads"] * D
    qkv = (m["n_heads"] + 2 * m["n_kv_heads"]) * D
    f = 2.0 * C * m["vocab_size"]
    for layer in range(m["n_layers"]):
        f += 2 * C * (qkv + HD) + 4 * HD * (T + 1) / 2
        if layer < m["dense_layers"]:
            f += 6 * C * m["dense_hidden"]
        else:
            f += 2 * C * e["experts"] + 6 * C * e["expert_hidden"] * (e["top_k"] + e["shared_experts"])
    return f


def build(torch, m, e, device):
    nn, F = torch.nn, torch.nn.functional
    C, D, H, Hkv = m["d_model"], head_size(m), m["n_heads"], m["n_kv_heads"]

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(C, device=device))

        def forward(self, x):
            return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + m["norm_eps"]).to(x.dtype) * self.weight

    def rope(x, cos, sin):  # x (B, heads, T, D): rotate pairs (2i, 2i+1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.wqkv = nn.Linear(C, (H + 2 * Hkv) * D, bias=False, device=device)
            self.wo = nn.Linear(H * D, C, bias=False, device=device)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q, k, v = self.wqkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
            q = rope(q.view(B, T, H, D).transpose(1, 2), cos, sin)
            k = rope(k.view(B, T, Hkv, D).transpose(1, 2), cos, sin)
            v = v.view(B, T, Hkv, D).transpose(1, 2)
            if Hkv != H:
                k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
            if hasattr(F, "scaled_dot_product_attention"):  # PyTorch 2 (the GPU machine's)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # PyTorch 1.x (Debian's, for the CPU smoke test): the same math, the T x T matrix in memory
                s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
                s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
                o = s.softmax(-1).to(v.dtype) @ v
            return self.wo(o.transpose(1, 2).reshape(B, T, H * D))

    class SwiGLU(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.w13 = nn.Linear(C, 2 * hidden, bias=False, device=device)
            self.w2 = nn.Linear(hidden, C, bias=False, device=device)

        def forward(self, x):
            a, b = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(a) * b)

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(C, e["experts"], bias=False, device=device)
            self.experts = nn.ModuleList(SwiGLU(e["expert_hidden"]) for _ in range(e["experts"]))
            self.shared = SwiGLU(e["expert_hidden"] * e["shared_experts"]) if e["shared_experts"] else None

        def forward(self, x):
            shape = x.shape
            x = x.reshape(-1, C)
            logits = self.router(x).float()
            scores = torch.sigmoid(logits) if e["score"] == "sigmoid" else logits.softmax(-1)
            gates, idx = scores.topk(e["top_k"], dim=-1)
            if e["renormalize"]:
                gates = gates / gates.sum(-1, keepdim=True)
            # Dropless dispatch: (token, pick) pairs sorted by expert, each expert's rows in one matmul pair.
            flat = idx.reshape(-1)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=e["experts"]).tolist()
            token = order // e["top_k"]
            rows = x.index_select(0, token)
            out = torch.empty_like(rows)
            start = 0
            for ex, n in enumerate(counts):
                if n:
                    out[start:start + n] = self.experts[ex](rows[start:start + n])
                start += n
            y = torch.zeros_like(x).index_add_(0, token, out * gates.reshape(-1)[order, None].to(out.dtype))
            if self.shared is not None:
                y = y + self.shared(x)
            # Load balancing (Switch / Megatron): E x sum_e fraction_e x mean prob_e.
            frac = torch.bincount(flat, minlength=e["experts"]).float() / flat.numel()
            aux = e["experts"] * (frac * scores.mean(0)).sum()
            return y.view(shape), aux

    class Block(nn.Module):
        def __init__(self, moe):
            super().__init__()
            self.attn_norm, self.ffn_norm = RMSNorm(), RMSNorm()
            self.attn = Attention()
            self.ffn = MoE() if moe else SwiGLU(m["dense_hidden"])
            self.moe = moe

        def forward(self, x, cos, sin):
            x = x + self.attn(self.attn_norm(x), cos, sin)
            if self.moe:
                y, aux = self.ffn(self.ffn_norm(x))
                return x + y, aux
            return x + self.ffn(self.ffn_norm(x)), None

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(m["vocab_size"], C, device=device)
            self.layers = nn.ModuleList(Block(i >= m["dense_layers"]) for i in range(m["n_layers"]))
            self.final_norm = RMSNorm()
            self.lm_head = nn.Linear(C, m["vocab_size"], bias=False, device=device)
            T = m["seq_len"]
            inv = 1.0 / (m["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
            ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
            self.register_buffer("cos", ang.cos().float().to(device), persistent=False)
            self.register_buffer("sin", ang.sin().float().to(device), persistent=False)

        def forward(self, ids, targets):
            x = self.embed(ids)
            aux_sum = 0.0
            for blk in self.layers:
                x, aux = blk(x, self.cos, self.sin)
                if aux is not None:
                    aux_sum = aux_sum + aux
            logits = self.lm_head(self.final_norm(x)).float()
            ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
            return ce, ce + e["aux_loss_coef"] * aux_sum

    model = Model()  # every parameter made on `device` ("meta": shapes only, to count them)
    if str(device) == "meta":
        return model
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "moe_1b.toml"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=0, help="sequences per step (default: train.global_batch)")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--print-model", action="store_true", help="print parameters and FLOPs per token, then exit")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    m, e, t = load_config(a.config, a.small)
    import torch
    if a.print_model:
        n = sum(p.numel() for p in build(torch, m, e, "meta").parameters())
        print(json.dumps({"parameters": n, "forward_flops_per_token": forward_flops_per_token(m, e)}))
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_moe_step: no GPU: torch.cuda.is_available() is False (use --device cpu --small for a smoke "
              "test)", file=sys.stderr)
        return NO_GPU
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = build(torch, m, e, dev)
    params = sum(p.numel() for p in model.parameters())
    kw = dict(lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"], weight_decay=t["weight_decay"])
    try:  # one fused kernel for the whole update on a GPU (PyTorch 2)
        opt = torch.optim.AdamW(model.parameters(), fused=a.device == "cuda", **kw)
    except TypeError:
        opt = torch.optim.AdamW(model.parameters(), **kw)
    B, T = a.micro_batch or t["global_batch"], m["seq_len"]
    gen = torch.Generator(device="cpu").manual_seed(1)
    amp = torch.autocast(device_type=a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        win = torch.randint(0, m["vocab_size"], (B, T + 1), generator=gen).to(dev)
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp:
            ce, obj = model(win[:, :-1], win[:, 1:])
        obj.backward()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        sync()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(ce.item())
    if not all(math.isfinite(x) for x in losses):
        print(f"torch_moe_step: a non-finite loss: {losses}", file=sys.stderr)
        return 1
    med = statistics.median(times)
    fpt = forward_flops_per_token(m, e)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    peak = a.peak_tflops or next((v[a.dtype] for k, v in PEAKS.items() if k in name), 0.0)
    tok_s = B * T / med
    res = {"device": name, "dtype": a.dtype, "torch": torch.__version__, "parameters": params,
           "forward_flops_per_token": fpt, "batch": B, "seq_len": T, "step_seconds": med, "tokens_per_s": tok_s,
           "achieved_tflops": 3 * fpt * tok_s / 1e12, "peak_tflops": peak,
           "mfu": 3 * fpt * tok_s / (peak * 1e12) if peak else None, "first_loss": losses[0], "last_loss": losses[-1]}
    if a.json:
        print(json.dumps(res))
    else:
        mfu = f"MFU {100 * res['mfu']:.1f}% of {peak:g} TFLOP/s" if peak else "MFU: peak unknown (--peak-tflops)"
        print(f"pytorch {torch.__version__} on {name}, {a.dtype}: {params / 1e9:.2f}B parameters, {tok_s:.0f} tok/s "
              f"(median step {med * 1000:.1f} ms, batch {B} x {T}), {res['achieved_tflops']:.1f} TFLOP/s, {mfu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
