#!/usr/bin/env python3
"""Layout equivalence: a (dp, ep) layout trains the same model as one rank.

usage: test_layouts.py BIN_DIR DP EP

With a fixed seed and global batch (16 sequences, 2 micro-batches of
accumulation), runs moe-train for 10 steps on DP ranks with expert
parallelism EP, with and without capacity dropping and ZeRO-1, over the
MPI all-to-all (plain and overlapped) and the shared-memory transport, and
requires every step's loss within relative 1e-5 of
the single-rank run with the same dropping. Also checks that the expert
loads and dropped fractions are identical, since they are integers.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BIN, DP, EP = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
TOL = 1e-5
GLOBAL_SEQ = 16

MODEL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=32",
         "model.dense_hidden=64", "moe.experts=8", "moe.top_k=2", "moe.expert_hidden=24", "moe.shared_experts=1",
         "moe.aux_loss_coef=0.05", "moe.z_loss_coef=0.01", "moe.bias_update_rate=0.01", "train.steps=10",
         f"train.global_batch={GLOBAL_SEQ}", "train.micro_batch=0", "train.grad_accum=2", "train.val_every=5", "train.val_batches=2", "train.log_every=10", "train.lr=1e-2",
         "train.warmup_steps=2"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1", OMP_NUM_THREADS="1")


def train(tmp, name, ranks, sets):
    run_dir = Path(tmp) / name
    args = []
    for s in MODEL + sets + [f"run.dir={run_dir}"]:
        args += ["--set", s]
    cmd = ([str(BIN / "moe-train")] if ranks == 1 else ["mpiexec", "-n", str(ranks), str(BIN / "moe-train")]) + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main():
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for drop in (0.0, 1.0):
            base = train(tmp, f"base_drop{drop}", 1, [f"moe.capacity_factor={drop}", "parallel.dp=1", "parallel.ep=1"])
            if drop > 0:
                assert max(r["dropped_frac"] for r in base) > 0.05, "the dropping case should drop"
            for zero1 in (False, True):
                for transport, overlap in (("mpi", False), ("mpi", True), ("shm", False)):
                    name = f"dp{DP}_ep{EP}_drop{drop}_zero1{int(zero1)}_{transport}{'_overlap' if overlap else ''}"
                    rows = train(tmp, name, DP, [f"moe.capacity_factor={drop}", f"parallel.dp={DP}", f"parallel.ep={EP}",
                                                 f"parallel.zero1={str(zero1).lower()}", f"parallel.transport={transport}",
                                                 f"parallel.overlap={str(overlap).lower()}", "parallel.dispatch_chunks=3"])
                    worst = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(rows, base))
                    vworst = max(abs(a["val_loss"] - b["val_loss"]) / b["val_loss"] for a, b in zip(rows, base) if "val_loss" in b)
                    same_ints = all(a["expert_load"] == b["expert_load"] and a["dropped_frac"] == b["dropped_frac"]
                                    for a, b in zip(rows, base))
                    print(f"{name}: worst relative loss difference {worst:.2e}, val {vworst:.2e}, "
                          f"loads and drops {'identical' if same_ints else 'DIFFER'}")
                    if len(rows) != 10 or worst > TOL or vworst > TOL or not same_ints:
                        failures.append(name)
    if failures:
        print("FAILED: " + ", ".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
