#!/usr/bin/env python3
"""Loss effect of smaller MoE dispatch payloads (parallel.dispatch_dtype) in FP32 training.

usage: bench/dispatch_payload_loss.py BIN_DIR WORK_DIR [SEEDS...]   (default seeds 1337 1 2)

Runs the tiny model (sequences of 64, 40 steps, ep = 2 over the MPI
transport, one thread per rank) with dispatch_dtype fp32, bf16 and fp8 for
each seed and prints, per seed and payload, the relative difference of the
mean of the last 10 training losses and of the final validation loss from
the fp32 payload's run of the same seed; then the largest |difference| per
payload, which tests/fp8/test_payload.py's limits come from (1.5 x, rounded
up), and for scale the spread of the fp32 runs themselves over the seeds.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from testenv import mpi_env  # noqa: E402

STEPS = 40


def run(bin_dir, work, seed, dt):
    d = work / f"s{seed}_{dt}"
    shutil.rmtree(d, ignore_errors=True)
    sets = ["model.seq_len=64", f"train.steps={STEPS}", "train.log_every=10", f"train.val_every={STEPS}",
            "checkpoint.resume=none", "checkpoint.at_end=false", "train.threads=1", "parallel.ep=2",
            "parallel.transport=mpi", f"parallel.dispatch_dtype={dt}", f"train.seed={seed}", f"run.dir={d}"]
    cmd = ["mpiexec", "-n", "2", "--bind-to", "none", str(bin_dir / "moe-train")] + [a for s in sets for a in ("--set", s)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       env=mpi_env(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if isinstance(r, dict) and "loss" in r]
    last = [r["loss"] for r in rows[-10:]]
    return sum(last) / len(last), rows[-1]["val_loss"]


def main():
    bin_dir, work = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    seeds = [int(s) for s in sys.argv[3:]] or [1337, 1, 2]
    work.mkdir(parents=True, exist_ok=True)
    worst = {"bf16": 0.0, "fp8": 0.0}
    base = {}
    print(f"{'seed':>6} {'payload':>7} {'train loss':>11} {'d train %':>10} {'val loss':>9} {'d val %':>8}")
    for seed in seeds:
        for dt in ("fp32", "bf16", "fp8"):
            loss, val = run(bin_dir, work, seed, dt)
            if dt == "fp32":
                base[seed] = (loss, val)
            dl, dv = (loss / base[seed][0] - 1) * 100, (val / base[seed][1] - 1) * 100
            if dt != "fp32":
                worst[dt] = max(worst[dt], abs(dl), abs(dv))
            print(f"{seed:>6} {dt:>7} {loss:>11.5f} {dl:>+10.3f} {val:>9.5f} {dv:>+8.3f}", flush=True)
    for dt, w in worst.items():
        print(f"# {dt}: largest |difference| from fp32 {w:.3f}%")
    tr = [b[0] for b in base.values()]
    print(f"# fp32 payload over the seeds: train loss {min(tr):.4f} .. {max(tr):.4f} "
          f"({(max(tr) / min(tr) - 1) * 100:.2f}% apart)")


if __name__ == "__main__":
    main()
