#!/usr/bin/env python3
"""Layout equivalence: a (dp, ep) layout trains the same model as one rank.

usage: test_layouts.py BIN_DIR DP EP

With a fixed seed and global batch (16 sequences, 2 micro-batches of
accumulation), runs moe-train for 10 steps on DP ranks with expert
parallelism EP, with and without capacity dropping and ZeRO-1, over the
MPI all-to-all (plain and overlapped in 3 chunks) and the shared-memory
transport, and compares every step with the single-rank run with the same
dropping (tests/equivalence.py says how).

Every run, the baseline included, has train.threads = 1: OpenBLAS's
Haswell/Zen sgemm rounds differently on 1 and 2 threads, so a baseline on
another thread count would differ from every layout in the last bits.

Which layouts are bitwise equal to one rank, and why:
  dp = 1 (one rank; mpi or shm transport, ZeRO-1 on or off): the same
      operations in the same order, so bitwise. ZeRO-1 on one rank is a
      reduce-scatter over a group of one.
  dp = 1 with parallel.overlap over MPI: the dispatch is cut into 3 chunks
      and each chunk's expert GEMMs run separately, so the experts' GEMMs
      have fewer rows and their weight gradients are summed chunk by chunk:
      another order. Tolerance.
  dp > 1: each rank computes its share of a micro-batch (GEMMs with fewer
      rows, whose rounding depends on the row count with OpenBLAS's Haswell
      kernels) and the per-rank weight gradients are then summed by the
      all-reduce (or reduce-scatter with ZeRO-1): another summation order
      than one rank's single GEMM over all rows. Tolerance, whatever ep,
      transport or ZeRO-1.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from equivalence import Comparison, metric_rows  # noqa: E402
from testenv import mpi_env  # noqa: E402

THREADS = 1
GLOBAL_SEQ = 16
MODEL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=32",
         "model.dense_hidden=64", "moe.experts=8", "moe.top_k=2", "moe.expert_hidden=24", "moe.shared_experts=1",
         "moe.aux_loss_coef=0.05", "moe.z_loss_coef=0.01", "moe.bias_update_rate=0.01", "train.steps=10",
         f"train.global_batch={GLOBAL_SEQ}", "train.micro_batch=0", "train.grad_accum=2", "train.val_every=5",
         "train.val_batches=2", "train.log_every=10", "train.lr=1e-2", "train.warmup_steps=2",
         f"train.threads={THREADS}"]
# Relative loss tolerances of the layouts that are not bitwise, measured by
# bench/layout_spread.py over seeds 1-3 x default (SkylakeX), Haswell and
# Sandybridge kernels (layouts 1x1, 2x1, 4x2, 4x4, all 12 runs each): the
# largest relative difference of a training or validation loss before any
# routing difference.
# Without capacity dropping: 5.2e-7 (a validation loss; training 8.7e-8).
TOL_DROPLESS = 3e-6  # 5.7x
# With capacity 1.0: 4.4e-6. Dropping has near-ties that loads do not show
# (which of two nearly equal-scored tokens an over-full expert keeps): one
# such flip moves the loss by a jump of ~4.4e-6 (seed 3, every dp > 1
# layout), otherwise the spread is 1.2e-6.
TOL_DROP = 1e-5  # 2.3x the largest, covers one drop flip
# Gradient norms (they move far more than the loss: Adam's update of a
# coordinate whose gradient is at the FP32 noise floor is +-lr whatever its
# size, so the runs' weights differ there by up to lr after one step):
# largest measured relative difference 3.5e-3. A gradient-reduction bug that
# drops or doubles a rank's share is off by tens of percent.
GRAD_NORM_TOL = 1e-2  # 2.9x
ENV = mpi_env(OMP_NUM_THREADS=str(THREADS))


def plan(dp, ep):
    """Baselines {name: sets} and the runs [(name, ranks, sets, baseline name, tolerance or None)]."""
    bases, runs = {}, []
    for drop in (0.0, 1.0):
        base = f"base_drop{drop}"
        bases[base] = [f"moe.capacity_factor={drop}", "parallel.dp=1", "parallel.ep=1"]
        for zero1 in (False, True):
            for transport, overlap in (("mpi", False), ("mpi", True), ("shm", False)):
                name = f"dp{dp}_ep{ep}_drop{drop}_zero1{int(zero1)}_{transport}{'_overlap' if overlap else ''}"
                bitwise = dp == 1 and not (transport == "mpi" and overlap)
                runs.append((name, dp, [f"moe.capacity_factor={drop}", f"parallel.dp={dp}", f"parallel.ep={ep}",
                                        f"parallel.zero1={str(zero1).lower()}", f"parallel.transport={transport}",
                                        f"parallel.overlap={str(overlap).lower()}", "parallel.dispatch_chunks=3"],
                             base, None if bitwise else (TOL_DROP if drop > 0 else TOL_DROPLESS)))
    return bases, runs


def train(bin_dir, tmp, name, ranks, sets, env=ENV):
    run_dir = Path(tmp) / name
    args = [a for s in MODEL + sets + [f"run.dir={run_dir}"] for a in ("--set", s)]
    cmd = ([str(bin_dir / "moe-train")] if ranks == 1 else ["mpiexec", "-n", str(ranks), str(bin_dir / "moe-train")]) + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return metric_rows(run_dir)


def main(bin_dir, dp, ep):
    failures = []
    bases, runs = plan(dp, ep)
    with tempfile.TemporaryDirectory() as tmp:
        base = {name: train(bin_dir, tmp, name, 1, sets) for name, sets in bases.items()}
        assert max(r["dropped_frac"] for r in base["base_drop1.0"]) > 0.05, "the dropping case should drop"
        for name, ranks, sets, base_name, tol in runs:
            c = Comparison(train(bin_dir, tmp, name, ranks, sets), base[base_name], tol,
                           None if tol is None else GRAD_NORM_TOL)
            print(f"{name:<40} {c.summary()}", flush=True)
            if not c.ok or c.n != 10:
                failures.append(name)
    if failures:
        print("FAILED: " + ", ".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
