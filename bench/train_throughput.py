#!/usr/bin/env python3
"""Training throughput: Switchyard against PyTorch and the sgemm peak.

usage: bench/train_throughput.py [--build build] [--configs tiny small] [--steps N]

For each config, in this one run: Switchyard's median tokens/s and GFLOP/s
with the sgemm peak measured in the same process (same threads), and the
PyTorch reference model (float32, same batch shape, same data) at 1 and 2
threads, keeping its best. PyTorch runs with the OpenBLAS kernel family
Switchyard used, and, if that differs from OpenBLAS's own choice, with the
default too. Prints a table of ratios; never pass/fail.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = "/usr/bin/python3"


def run_json(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 20 tiny, 5 small)")
    a = ap.parse_args()
    bench = Path(a.build) / "bin" / "sy-bench-train"
    rows = []
    for name in a.configs:
        cfg = str(ROOT / "configs" / f"{name}.toml")
        steps = a.steps or (20 if name == "tiny" else 5)
        sy = run_json([str(bench), cfg, "--steps", str(steps), "--warmup", "2", "--json"])
        envs = {f"OpenBLAS {sy['blas_core']}": dict(os.environ, OPENBLAS_CORETYPE=sy["blas_core"])}
        default_core = subprocess.run([PY, "-c", "import ctypes; l=ctypes.CDLL('libopenblas.so.0'); "
                                       "l.openblas_get_corename.restype=ctypes.c_char_p; "
                                       "print(l.openblas_get_corename().decode())"],
                                      capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                           if k != "OPENBLAS_CORETYPE"}).stdout.strip()
        if default_core and default_core != sy["blas_core"]:
            envs[f"OpenBLAS default ({default_core})"] = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        torch = {}
        for label, env in envs.items():
            best = None
            for threads in (1, 2):
                r = run_json([PY, str(ROOT / "bench" / "torch_baseline.py"), cfg, "--threads", str(threads),
                              "--steps", str(max(3, steps // 2)), "--warmup", "1", "--json"], env=env)
                if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
                    best = r
            torch[label] = best
        rows.append((name, sy, torch))

    print(f"\nTraining throughput, {os.cpu_count()} cores; ratios are against numbers measured in this run\n")
    print(f"{'config':7} {'switchyard tok/s':>17} {'model GFLOP/s':>14} {'GEMM GFLOP/s':>13} {'sgemm peak':>11} "
          f"{'model/peak':>11} {'GEMM/peak':>10} {'GEMM time':>10}")
    for name, sy, _ in rows:
        p = sy["sgemm_peak_gflops"]
        print(f"{name:7} {sy['tokens_per_s']:17.0f} {sy['model_gflops']:14.1f} {sy['gemm_gflops']:13.1f} {p:11.1f} "
              f"{sy['model_gflops'] / p:11.0%} {sy['gemm_gflops'] / p:10.0%} {sy['gemm_time_frac']:10.0%}")
    print(f"\n{'config':7} {'pytorch baseline':34} {'pytorch tok/s':>14} {'threads':>8} {'switchyard / pytorch':>21}")
    for name, sy, torch in rows:
        for label, r in torch.items():
            print(f"{name:7} {label:34} {r['tokens_per_s']:14.0f} {r['threads']:8d} "
                  f"{sy['tokens_per_s'] / r['tokens_per_s']:20.2f}x")
    print(f"\nSwitchyard: OpenBLAS {rows[0][1]['blas_core']} kernels, {rows[0][1]['threads']} threads; "
          f"PyTorch {run_json([PY, '-c', 'import json,torch; print(json.dumps(torch.__version__))'])}")


if __name__ == "__main__":
    sys.exit(main())
