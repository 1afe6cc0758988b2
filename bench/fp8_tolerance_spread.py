#!/usr/bin/env python3
"""The measurement behind the FP8 and BF16 convergence limits of
tests/fp8/test_recipes.py: each convergence case of that test against the
FP32 run with the same seed, thread count and OpenBLAS kernels, over
seeds x train.threads x kernels. Never pass/fail: it prints a table.

usage: bench/fp8_tolerance_spread.py [--bin build/bin] [--seeds 1337,1,2] [--threads 1,2]
           [--kernels default,Haswell,Sandybridge] [--cases current,delayed,...] [--work DIR]

Each run is exactly the test's (its model settings, steps and case
definitions, imported from the test) plus train.seed and train.threads.
"default" leaves OPENBLAS_CORETYPE unset (moe-train re-executes itself with
SkylakeX kernels on an AVX-512 CPU); the others export OPENBLAS_CORETYPE.
Columns: the relative difference (signed, %) of the mean of the last 10
training losses and of the final validation loss against FP32's, as the
test computes them; then per case min .. max, the largest |difference|, and
the limit the test's rule gives (1.5 x that, rounded up to 0.1%).
CPU-heavy (6 runs of 100 steps per setting): run one job at a time.
"""
import argparse
import importlib.util
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "build" / "bin"))
    ap.add_argument("--seeds", default="1337,1,2", help="1337 is the test's (configs/tiny.toml's)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--kernels", default="default,Haswell,Sandybridge")
    ap.add_argument("--cases", default=None, help="default: every case of the test")
    ap.add_argument("--work", default=None, help="where runs go (default: a temporary directory)")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("test_recipes", ROOT / "tests/fp8/test_recipes.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    cases = args.cases.split(",") if args.cases else list(t.CASES)
    bin_dir = Path(args.bin).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="fp8_spread_"))
    work.mkdir(parents=True, exist_ok=True)
    settings = [(k, int(th), int(sd)) for k in args.kernels.split(",") for th in args.threads.split(",")
                for sd in args.seeds.split(",")]
    results = {c: [] for c in cases}  # case -> [(setting, train rel, val rel)]
    fp32 = {}
    print(f"{'kernels':<12}{'thr':>4}{'seed':>6}  {'case':<14}{'train %':>9}{'val %':>9}   (FP32 train / val)", flush=True)
    for kernel, threads, seed in settings:
        env = dict(t.ENV)
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("SY_BLAS_KEEP", None)
        if kernel != "default":
            env["OPENBLAS_CORETYPE"] = kernel
        extra = [f"train.seed={seed}", f"train.threads={threads}"]
        d = work / f"{kernel}_{threads}_{seed}"
        d.mkdir(exist_ok=True)
        rows, _ = t.train("fp32", "fp32", extra=extra, work=d, bin_dir=bin_dir, env=env)
        base = t.final(rows)
        fp32[(kernel, threads, seed)] = base
        for c in cases:
            recipe, ranks, cextra, _ = t.CASES[c]
            rows, _ = t.train(c, recipe, ranks=ranks, extra=cextra + extra, work=d, bin_dir=bin_dir, env=env)
            got = t.final(rows)
            tr, va = (got[0] - base[0]) / base[0], (got[1] - base[1]) / base[1]
            results[c].append(((kernel, threads, seed), tr, va))
            print(f"{kernel:<12}{threads:>4}{seed:>6}  {c:<14}{100 * tr:>+9.3f}{100 * va:>+9.3f}   "
                  f"({base[0]:.4f} / {base[1]:.4f})", flush=True)
        if not args.work:
            shutil.rmtree(d, ignore_errors=True)
    print(f"\n{len(settings)} settings: seeds {args.seeds} x threads {args.threads} x kernels {args.kernels}")
    print(f"{'case':<14}{'train min..max %':>22}{'val min..max %':>22}{'max |d| %':>11}{'limit %':>9}{'test limit %':>14}")
    for c in cases:
        tr = [r[1] for r in results[c]]
        va = [r[2] for r in results[c]]
        worst = max(abs(x) for x in tr + va)
        limit = math.ceil(1.5 * worst * 1000 - 1e-9) / 1000
        print(f"{c:<14}{100 * min(tr):>+10.3f} ..{100 * max(tr):>+8.3f}{100 * min(va):>+12.3f} ..{100 * max(va):>+8.3f}"
              f"{100 * worst:>11.3f}{100 * limit:>9.1f}{100 * t.CASES[c][3]:>14.1f}")
    # How much the thread count alone moves FP32 (same seed and kernels).
    moves = []
    for (kernel, threads, seed), (l, v) in fp32.items():
        other = fp32.get((kernel, 2, seed)) if threads == 1 else None
        if other:
            moves.append((abs(other[0] - l) / l, abs(other[1] - v) / v, kernel, seed))
    if moves:
        m = max(moves)
        print(f"FP32 alone, 1 vs 2 threads: up to {100 * m[0]:.3f}% (train) / {100 * max(x[1] for x in moves):.3f}% (val)")


if __name__ == "__main__":
    main()
