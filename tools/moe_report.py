#!/usr/bin/env python3
"""Run report: loss and validation curves, tokens/s, and expert-load heatmaps
per MoE layer over steps, from <run dir>/metrics.jsonl, as PNG pictures plus a
short text summary, written to <run dir>/report/.

usage: moe_report.py RUN_DIR      (moe-launch runs it after each run; moe-launch --report RUN_DIR)

metrics.jsonl holds one JSON object per line. Step records have a numeric
`step` and `loss`; after a crash and a resume a step may appear twice, and
the last record of each step is the one used. Event lines such as
{"event": "resume", "from_step": 6, ...} mark starts and resumes (drawn as
dotted lines on the loss plot). Every other line (not JSON, not an object,
invalid UTF-8, a string `step`, no `loss`, ...) is skipped and counted in
the summary. Exit codes: 0 written; 1 no step records or a failure.
"""
import json
import math
import sys
from pathlib import Path


def number(x):
    """x if it is a finite int or float (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return x if math.isfinite(x) else None


def numbers(x):
    """x as a list of finite numbers, or None."""
    if not isinstance(x, list):
        return None
    out = [number(v) for v in x]
    return None if any(v is None for v in out) else out


def read_metrics(path):
    """(step records sorted by step, the last one of each step; events; skipped counts by reason; repeats)."""
    by_step, events, skipped, repeats = {}, [], {}, 0

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skip("invalid UTF-8")
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError):
            skip("not JSON (a partial line?)")
            continue
        if not isinstance(obj, dict):
            skip("not a JSON object")
            continue
        if "event" in obj:
            if isinstance(obj.get("event"), str):
                events.append(obj)
            else:
                skip("an event without a name")
            continue
        step = obj.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            skip("no integer step" if "step" in obj else "no step")
            continue
        if number(obj.get("loss")) is None:
            skip("no numeric loss")
            continue
        if step in by_step:
            repeats += 1
        by_step[step] = obj  # the last record of a step wins (a resume recomputed it)
    return [by_step[s] for s in sorted(by_step)], events, skipped, repeats


def read_attempts(path):
    att = []
    if not path.exists():
        return att
    for raw in path.read_bytes().split(b"\n"):
        try:
            a = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(a, dict):
            att.append(a)
    return att


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    run = Path(sys.argv[1])
    path = run / "metrics.jsonl"
    if not path.is_file():
        sys.exit(f"moe_report: {path} does not exist (no step finished yet?)")
    rows, events, skipped, repeats = read_metrics(path)
    n_skipped = sum(skipped.values())
    why = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
    if not rows:
        sys.exit(f"moe_report: {path} has no step records" + (f" ({n_skipped} lines skipped: {why})" if n_skipped else ""))
    out = run / "report"
    out.mkdir(exist_ok=True)
    resumes = sorted({e["from_step"] for e in events
                      if e["event"] in ("resume", "restart") and number(e.get("from_step")) is not None})

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    val = [(r["step"], r["val_loss"]) for r in rows if number(r.get("val_loss")) is not None]
    tps = [number(r.get("tokens_per_s")) or 0 for r in rows]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, label="train loss", lw=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation loss")
    for i, s in enumerate(resumes):
        ax.axvline(s, color="grey", ls=":", lw=1, label="resumed" if i == 0 else None)
    ax.set_xlabel("step"), ax.set_ylabel("cross-entropy (nats)"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(f"{run.name}: loss")
    fig.tight_layout(), fig.savefig(out / "loss.png", dpi=110), plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, tps, lw=1)
    ax.set_xlabel("step"), ax.set_ylabel("tokens / s"), ax.grid(alpha=0.3)
    ax.set_title(f"{run.name}: throughput")
    fig.tight_layout(), fig.savefig(out / "throughput.png", dpi=110), plt.close(fig)

    # Expert loads: a list per MoE layer of counts per expert; anything else counts as absent.
    loads = []
    for r in rows:
        l = r.get("expert_load")
        rows_ok = isinstance(l, list) and all(numbers(x) is not None for x in l)
        loads.append([numbers(x) for x in l] if rows_ok else [])
    layers = max((len(l) for l in loads), default=0)
    experts = max((len(x) for l in loads for x in l), default=0)
    if layers and experts:
        fig, axes = plt.subplots(layers, 1, figsize=(8, 1.2 + 1.3 * layers), squeeze=False, sharex=True)
        for li in range(layers):
            # Each layer its own count (moe.experts per layer); a step that had
            # fewer experts in this layer (before `moe-ckpt grow`) is blank there.
            width = max((len(l[li]) for l in loads if li < len(l)), default=0) or 1
            grid = []
            for l in loads:
                x = l[li] if li < len(l) else []
                total = sum(x) or 1
                grid.append([c / total for c in x] + [float("nan")] * (width - len(x)))
            cols = list(map(list, zip(*grid)))  # experts x steps
            ax = axes[li][0]
            im = ax.imshow(cols, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                           extent=[steps[0] - 0.5, steps[-1] + 0.5, -0.5, width - 0.5])
            ax.set_ylabel(f"MoE layer {li}\nexpert (of {width};\nuniform {1 / width:.3f})")
            fig.colorbar(im, ax=ax, label="share")
        axes[-1][0].set_xlabel("step")
        fig.suptitle(f"{run.name}: share of routed picks per expert")
        fig.tight_layout(), fig.savefig(out / "expert_load.png", dpi=110), plt.close(fig)

    last = rows[-1]
    tail = tps[len(tps) // 2:] or tps
    median_tps = sorted(tail)[len(tail) // 2]
    lines = [
        f"run          {run}",
        f"steps        {steps[0]} .. {steps[-1]} ({len(rows)} logged"
        + (f"; {repeats} repeated after a resume, the last record of each kept" if repeats else "") + ")",
        f"loss         {loss[0]:.4f} -> {loss[-1]:.4f} (min {min(loss):.4f})",
    ]
    if val:
        lines.append(f"val loss     {val[0][1]:.4f} -> {val[-1][1]:.4f} (step {val[-1][0]})")
    lines.append(f"tokens/s     median {median_tps:,.0f} over the second half")
    imbalance = numbers(last.get("imbalance"))
    if layers and imbalance:
        lines.append("imbalance    last step, max/mean load per MoE layer: " + " ".join(f"{x:.2f}" for x in imbalance))
    if number(last.get("dropped_frac")) is not None:
        lines.append(f"dropped      {100 * last['dropped_frac']:.2f}% of routed picks at the last step")
    if resumes:
        lines.append("resumes      from step " + ", ".join(str(s) for s in resumes))
    if n_skipped:
        lines.append(f"skipped      {n_skipped} line{'s' if n_skipped != 1 else ''} of metrics.jsonl that are not "
                     f"step records: {why}")
    att = read_attempts(run / "logs" / "attempts.jsonl")
    if att:
        fails = [a for a in att if a.get("outcome") in ("failed", "hung")]
        lines.append(f"attempts     {len(att)} ({len(fails)} failed or hung)")
        for a in fails:
            lines.append(f"  attempt {a.get('attempt', '?')}: {a.get('report', '')}")
    lines.append("pictures     " + " ".join(sorted(p.name for p in out.glob("*.png"))))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"report: {out}/ (" + ", ".join(sorted(p.name for p in out.iterdir())) + ")")
    if n_skipped:
        print(f"moe_report: skipped {n_skipped} line(s) of {path}: {why}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(1)
    except OSError as e:  # unreadable run dir, full disk, ...
        sys.exit(f"moe_report: error: {e}")
    except Exception as e:  # one line, never a traceback
        sys.exit(f"moe_report: error: {type(e).__name__}: {e}")
