#!/usr/bin/env python3
"""Pipeline bubble: measured vs simulated vs textbook, per schedule.

usage: bench/pipeline_bubble.py [--config configs/small.toml] [--pp 2 4] [--steps 3] [--microbatches 8]
                                [--threads 1] [--out DIR]

For each schedule (gpipe, 1f1b, interleaved with 2 chunks, zb) and each pp,
runs moe-train on pp ranks (one rank per stage, dp = 1) for a few steps and
reads the last step's metrics: per rank the bubble measured from the
executor's op timestamps (1 - busy / step span), the simulator's bubble on
the op costs measured in the same step, the textbook bubble, the
micro-batches of activations held at most, activation MiB, and tokens/s.
A one-rank run of the same config is the throughput baseline (x 1-rank).
Needs at least pp cores for the measured bubble to mean anything: with
more ranks than cores, ranks wait for a CPU, not for each other.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "build" / "bin"


def run(cfg, ranks, sets, tmp, name, threads):
    run_dir = Path(tmp) / name
    args = [str(BIN / "moe-train"), str(cfg)]
    for s in sets + [f"run.dir={run_dir}", "train.val_every=0", "train.log_every=1", f"train.threads={threads}",
                     "checkpoint.interval=0"]:
        args += ["--set", s]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS=str(threads))
    cmd = args if ranks == 1 else ["mpiexec", "-n", str(ranks), "--bind-to", "none"] + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "small.toml"))
    ap.add_argument("--pp", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    base_sets = [f"train.steps={a.steps}", f"train.grad_accum={a.microbatches}", "train.micro_batch=0"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = a.out or tmp
        one = run(a.config, 1, base_sets, tmp, "one_rank", a.threads)
        base_tps = one[-1]["tokens_per_s"]
        print(f"config {a.config}, {a.microbatches} micro-batches, {a.threads} thread(s) per rank, last of {a.steps} steps; "
              f"{os.cpu_count()} CPUs; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(moe-train picks)')}")
        print(f"1 rank baseline: {base_tps:.0f} tok/s, activations {one[-1].get('activation_mib', [0, 0, 0, 0])}")
        print(f"{'schedule':<14}{'pp':>3} {'rank':>4} {'measured':>9} {'simulated':>10} {'textbook':>9} {'|m-s| pp':>9} "
              f"{'held':>5} {'act MiB':>8} {'tok/s':>8} {'x 1-rank':>9}")
        for pp in a.pp:
            for sched, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zb", 1)):
                name = f"{sched}_pp{pp}"
                rows = run(a.config, pp, base_sets + [f"parallel.pp={pp}", f"parallel.schedule={sched}",
                                                      f"parallel.virtual={v}"], tmp, name, a.threads)
                last = rows[-1]
                p = last["pipeline"]
                tps = last["tokens_per_s"]
                for r in range(pp):
                    m, s = p["bubble"][r], p["bubble_sim"][r]
                    print(f"{sched + (f' v{v}' if v > 1 else ''):<14}{pp:>3} {r:>4} {100 * m:>8.1f}% {100 * s:>9.1f}% "
                          f"{100 * p['bubble_analytic']:>8.1f}% {100 * abs(m - s):>8.1f} {p['peak_in_flight'][r]:>5} "
                          f"{p['activation_mib'][r]:>8.1f} {tps:>8.0f} {tps / base_tps:>8.2f}x")


if __name__ == "__main__":
    main()
