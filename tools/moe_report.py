#!/usr/bin/env python3
"""Run report: loss and validation curves, tokens/s, and expert-load heatmaps
per MoE layer over steps, from <run dir>/metrics.jsonl, as PNG pictures plus a
short text summary, written to <run dir>/report/.

usage: moe_report.py RUN_DIR      (moe-launch runs it after each run; moe-launch --report RUN_DIR)
"""
import json
import math
import sys
from pathlib import Path


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    run = Path(sys.argv[1])
    path = run / "metrics.jsonl"
    if not path.exists():
        sys.exit(f"moe_report: {path} does not exist (no step finished yet?)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            sys.exit(f"moe_report: {path}:{n}: not JSON ({e})")
    if not rows:
        sys.exit(f"moe_report: {path} has no steps")
    out = run / "report"
    out.mkdir(exist_ok=True)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    tps = [r.get("tokens_per_s", 0) for r in rows]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, label="train loss", lw=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation loss")
    ax.set_xlabel("step"), ax.set_ylabel("cross-entropy (nats)"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(f"{run.name}: loss")
    fig.tight_layout(), fig.savefig(out / "loss.png", dpi=110), plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, tps, lw=1)
    ax.set_xlabel("step"), ax.set_ylabel("tokens / s"), ax.grid(alpha=0.3)
    ax.set_title(f"{run.name}: throughput")
    fig.tight_layout(), fig.savefig(out / "throughput.png", dpi=110), plt.close(fig)

    loads = [r.get("expert_load") or [] for r in rows]
    layers = max((len(l) for l in loads), default=0)
    if layers:
        experts = max(len(x) for l in loads for x in l)
        fig, axes = plt.subplots(layers, 1, figsize=(8, 1.2 + 1.3 * layers), squeeze=False, sharex=True)
        for li in range(layers):
            grid = []
            for l in loads:
                x = l[li] if li < len(l) else [0] * experts
                total = sum(x) or 1
                grid.append([c / total for c in x])
            cols = list(map(list, zip(*grid)))  # experts x steps
            ax = axes[li][0]
            im = ax.imshow(cols, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                           extent=[steps[0] - 0.5, steps[-1] + 0.5, -0.5, experts - 0.5])
            ax.set_ylabel(f"MoE layer {li}\nexpert")
            fig.colorbar(im, ax=ax, label="share")
        axes[-1][0].set_xlabel("step")
        fig.suptitle(f"{run.name}: share of routed picks per expert (uniform = {1 / experts:.3f})")
        fig.tight_layout(), fig.savefig(out / "expert_load.png", dpi=110), plt.close(fig)

    last = rows[-1]
    tail = tps[len(tps) // 2:] or tps
    median_tps = sorted(tail)[len(tail) // 2]
    lines = [
        f"run          {run}",
        f"steps        {steps[0]} .. {steps[-1]} ({len(rows)} logged)",
        f"loss         {loss[0]:.4f} -> {loss[-1]:.4f} (min {min(loss):.4f})",
    ]
    if val:
        lines.append(f"val loss     {val[0][1]:.4f} -> {val[-1][1]:.4f} (step {val[-1][0]})")
    lines.append(f"tokens/s     median {median_tps:,.0f} over the second half")
    if layers and last.get("imbalance"):
        lines.append("imbalance    last step, max/mean load per MoE layer: " +
                     " ".join(f"{x:.2f}" for x in last["imbalance"]))
    if "dropped_frac" in last:
        lines.append(f"dropped      {100 * last['dropped_frac']:.2f}% of routed picks at the last step")
    attempts = run / "logs" / "attempts.jsonl"
    if attempts.exists():
        att = [json.loads(l) for l in attempts.read_text().splitlines() if l.strip()]
        fails = [a for a in att if a["outcome"] in ("failed", "hung")]
        lines.append(f"attempts     {len(att)} ({len(fails)} failed or hung)")
        for a in fails:
            lines.append(f"  attempt {a['attempt']}: {a['report']}")
    lines.append("pictures     " + " ".join(sorted(p.name for p in out.glob("*.png"))))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"report: {out}/ (" + ", ".join(sorted(p.name for p in out.iterdir())) + ")")


if __name__ == "__main__":
    main()
