#!/usr/bin/env python3
"""Training over the hierarchical MoE transport equals flat MPI to the bit.

usage: test_hier_train.py BIN_DIR

Four ranks of this machine declared as nodes by parallel.node_size (the
dispatch then sends rows between the declared nodes over MPI and within one
through shared memory, as on a real cluster). The hierarchical transport
moves the same rows into the same expert-side order and brings every pick's
output back unchanged (no pre-reduction), so every loss, validation loss and
gradient norm equals the flat MPI transport's of the same layout exactly:
  dp 4, ep 4, 2 nodes of 2, with capacity dropping; and with FP8 block
      scaling (the experts' inputs then live in one buffer shared by layers),
      and with it parallel.dispatch_dtype = fp8 (rows packed as the mpi
      transport packs them, the node's rows too; the banner names the payload);
  dp 4, ep 4, nodes of 3 + 1 (uneven);
  dp 4, ep 2, one rank per node (each ep group spans 2 single-rank nodes).
"auto" picks the hierarchical transport when the group spans declared nodes
and the start-up banner names it; a bad transport name is exit code 2 naming
the key.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from equivalence import Comparison, metric_rows  # noqa: E402
from testenv import mpi_env  # noqa: E402

ENV = mpi_env(OMP_NUM_THREADS="1")
MODEL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=32",
         "model.dense_hidden=64", "moe.experts=8", "moe.top_k=4", "moe.expert_hidden=24", "moe.shared_experts=1",
         "moe.aux_loss_coef=0.05", "moe.z_loss_coef=0.01", "moe.bias_update_rate=0.01", "train.steps=4",
         "train.global_batch=16", "train.micro_batch=0", "train.grad_accum=2", "train.val_every=2",
         "train.val_batches=2", "train.log_every=4", "train.lr=1e-2", "train.warmup_steps=2", "train.threads=1",
         "parallel.dp=4"]


def train(bin_dir, tmp, name, sets, expect_rc=0):
    run_dir = Path(tmp) / name
    args = [a for s in MODEL + sets + [f"run.dir={run_dir}"] for a in ("--set", s)]
    p = subprocess.run(["mpiexec", "-n", "4", str(bin_dir / "moe-train")] + args, capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert p.returncode == expect_rc, f"{name}: exit {p.returncode}, wanted {expect_rc}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p, (metric_rows(run_dir) if expect_rc == 0 else None)


def main(bin_dir):
    failures = []
    cases = [  # (name, common settings, hierarchical settings, what the banner must say)
        ("ep4_nodes2_drop", ["parallel.ep=4", "moe.capacity_factor=1.0"], ["parallel.node_size=2"], "hierarchical dispatch (2 nodes: 2+2 ranks by parallel.node_size)"),
        ("ep4_nodes2_fp8", ["parallel.ep=4", "precision.recipe=fp8-block"], ["parallel.node_size=2"], None),
        ("ep4_nodes2_fp8_payload", ["parallel.ep=4", "precision.recipe=fp8-block", "parallel.dispatch_dtype=fp8"], ["parallel.node_size=2"], "by parallel.node_size), rows fp8 to the experts, bf16 back"),
        ("ep4_nodes3+1", ["parallel.ep=4"], ["parallel.node_size=3"], "hierarchical dispatch (2 nodes: 3+1 ranks by parallel.node_size)"),
        ("ep2_nodes1", ["parallel.ep=2"], ["parallel.node_size=1"], "hierarchical dispatch (2 nodes: 1+1 ranks by parallel.node_size)"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, common, hier, banner in cases:
            _, flat = train(bin_dir, tmp, name + "_mpi", common + ["parallel.transport=mpi"])
            p, rows = train(bin_dir, tmp, name + "_hier", common + hier + ["parallel.transport=hierarchical"])
            c = Comparison(rows, flat)
            print(f"{name:<20} {c.summary()}", flush=True)
            if not c.ok or c.n != 4:
                failures.append(name)
            if banner and banner not in p.stdout:
                failures.append(f"{name}: the banner does not say '{banner}':\n{p.stdout[:1500]}")
            if name == "ep4_nodes2_drop" and max(r["dropped_frac"] for r in rows) == 0:
                failures.append(f"{name}: the dropping case should drop")
        # auto: hierarchical across declared nodes, shared memory on one node.
        p, _ = train(bin_dir, tmp, "auto_nodes2", ["parallel.ep=4", "parallel.node_size=2", "train.steps=1"])
        if "hierarchical dispatch (2 nodes: 2+2 ranks" not in p.stdout:
            failures.append(f"auto with 2 declared nodes did not pick hierarchical:\n{p.stdout[:1500]}")
        p, _ = train(bin_dir, tmp, "auto_one_node", ["parallel.ep=4", "train.steps=1"])
        if "shared-memory dispatch" not in p.stdout:
            failures.append(f"auto on one node did not pick shared memory:\n{p.stdout[:1500]}")
        p, _ = train(bin_dir, tmp, "bad_name", ["parallel.ep=4", "parallel.transport=hier"], expect_rc=2)
        if "parallel.transport" not in p.stderr + p.stdout or "hierarchical" not in p.stderr + p.stdout:
            failures.append(f"a bad transport name is not explained:\n{p.stderr[-1500:]}")
    if failures:
        print("FAILED: " + "\n".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
