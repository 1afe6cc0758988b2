#!/usr/bin/env python3
"""Pipeline parallelism trains the same model as one rank.

usage: test_pipeline.py BIN_DIR GROUP

GROUP "pp2": pp = 2 on 2 ranks with every schedule, tied embeddings (with
ZeRO-1), full recomputation, an explicit split; a checkpoint written by
pp = 2 resumed on one rank. GROUP "pp4": pp = 4 on 4 ranks with every
schedule, and how many micro-batches stage 0 holds (1F1B <= pp, GPipe m).
GROUP "3d": (pp, dp, ep) = (2, 2, 1) on 4 ranks and (2, 2, 2) on 8 ranks,
with ZeRO-1 and capacity dropping.

Every step's loss (10 steps, FP32) must be within relative 1e-5 of the
single-rank run, validation losses too, and the expert loads identical.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BIN, GROUP = Path(sys.argv[1]), sys.argv[2]
TOL = 1e-5
M = 8  # micro-batches per step

MODEL = ["model.d_model=32", "model.n_layers=8", "model.dense_layers=1", "model.n_heads=4", "model.n_kv_heads=2",
         "model.seq_len=32", "model.dense_hidden=64", "moe.experts=8", "moe.top_k=2", "moe.expert_hidden=24",
         "moe.shared_experts=1", "moe.aux_loss_coef=0.05", "moe.z_loss_coef=0.01", "moe.bias_update_rate=0.01",
         "train.steps=10", "train.global_batch=16", "train.micro_batch=0", f"train.grad_accum={M}", "train.val_every=5",
         "train.val_batches=2", "train.log_every=10", "train.lr=1e-2", "train.warmup_steps=2", "parallel.timeout=60"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1", OMP_NUM_THREADS="1")


def train(tmp, name, ranks, sets, expect_ok=True):
    run_dir = Path(tmp) / name
    args = []
    for s in MODEL + sets + [f"run.dir={run_dir}"]:
        args += ["--set", s]
    cmd = ([str(BIN / "moe-train")] if ranks == 1 else ["mpiexec", "-n", str(ranks), str(BIN / "moe-train")]) + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    if not expect_ok:
        return p
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()], p.stdout


failures = []


def compare(name, rows, base):
    assert len(rows) == len(base) == 10, (name, len(rows))
    worst = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(rows, base))
    vworst = max(abs(a["val_loss"] - b["val_loss"]) / b["val_loss"] for a, b in zip(rows, base) if "val_loss" in b)
    loads = all(a["expert_load"] == b["expert_load"] and a["dropped_frac"] == b["dropped_frac"] for a, b in zip(rows, base))
    ok = worst <= TOL and vworst <= TOL and loads
    print(f"{name:<40} max rel loss diff {worst:.2e}  val {vworst:.2e}  loads {'same' if loads else 'DIFFER'}  "
          f"{'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        failures.append(name)


def schedules(pp):
    out = [("gpipe", 1), ("1f1b", 1), ("zb", 1)]
    out.append(("interleaved", 2 if 8 // pp >= 2 else 1))
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = train(tmp, "base", 1, ["moe.capacity_factor=1.0"] if GROUP == "3d" else [])
        if GROUP in ("pp2", "pp4"):
            pp = 2 if GROUP == "pp2" else 4
            for sched, v in schedules(pp):
                name = f"pp{pp}_{sched}_v{v}"
                rows, out = train(tmp, name, pp, [f"parallel.pp={pp}", f"parallel.schedule={sched}", f"parallel.virtual={v}"])
                compare(name, rows, base)
                peak = rows[-1]["pipeline"]["peak_in_flight"]
                bound = {"gpipe": M, "1f1b": pp, "zb": pp, "interleaved": M * v}[sched]
                assert peak[0] <= bound, (name, peak)
                if sched == "gpipe":
                    assert peak[0] == M, (name, peak)  # GPipe holds every micro-batch
                if sched == "1f1b":
                    assert peak == [pp - r for r in range(pp)], (name, peak)  # stage r holds pp - r
                print(f"  stage-0 micro-batches in flight {peak[0]} (bound {bound}); per rank {peak}; bubble measured "
                      f"{rows[-1]['pipeline']['bubble']}, simulated {rows[-1]['pipeline']['bubble_sim']}", flush=True)
        if GROUP == "pp2":
            tied, _ = train(tmp, "base_tied", 1, ["model.tie_embeddings=true"])
            for z in ("false", "true"):
                rows, _ = train(tmp, f"pp2_tied_zero1{z}", 2, ["parallel.pp=2", "model.tie_embeddings=true",
                                                                f"parallel.zero1={z}"])
                compare(f"pp2_tied_zero1{z}", rows, tied)
            rows, _ = train(tmp, "pp2_recompute", 2, ["parallel.pp=2", "parallel.recompute=full"])
            compare("pp2_1f1b_recompute_full", rows, base)
            rows, out = train(tmp, "pp2_split", 2, ["parallel.pp=2", "parallel.split=[5, 3]"])
            assert "split from parallel.split 5/3" in out, out[:2000]
            compare("pp2_split_5_3", rows, base)
            # A pp = 2 checkpoint at step 6, resumed on one rank.
            ck = Path(tmp) / "ck"
            train(tmp, "pp2_ckpt", 2, ["parallel.pp=2", "train.stop_after=6", "checkpoint.interval=3",
                                       f"checkpoint.dir={ck}"])
            rows, out = train(tmp, "pp2_ckpt_resume1", 1, [f"checkpoint.dir={ck}"])
            assert "resumed from" in out, out[-2000:]
            rel = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(rows, base[6:]))
            print(f"pp2 checkpoint -> 1 rank: steps 7-10 max rel diff {rel:.2e}", flush=True)
            if rel > TOL or len(rows) != 4:
                failures.append("pp2 checkpoint resume on 1 rank")
            # Bad input: clear errors, nothing started.
            for sets, want in ((["parallel.pp=2", "parallel.split=[4, 3]"], "parallel.split sums to 7 layers"),
                               (["parallel.pp=2", "parallel.schedule=interleaved", "parallel.virtual=2",
                                 "train.global_batch=12", "train.grad_accum=3"], "multiple of parallel.pp"),
                               (["parallel.pp=2", "parallel.virtual=5", "parallel.schedule=interleaved"], "each stage needs at least one")):
                p = train(tmp, "bad", 2, sets, expect_ok=False)
                msg = p.stdout + p.stderr
                assert p.returncode == 2 and want in msg, (sets, p.returncode, msg[-1500:])
        if GROUP == "3d":
            for pp, dp, ep, zero1 in ((2, 2, 1, "false"), (2, 2, 2, "true"), (2, 2, 2, "false")):
                name = f"pp{pp}_dp{dp}_ep{ep}_zero1{zero1}"
                rows, _ = train(tmp, name, pp * dp, [f"parallel.pp={pp}", f"parallel.dp={dp}", f"parallel.ep={ep}",
                                                     f"parallel.zero1={zero1}", "moe.capacity_factor=1.0",
                                                     "parallel.schedule=1f1b"])
                compare(name, rows, base)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("all pipeline layouts match one rank")


if __name__ == "__main__":
    main()
