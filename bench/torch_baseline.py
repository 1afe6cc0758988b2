#!/usr/bin/env python3
"""PyTorch baseline: train the same model as Switchyard (the reference
implementation of tests/reference, in float32) on the same batch shape and
data, and report tokens/s.

usage: torch_baseline.py CONFIG.toml [--steps N] [--warmup W] [--threads T] [--json]
Prints the median step time over N timed steps after W warm-up steps.
"""
import argparse
import glob
import json
import math
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))
from check_reference import Model  # noqa: E402


def load_config(path):
    cfg = tomllib.loads(Path(path).read_text())
    # Fill the keys the reference model reads with Switchyard's defaults.
    m = {"head_dim": 0, "norm_eps": 1e-5, "tie_embeddings": False, "rope_theta": 10000.0,
         "dense_layers": 1, "dense_hidden": 0, "init_std": 0.02}
    m.update(cfg.get("model", {}))
    e = {"shared_experts": 0, "score": "softmax", "renormalize": True, "aux_loss_coef": 0.01,
         "z_loss_coef": 0.0, "entropy_coef": 0.0, "capacity_factor": 0.0, "bias_update_rate": 0.0}
    e.update(cfg.get("moe", {}))
    t = {"micro_batch": 8, "lr": 3e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
         "grad_clip": 1.0}
    t.update(cfg.get("train", {}))
    return {"model": m, "moe": e, "train": t, "data": cfg.get("data", {})}


def init_params(cfg, model):
    m, e = cfg["model"], cfg["moe"]
    C, V, L, D = model.C, model.V, model.L, model.D
    Fd = m["dense_hidden"] or (8 * C // 3 + 63) // 64 * 64
    std, out_std = m["init_std"], m["init_std"] / math.sqrt(2 * L)
    g = torch.Generator().manual_seed(0)
    P = {}

    def add(name, shape, s):
        P[name] = (torch.randn(*shape, generator=g) * s if s else torch.ones(*shape)).requires_grad_(True)

    add("embed.weight", (V, C), std)
    for l in range(L):
        p = f"layers.{l}."
        add(p + "attn_norm.weight", (C,), 0)
        add(p + "attn.wqkv", ((model.H + 2 * model.Hkv) * D, C), std)
        add(p + "attn.wo", (C, model.H * D), out_std)
        add(p + "ffn_norm.weight", (C,), 0)
        if l < model.dense_layers:
            add(p + "mlp.w13", (2 * Fd, C), std)
            add(p + "mlp.w2", (C, Fd), out_std)
        else:
            add(p + "moe.router", (model.E, C), std)
            if model.S:
                S = model.S * model.F
                add(p + "moe.shared.w13", (2 * S, C), std)
                add(p + "moe.shared.w2", (C, S), out_std)
            for x in range(model.E):
                add(f"{p}moe.experts.{x}.w13", (2 * model.F, C), std)
                add(f"{p}moe.experts.{x}.w2", (C, model.F), out_std)
    add("final_norm.weight", (C,), 0)
    if not model.tied:
        add("lm_head.weight", (V, C), std)
    return P


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    cfg = load_config(a.config)
    model = Model(cfg)
    model.cos, model.sin = model.cos.float(), model.sin.float()
    P = init_params(cfg, model)
    t = cfg["train"]
    decay = [p for p in P.values() if p.dim() >= 2]
    no_decay = [p for p in P.values() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"])
    files = sorted(f for p in cfg["data"].get("train", []) for f in glob.glob(p))
    data = np.frombuffer(b"".join(Path(f).read_bytes() for f in files), dtype=np.uint8)
    # The global batch on one process (Switchyard's micro_batch = 0 means "derived").
    B, T = t.get("global_batch") or t["micro_batch"] * t.get("grad_accum", 1), model.T
    rng = np.random.default_rng(0)
    bias = torch.zeros(max(model.L - model.dense_layers, 0), model.E)
    times = []
    for step in range(a.warmup + a.steps):
        starts = rng.integers(0, len(data) - T - 1, size=B)
        win = torch.from_numpy(np.stack([data[s: s + T + 1] for s in starts]).astype(np.int64))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, ce, obj, _, _, _ = model.forward(P, win[:, :-1], win[:, 1:], bias)
        obj.backward()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(list(P.values()), t["grad_clip"])
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    res = {"tokens_per_s": B * T / med, "step_seconds": med, "threads": torch.get_num_threads(),
           "loss": ce.item()}
    print(json.dumps(res) if a.json else f"pytorch {torch.__version__}: {res['tokens_per_s']:.0f} tok/s "
          f"(median step {med * 1000:.1f} ms, {res['threads']} threads)")


if __name__ == "__main__":
    main()
