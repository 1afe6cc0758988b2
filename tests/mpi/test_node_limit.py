#!/usr/bin/env python3
"""Node-limited routing (moe.expert_groups, moe.max_nodes_per_token) in training.

usage: test_node_limit.py BIN_DIR

The model of test_layouts.py with 8 experts in 4 groups of 2 and K = 2:
  1. the limit binds: without it (moe.max_nodes_per_token = 0) some token's two
     experts come from 2 groups (metrics expert_groups.max = 2, per_token > 1);
     with a limit of 1 no token spans more than 1 group at any step, and the
     losses differ from the unlimited run's;
  2. a limit of every group (M = G = 4) is no limit: bitwise the unlimited run;
  3. the limit is part of the model, not of the layout: dp = ep = 2 (two
     groups per rank) and dp = ep = 4 (one group per rank) give the
     one-rank losses within test_layouts.py's dropless tolerance, the same
     near-tie rule for routing flips (the router_margin now also covers the
     group choice) and its gradient-norm tolerance;
  4. the banner says whether each group lives on one node (here every rank is
     on one host, so the limit saves no network bytes).
"""
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from equivalence import Comparison, metric_rows  # noqa: E402
from test_layouts import ENV, GRAD_NORM_TOL, MODEL, TOL_DROPLESS  # noqa: E402

GROUPS = ["moe.expert_groups=4", "moe.capacity_factor=0", "parallel.transport=mpi"]


def train(bin_dir, tmp, name, ranks, sets):
    """moe-train with test_layouts.py's model: (metric rows, stdout)."""
    run_dir = Path(tmp) / name
    args = [a for s in MODEL + sets + [f"run.dir={run_dir}"] for a in ("--set", s)]
    cmd = ([str(bin_dir / "moe-train")] if ranks == 1 else ["mpiexec", "-n", str(ranks), str(bin_dir / "moe-train")]) + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return metric_rows(run_dir), p.stdout


def main(bin_dir):
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        one = ["parallel.dp=1", "parallel.ep=1"]
        free, _ = train(bin_dir, tmp, "free", 1, GROUPS + one + ["moe.max_nodes_per_token=0"])
        limited, _ = train(bin_dir, tmp, "limited", 1, GROUPS + one + ["moe.max_nodes_per_token=1"])
        every, _ = train(bin_dir, tmp, "every", 1, GROUPS + one + ["moe.max_nodes_per_token=4"])
        spans = [r["expert_groups"]["max"] for r in free]
        check(max(spans) == 2 and min(r["expert_groups"]["per_token"] for r in free) > 1.05,
              f"without the limit tokens span 2 groups (max per step {spans}, per token "
              f"{[round(r['expert_groups']['per_token'], 3) for r in free]})")
        check(all(r["expert_groups"]["max"] == 1 and r["expert_groups"]["per_token"] == 1.0 for r in limited),
              f"with max_nodes_per_token = 1 every token stays in one group "
              f"(max per step {[r['expert_groups']['max'] for r in limited]})")
        check(all(a["loss"] != b["loss"] for a, b in zip(free, limited)),
              f"the limit changes every step's loss (last {free[-1]['loss']} vs {limited[-1]['loss']})")
        c = Comparison(every, free)
        check(c.ok and c.n == 10, f"max_nodes_per_token = expert_groups is no limit: {c.summary()}")
        for dp in (2, 4):
            rows, out = train(bin_dir, tmp, f"dp{dp}_ep{dp}", dp, GROUPS + [f"parallel.dp={dp}", f"parallel.ep={dp}",
                                                                        "moe.max_nodes_per_token=1"])
            c = Comparison(rows, limited, TOL_DROPLESS, GRAD_NORM_TOL)
            check(c.ok and c.n == 10, f"dp = ep = {dp} with the limit against one rank: {c.summary()}")
            line = next((x for x in out.splitlines() if x.startswith("groups :")), "")
            check("at most 1 of 4 groups" in line and "on one node" in line and "saves no network bytes" in line,
                  f"the banner says the groups' nodes: {line!r}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
