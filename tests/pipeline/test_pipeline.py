#!/usr/bin/env python3
"""Pipeline parallelism trains the same model as one rank.

usage: test_pipeline.py BIN_DIR GROUP

GROUP "pp2": pp = 2 on 2 ranks with every schedule, tied embeddings (with
ZeRO-1), full recomputation, an explicit split; a checkpoint written by
pp = 2 resumed on one rank. GROUP "pp4": pp = 4 on 4 ranks with every
schedule, and how many micro-batches stage 0 holds (1F1B <= pp, GPipe m).
GROUP "3d": (pp, dp, ep) = (2, 2, 1) on 4 ranks and (2, 2, 2) on 4 ranks,
with ZeRO-1 and capacity dropping.

Every run, the one-rank baselines included, has train.threads = 1:
OpenBLAS's Haswell/Zen sgemm rounds differently on 1 and 2 threads, so a
baseline on 2 threads differs from every pipeline rank's 1 (this was the
2.71e-5 every schedule showed on Zen 3). 10 steps of 8 micro-batches, FP32;
tests/equivalence.py says what "bitwise" and "tolerance" check.

Which layouts are bitwise equal to one rank, and why:
  every schedule (GPipe, 1F1B, zero-bubble, interleaved), pp 2 and 4, full
      recomputation, an uneven split: each stage runs its layers on the
      same whole micro-batches as one rank, with the same GEMM shapes, and
      accumulates every parameter's gradient over micro-batches 0..7 in
      order (zero-bubble defers the weight-gradient GEMMs but runs them in
      micro-batch order; recomputation repeats the same forward). The loss
      is summed on the last stage in micro-batch order. Bitwise; only the
      gradient norm's double sum is split over the stages.
  a pp = 2 checkpoint resumed on one rank: the same state, then one rank's
      computation. Bitwise.
  tied embeddings over pp = 2: one rank adds the head's and the
      embedding's gradient into one buffer, micro-batch by micro-batch;
      over stages each end sums its own part over the 8 micro-batches and
      the two sums are then added: another order. Tolerance.
  3d (dp = 2): each rank computes half of every micro-batch and the
      halves' weight gradients are summed by the data-parallel reduction:
      another order (and GEMMs of fewer rows). Tolerance.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from equivalence import Comparison, metric_rows  # noqa: E402
from testenv import mpi_env  # noqa: E402

THREADS = 1
M = 8  # micro-batches per step
MODEL = ["model.d_model=32", "model.n_layers=8", "model.dense_layers=1", "model.n_heads=4", "model.n_kv_heads=2",
         "model.seq_len=32", "model.dense_hidden=64", "moe.experts=8", "moe.top_k=2", "moe.expert_hidden=24",
         "moe.shared_experts=1", "moe.aux_loss_coef=0.05", "moe.z_loss_coef=0.01", "moe.bias_update_rate=0.01",
         "train.steps=10", "train.global_batch=16", "train.micro_batch=0", f"train.grad_accum={M}", "train.val_every=5",
         "train.val_batches=2", "train.log_every=10", "train.lr=1e-2", "train.warmup_steps=2", "parallel.timeout=60",
         f"train.threads={THREADS}"]
# Relative loss tolerances of the layouts that are not bitwise, measured by
# bench/layout_spread.py over seeds 1-3 x default (SkylakeX), Haswell and
# Sandybridge kernels: the largest relative difference of a training or
# validation loss before any routing difference.
# Tied embeddings over pp = 2 (dropless): 2.1e-8 (the first step is bitwise:
# only the gradient's summation order differs).
TOL_TIED = 1e-7  # 4.9x
# 3d (pp 2, dp 2, ep 1 or 2, ZeRO-1 on or off, capacity 1.0): 2.1e-6. With
# capacity dropping a near-tie between two tokens for an over-full expert
# (not visible in the loads) can add a jump of ~4.4e-6 (seen in the
# layouts' measurement of the same kind of model); 1e-5 covers one.
TOL_3D = 1e-5  # 4.9x
# 3d routes differed from one rank in 9 of its 27 measured runs (from step 6,
# 8 or 9, at router margins 2.8e-7 .. 5.6e-6): near-ties, handled as
# tests/equivalence.py says.
# Gradient norms of those layouts: largest measured 7.1e-6 (3d), 4.0e-6 (tied).
GRAD_NORM_TOL = 3e-5  # 4.2x
ENV = mpi_env(OMP_NUM_THREADS=str(THREADS))


def schedules(pp):
    out = [("gpipe", 1), ("1f1b", 1), ("zb", 1)]
    out.append(("interleaved", 2 if 8 // pp >= 2 else 1))
    return out


def plan(group):
    """Baselines {name: sets} and the compared runs [(name, ranks, sets, baseline name, tolerance or None)]."""
    if group == "3d":
        bases = {"base": ["moe.capacity_factor=1.0"]}
        runs = [(f"pp{pp}_dp{dp}_ep{ep}_zero1{zero1}", pp * dp,
                 [f"parallel.pp={pp}", f"parallel.dp={dp}", f"parallel.ep={ep}", f"parallel.zero1={zero1}",
                  "moe.capacity_factor=1.0", "parallel.schedule=1f1b"], "base", TOL_3D)
                for pp, dp, ep, zero1 in ((2, 2, 1, "false"), (2, 2, 2, "true"), (2, 2, 2, "false"))]
        return bases, runs
    pp = 2 if group == "pp2" else 4
    bases = {"base": []}
    runs = [(f"pp{pp}_{sched}_v{v}", pp, [f"parallel.pp={pp}", f"parallel.schedule={sched}", f"parallel.virtual={v}"],
             "base", None) for sched, v in schedules(pp)]
    if group == "pp2":
        bases["base_tied"] = ["model.tie_embeddings=true"]
        runs += [(f"pp2_tied_zero1{z}", 2, ["parallel.pp=2", "model.tie_embeddings=true", f"parallel.zero1={z}"],
                  "base_tied", TOL_TIED) for z in ("false", "true")]
        runs.append(("pp2_1f1b_recompute_full", 2, ["parallel.pp=2", "parallel.recompute=full"], "base", None))
        runs.append(("pp2_split_5_3", 2, ["parallel.pp=2", "parallel.split=[5, 3]"], "base", None))
    return bases, runs


def train(bin_dir, tmp, name, ranks, sets, expect_ok=True, env=ENV):
    run_dir = Path(tmp) / name
    args = [a for s in MODEL + sets + [f"run.dir={run_dir}"] for a in ("--set", s)]
    cmd = ([str(bin_dir / "moe-train")] if ranks == 1 else ["mpiexec", "-n", str(ranks), str(bin_dir / "moe-train")]) + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if not expect_ok:
        return p
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return metric_rows(run_dir), p.stdout


failures = []


def compare(name, rows, base, tol, steps=10):
    c = Comparison(rows, base, tol, None if tol is None else GRAD_NORM_TOL)
    print(f"{name:<28} {c.summary()}", flush=True)
    if not c.ok or c.n != steps:
        failures.append(name)


def main(bin_dir, group):
    bases, runs = plan(group)
    with tempfile.TemporaryDirectory() as tmp:
        base = {name: train(bin_dir, tmp, name, 1, sets)[0] for name, sets in bases.items()}
        for name, ranks, sets, base_name, tol in runs:
            rows, out = train(bin_dir, tmp, name, ranks, sets)
            compare(name, rows, base[base_name], tol)
            if "parallel.split=[5, 3]" in sets:
                assert "split from parallel.split 5/3" in out, out[:2000]
            sched = next((s.split("=")[1] for s in sets if s.startswith("parallel.schedule=")), None)
            if group in ("pp2", "pp4") and sched:
                pp = ranks
                v = int(next(s.split("=")[1] for s in sets if s.startswith("parallel.virtual=")))
                peak = rows[-1]["pipeline"]["peak_in_flight"]
                bound = {"gpipe": M, "1f1b": pp, "zb": pp, "interleaved": M * v}[sched]
                assert peak[0] <= bound, (name, peak)
                if sched == "gpipe":
                    assert peak[0] == M, (name, peak)  # GPipe holds every micro-batch
                if sched == "1f1b":
                    assert peak == [pp - r for r in range(pp)], (name, peak)  # stage r holds pp - r
                print(f"  stage-0 micro-batches in flight {peak[0]} (bound {bound}); per rank {peak}; bubble measured "
                      f"{rows[-1]['pipeline']['bubble']}, simulated {rows[-1]['pipeline']['bubble_sim']}", flush=True)
        if group == "pp2":
            # A pp = 2 checkpoint at step 6, resumed on one rank in a fresh run dir: bitwise equal to the
            # one-rank run's steps 7-10 (the same state, then the same computation).
            ck = Path(tmp) / "ck"
            train(bin_dir, tmp, "pp2_ckpt", 2, ["parallel.pp=2", "train.stop_after=6", "checkpoint.interval=3",
                                                f"checkpoint.dir={ck}"])
            rows, out = train(bin_dir, tmp, "pp2_ckpt_resume1", 1, [f"checkpoint.dir={ck}"])
            assert "resumed from" in out, out[-2000:]
            compare("pp2 checkpoint -> 1 rank", rows, base["base"][6:], None, steps=4)
            # Bad input: clear errors, nothing started.
            for sets, want in ((["parallel.pp=2", "parallel.split=[4, 3]"], "parallel.split sums to 7 layers"),
                               (["parallel.pp=2", "parallel.schedule=interleaved", "parallel.virtual=2",
                                 "train.global_batch=12", "train.grad_accum=3"], "multiple of parallel.pp"),
                               (["parallel.pp=2", "parallel.virtual=5", "parallel.schedule=interleaved"], "each stage needs at least one")):
                p = train(bin_dir, tmp, "bad", 2, sets, expect_ok=False)
                msg = p.stdout + p.stderr
                assert p.returncode == 2 and want in msg, (sets, p.returncode, msg[-1500:])
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("all pipeline layouts match one rank")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
