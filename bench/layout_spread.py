#!/usr/bin/env python3
"""How far each layout of the equivalence tests drifts from one rank, over
seeds and OpenBLAS kernels: the measurement behind the tolerances in
tests/mpi/test_layouts.py and tests/pipeline/test_pipeline.py (and
NEAR_TIE in tests/equivalence.py). Never pass/fail: it prints a table.

usage: bench/layout_spread.py [--bin build/bin] [--groups layouts,pp2,pp4,3d,reshard]
           [--seeds 1,2,3] [--kernels default,Haswell,Sandybridge] [--threads 1]

Runs exactly the tests' runs (their plan(), model and thread count; group
"reshard" is tests/ckpt/test_checkpoint.py's reshard-on-load case, steps
6-10) with train.seed = each seed, under each kernel setting: "default" leaves
OPENBLAS_CORETYPE unset (moe-train then re-executes itself with SkylakeX
kernels on an AVX-512 CPU), the others export OPENBLAS_CORETYPE. For every
run against its one-rank baseline, columns are maxima over the settings:
  loss / val / gnorm   largest relative difference of the training loss,
                       validation loss and gradient norm, over the steps
                       before the routes first differ (all steps if never)
  bitwise              in how many settings losses, loads and validation
                       were equal to the bit
  drift                largest |router_margin difference| while the routes
                       agree: how far rounding moved the closest call
  flips                settings in which the expert loads differed, with the
                       step and that step's router_margin
  min margin           smallest router_margin of the baseline over all steps
One job at a time: it is CPU-heavy (run it on an otherwise idle machine).
"""
import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from equivalence import Comparison  # noqa: E402


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def env_for(kernel, base_env):
    env = dict(base_env)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("SY_BLAS_KEEP", None)
    if kernel != "default":
        env["OPENBLAS_CORETYPE"] = kernel
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "build" / "bin"))
    ap.add_argument("--groups", default="layouts,pp2,pp4,3d,reshard")
    ap.add_argument("--layouts", default="1x1,2x1,2x2,4x1,4x2,4x4", help="(dp)x(ep) of the layouts group")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--kernels", default="default,Haswell,Sandybridge")
    ap.add_argument("--threads", type=int, default=None, help="train.threads of every run (default: the tests')")
    args = ap.parse_args()
    bin_dir = Path(args.bin).resolve()
    layouts = load("tests/mpi/test_layouts.py", "test_layouts")
    pipeline = load("tests/pipeline/test_pipeline.py", "test_pipeline")
    work = []  # (module, group label, bases, runs)
    for g in args.groups.split(","):
        if g == "reshard":
            work.append((load("tests/ckpt/test_checkpoint.py", "test_checkpoint"), g, None, None))
        elif g == "layouts":
            for dpep in args.layouts.split(","):
                dp, ep = map(int, dpep.split("x"))
                work.append((layouts, f"dp{dp} ep{ep}", *layouts.plan(dp, ep)))
        else:
            work.append((pipeline, g, *pipeline.plan(g)))
    stats = {}  # (group, run name) -> dict
    order = []

    def note(group, name, c, tol, base, kernel, seed):
        exact = not c.flip and c.loss == 0 and c.val == 0
        k = (group, name)
        if k not in stats:
            order.append(k)
            stats[k] = dict(loss=0.0, val=0.0, gn=0.0, drift=0.0, bitwise=0, n=0, flips=[], tol=tol,
                            min_margin=float("inf"))
        s = stats[k]
        s["loss"], s["val"], s["gn"] = max(s["loss"], c.loss), max(s["val"], c.val), max(s["gn"], c.grad_norm)
        s["drift"] = max(s["drift"], c.margin_drift)
        s["bitwise"] += exact
        s["n"] += 1
        s["min_margin"] = min([s["min_margin"], c.min_margin])
        if c.flip:
            m = "?" if c.flip[2] is None else f"{c.flip[2]:.1e}"
            s["flips"].append(f"{kernel}/seed {seed}: step {c.flip[0]} layer {c.flip[1]} margin {m}")
        print(f"  {kernel:<11} seed {seed} {group:<8} {name[:60]:<60} {c.summary()}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    kernels = args.kernels.split(",")
    for kernel in kernels:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                cache = {}
                for mod, group, bases, runs in work:
                    extra = [f"train.seed={seed}"] + ([f"train.threads={args.threads}"] if args.threads else [])
                    env = env_for(kernel, mod.ENV)
                    if args.threads:
                        env["OMP_NUM_THREADS"] = str(args.threads)
                    if runs is None:  # the reshard case runs itself and reports each comparison
                        mod.BIN, mod.ENV = bin_dir, env
                        sub = Path(tmp) / f"reshard{seed}"
                        sub.mkdir()
                        mod.reshard_on_load(sub, extra, lambda name, c: note(group, name, c, mod.RESHARD_TOL, None,
                                                                             kernel, seed))
                        continue

                    def rows_of(name, ranks, sets):
                        out = mod.train(bin_dir, tmp, f"r{len(os.listdir(tmp))}", ranks, sets + extra, env=env)
                        return out[0] if isinstance(out, tuple) else out

                    base = {}
                    for name, sets in bases.items():
                        key = (mod.__name__, tuple(sets))
                        if key not in cache:
                            cache[key] = rows_of(name, 1, sets)
                        base[name] = cache[key]
                    for name, ranks, sets, base_name, tol in runs:
                        rows = rows_of(name, ranks, sets)
                        note(group, name, Comparison(rows, base[base_name], tol=1.0), tol, base[base_name], kernel, seed)
    print(f"\n{'group':<9}{'run':<62}{'test':>9}{'loss':>10}{'val':>10}{'gnorm':>10}{'bitwise':>9}{'drift':>10}"
          f"{'min margin':>12}  flips")
    for k in order:
        s = stats[k]
        test = "bitwise" if s["tol"] is None else f"{s['tol']:.0e}"
        print(f"{k[0]:<9}{k[1][:61]:<62}{test:>9}{s['loss']:>10.2e}{s['val']:>10.2e}{s['gn']:>10.2e}"
              f"{s['bitwise']:>5}/{s['n']:<3}{s['drift']:>10.1e}{s['min_margin']:>12.1e}  "
              f"{len(s['flips'])}{': ' + '; '.join(s['flips']) if s['flips'] else ''}")
    tol_runs = [s for s in stats.values() if s["tol"] is not None]
    print(f"\nsettings: seeds {args.seeds} x kernels {args.kernels}; threads "
          f"{args.threads or 'as the tests set them'}")
    print(f"largest drift of router_margin while routes agree: {max(s['drift'] for s in stats.values()):.1e}")
    if tol_runs:
        print(f"largest relative loss difference of a tolerance run: "
              f"{max(max(s['loss'], s['val']) for s in tol_runs):.2e}")
    broken = [k for k in order if stats[k]["tol"] is None and stats[k]["bitwise"] != stats[k]["n"]]
    print("runs the tests assert bitwise that were not bitwise in every setting: " + (", ".join(map(str, broken)) or "none"))


if __name__ == "__main__":
    main()
