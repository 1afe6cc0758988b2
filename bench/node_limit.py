#!/usr/bin/env python3
"""Node-limited routing (moe.expert_groups, moe.max_nodes_per_token): how
many (token, expert group) pairs the router's picks make, which is what a
dispatch that sends a token once per destination node moves across the
network when each group lives on one node. Never pass/fail: it prints tables.

usage: bench/node_limit.py [--bin build/bin] [--steps 8] [--shapes 16x2,64x8]
           [--groups 2,4,8] [--limits 1,2] [--set section.key=value] [--loss-steps 150] [--seeds 1,2,3] [--skip-loss]

Table 1, from the real router outputs of `--steps` training steps of
configs/small.toml with model.n_layers = 4 (3 MoE layers) and fine-grained
experts (E x K: 16 x 2 with F = 512, 64 x 8 with F = 128, so the expert
parameters stay those of small.toml's 8 x 1024), for every G in --groups and
every limit M = 1..G (M = G is no limit). Columns: pairs per token per MoE
layer (the metrics' expert_groups.per_token, averaged over the steps; a
dispatch without node dedup sends K rows per token), the share of the
unlimited pairs (M = G) the limit leaves, and the share of K. Each run trains
with its own limit, so its router outputs are those of a model trained with
it.

Table 2, the limit's loss effect: configs/tiny.toml (E = 8, K = 2; --loss-set
overrides, e.g. a smaller model) with 4 groups, --loss-steps steps, no limit
vs M = 1, one run per seed; the difference in final validation loss next to
the seed spread of each. The README's figures and the commands behind them
are in its "Node-limited routing" section.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(bin_dir, config, sets, run_dir):
    args = [a for s in sets + [f"run.dir={run_dir}", "checkpoint.interval=0", "checkpoint.at_end=false"]
            for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([str(bin_dir / "moe-train"), str(config)] + args, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"moe-train failed ({p.returncode}): {' '.join(sets)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            rows.append(r)
    return rows


def pairs_table(a, tmp):
    print(f"# Table 1: (token, group) pairs per token per MoE layer, configs/small.toml with 4 layers "
          f"{' '.join(a.set)}, {a.steps} steps each")
    print(f"{'E':>3} {'K':>2} {'G':>2} {'M':>2} {'pairs/token':>11} {'of M=G':>7} {'of K':>6} {'max':>4} {'last loss':>9}")
    for shape in a.shapes.split(","):
        E, K = (int(x) for x in shape.split("x"))
        F = 1024 * 8 // E
        for G in (int(g) for g in a.groups.split(",")):
            if E % G:
                continue
            base, lines = None, []
            for M in range(G, 0, -1):  # M = G (no limit) first: the reference
                if K > M * (E // G) or (M < G and a.limits and M not in a.limits):
                    continue
                rows = run(a.bin, ROOT / "configs/small.toml",
                           ["model.n_layers=4", f"moe.experts={E}", f"moe.top_k={K}", f"moe.expert_hidden={F}",
                            f"moe.expert_groups={G}", f"moe.max_nodes_per_token={M}", f"train.steps={a.steps}",
                            "train.log_every=1", "train.val_every=0", f"train.seed={a.seed}"] + a.set,
                           Path(tmp) / f"e{E}k{K}g{G}m{M}")
                per = statistics.mean(r["expert_groups"]["per_token"] for r in rows)
                mx = max(r["expert_groups"]["max"] for r in rows)
                base = per if base is None else base
                lines.append(f"{E:>3} {K:>2} {G:>2} {M:>2} {per:>11.3f} {per / base:>7.3f} {per / K:>6.3f} "
                             f"{mx:>4.0f} {rows[-1]['loss']:>9.4f}")
            for line in reversed(lines):
                print(line, flush=True)


def loss_table(a, tmp):
    print(f"\n# Table 2: final validation loss, configs/tiny.toml {' '.join(a.loss_set)} (E 8, K 2, 4 groups of 2), "
          f"{a.loss_steps} steps")
    res = {}
    for name, M in (("no limit", 0), ("M = 1", 1)):
        for seed in a.seeds.split(","):
            rows = run(a.bin, ROOT / "configs/tiny.toml",
                       a.loss_set + ["moe.expert_groups=4", f"moe.max_nodes_per_token={M}", f"train.steps={a.loss_steps}",
                        f"train.val_every={a.loss_steps}", "train.val_batches=16", f"train.log_every={a.loss_steps}",
                        f"train.seed={seed}"], Path(tmp) / f"loss_m{M}_s{seed}")
            res.setdefault(name, []).append(rows[-1]["val_loss"])
    print(f"{'routing':<10} " + " ".join(f"{'seed ' + s:>9}" for s in a.seeds.split(",")) + f" {'mean':>8} {'spread':>7}")
    for name, v in res.items():
        print(f"{name:<10} " + " ".join(f"{x:>9.4f}" for x in v) + f" {statistics.mean(v):>8.4f} {max(v) - min(v):>7.4f}")
    d = [b - a_ for a_, b in zip(res["no limit"], res["M = 1"])]
    print(f"M = 1 minus no limit, per seed: {', '.join(f'{x:+.4f}' for x in d)} (mean {statistics.mean(d):+.4f})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", type=Path, default=ROOT / "build/bin")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--shapes", default="16x2,64x8")
    p.add_argument("--groups", default="2,4,8")
    p.add_argument("--loss-steps", type=int, default=150)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--skip-loss", action="store_true")
    p.add_argument("--skip-pairs", action="store_true")
    p.add_argument("--loss-set", action="append", default=[], help="more section.key=value for table 2's runs")
    p.add_argument("--limits", type=lambda x: [int(v) for v in x.split(",")], default=[],
                   help="only these M (and M = G); default every M")
    p.add_argument("--set", action="append", default=[], help="more section.key=value for table 1's runs")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="node_limit.") as tmp:
        if not a.skip_pairs:
            pairs_table(a, tmp)
        if not a.skip_loss:
            loss_table(a, tmp)


if __name__ == "__main__":
    main()
