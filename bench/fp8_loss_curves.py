#!/usr/bin/env python3
"""FP32 and every FP8 recipe side by side on one config (configs/small.toml by
default): the same data, seed and steps, each run's metrics.jsonl kept, the
loss curves plotted on one chart (PNG, Debian's matplotlib), and a table of
final loss / validation loss against FP32's (ratio), throughput, and the
activation memory each run held (FP8 storage of saved inputs on and off).

usage: bench/fp8_loss_curves.py [--bin build/bin] [--config configs/small.toml]
           [--steps 200] [--ranks 1] [--out bench-out/fp8] [--set key=value ...]
Never pass/fail. Threads: OMP_NUM_THREADS as set (default: all cores per rank
on one rank). Say which OpenBLAS kernels ran (the log's cpu line says it).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# (name, recipe, extra settings, steps: None = --steps). The last run only
# measures memory: its losses equal fp8-block's bit for bit (tested).
RECIPES = [("fp32", "fp32", [], None),
           ("fp8-tensor-current", "fp8-tensor-current", [], None),
           ("fp8-tensor-delayed", "fp8-tensor-delayed", [], None),
           ("fp8-block", "fp8-block", [], None),
           ("fp8-block (FP32 saved acts)", "fp8-block", ["precision.fp8_activations=false"], 5)]


def run_dir(args, name):
    return Path(args.out) / name.replace(" ", "_").replace("(", "").replace(")", "")


def load(args, name):
    out = run_dir(args, name)
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    cpu = next((l for l in log.splitlines() if l.startswith("cpu")), "")
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()], cpu


def run(args, name, recipe, extra, steps):
    if args.summarize_only:
        return load(args, name)
    out = run_dir(args, name)
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"run.dir={out}", f"precision.recipe={recipe}", f"train.steps={steps or args.steps}", "checkpoint.resume=none",
            "checkpoint.interval=0", *extra, *args.set]
    cmd = [str(Path(args.bin) / "moe-train"), args.config] + [a for s in sets for a in ("--set", s)]
    if args.ranks > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(args.ranks)] + cmd
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{name} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    (out / "train.log").write_text(p.stdout)
    return load(args, name)


def summary(rows):
    last = rows[-min(10, len(rows)):]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    tps = sorted(r["tokens_per_s"] for r in rows[len(rows) // 5:])  # past warm-up
    return {"loss": sum(r["loss"] for r in last) / len(last), "val": vals[-1] if vals else float("nan"),
            "tok_s": tps[len(tps) // 2], "act": max(r["activation_mib"]["total"] for r in rows),
            "act_fp8": max(r["activation_mib"]["fp8"] for r in rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--config", default="configs/small.toml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--out", default="bench-out/fp8")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--summarize-only", action="store_true", help="table and plot from the runs already in --out")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {}
    memory_only = {name for name, _, _, steps in RECIPES if steps}
    for name, recipe, extra, steps in RECIPES:
        rows, cpu = run(args, name, recipe, extra, steps)
        results[name] = (rows, summary(rows))
    base = results["fp32"][1]
    print(f"\n{args.config}, {args.steps} steps, {args.ranks} rank(s); {cpu}")
    print(f"{'recipe':<28} {'loss (last 10)':>14} {'vs FP32':>8} {'val loss':>9} {'vs FP32':>8} "
          f"{'tok/s':>7} {'x FP32':>7} {'act MiB':>8} {'x FP32':>7} {'of it FP8':>9}")
    for name, (rows, s) in results.items():
        if name in memory_only:
            print(f"{name:<28} {'(memory only: losses = fp8-block)':>59} {s['act']:>8.1f} {s['act'] / base['act']:>7.2f} "
                  f"{s['act_fp8']:>9.1f}")
            continue
        print(f"{name:<28} {s['loss']:>14.4f} {100 * (s['loss'] / base['loss'] - 1):>+7.2f}% {s['val']:>9.4f} "
              f"{100 * (s['val'] / base['val'] - 1):>+7.2f}% {s['tok_s']:>7.0f} {s['tok_s'] / base['tok_s']:>7.2f} "
              f"{s['act']:>8.1f} {s['act'] / base['act']:>7.2f} {s['act_fp8']:>9.1f}")
    (Path(args.out) / "summary.json").write_text(json.dumps({k: v[1] for k, v in results.items()}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (apt-get install python3-matplotlib)")
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, (rows, _) in results.items():
        if name in memory_only:
            continue
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], label=name, linewidth=1)
        base_rows = results["fp32"][0]
        bx.plot(steps, [100 * (r["loss"] / b["loss"] - 1) for r, b in zip(rows, base_rows)], label=name, linewidth=1)
    ax.set(xlabel="step", ylabel="training loss", title=f"{Path(args.config).name}: loss per recipe")
    bx.set(xlabel="step", ylabel="% vs FP32", title="loss relative to FP32 (same step)")
    bx.axhline(0, color="black", linewidth=0.5)
    ax.legend()
    bx.legend()
    fig.tight_layout()
    png = Path(args.out) / "fp8_loss_curves.png"
    fig.savefig(png, dpi=110)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
