#!/usr/bin/env python3
"""moe.experts per MoE layer and `moe-ckpt grow`, end to end.

usage: test_layer_experts.py BIN_DIR CASE

A 4-block tiny model (dense_layers = 1) with moe.experts = [4, 8, 8] trains
on one rank and on two ranks with ep = 2 (tolerances from
tests/equivalence.py's measurements), resumes bitwise, reshards on load and
with moe-ckpt; bad counts are refused with exit 2 naming the key. A trained
checkpoint grows from 8 to 12 experts, resumes on another layout and the new
experts take load; with the new experts' balancing bias at -1e30 (never
chosen) the grown model computes the old model's logits.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from equivalence import Comparison, metric_rows  # noqa: E402
from testenv import mpi_env  # noqa: E402

BIN = Path(sys.argv[1]) if __name__ == "__main__" else None
ENV = mpi_env(OMP_NUM_THREADS="1")
# train.threads = 1 everywhere: compared runs must not differ in how OpenBLAS splits GEMMs over threads.
SMALL = ["model.d_model=32", "model.n_layers=4", "model.dense_layers=1", "model.n_heads=4", "model.n_kv_heads=2",
         "model.seq_len=32", "model.dense_hidden=64", "moe.expert_hidden=24", "moe.shared_experts=1",
         "moe.aux_loss_coef=0.05", "moe.bias_update_rate=0.01", "train.global_batch=8", "train.micro_batch=0",
         "train.val_every=4", "train.val_batches=2", "train.log_every=1", "train.warmup_steps=2", "train.lr=1e-2",
         "train.threads=1"]
PER_LAYER = "moe.experts=[4, 8, 8]"
# Another layout sums gradients in another order (tests/mpi/test_layouts.py):
# that file's measured tolerances for a dropless tiny MoE (largest relative
# loss difference 5.2e-7 over 12 layouts x 3 seeds x 3 kernels; gradient
# norms 3.5e-3), which this model of the same sizes shares; routing
# near-ties handled as tests/equivalence.py says.
TOL = 3e-6
GRAD_NORM_TOL = 1e-2


def moe_train(run_dir, sets, ranks=1, expect=0):
    args = [a for s in SMALL + [f"run.dir={run_dir}"] + sets for a in ("--set", s)]
    cmd = ([str(BIN / "moe-train")] if ranks == 1 else ["mpiexec", "-n", str(ranks), str(BIN / "moe-train")]) + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == expect, f"exit {p.returncode}, expected {expect}:\n{out[-3000:]}"
    return out


def tool(name, *args, expect=0):
    p = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, f"{name} {args}: exit {p.returncode}, expected {expect}:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def latest(run_dir):
    d = Path(run_dir) / "checkpoints"
    return d / (d / "latest").read_text().strip()


def test_per_layer_layouts(tmp):
    """[4, 8, 8] on 1 rank and on 2 ranks with ep = 2 (MPI and shared memory): the same model."""
    common = [PER_LAYER, "train.steps=8"]
    out = moe_train(Path(tmp) / "one", common)
    assert "E=[4,8,8]" in out and "experts per rank by MoE layer: 4/8/8" in out, out[:2000]
    base = metric_rows(Path(tmp) / "one")
    assert [len(x) for x in base[-1]["expert_load"]] == [4, 8, 8], base[-1]["expert_load"]
    assert all(sum(x) == 8 * 32 * 2 for x in base[-1]["expert_load"])  # every token's top-2 picks, in each layer
    for transport in ("mpi", "shm"):
        out = moe_train(Path(tmp) / transport, common + ["parallel.ep=2", f"parallel.transport={transport}"], 2)
        assert "experts per rank by MoE layer: 2/4/4" in out, out[:2000]
        c = Comparison(metric_rows(Path(tmp) / transport), base, TOL, GRAD_NORM_TOL)
        print(f"2 ranks ep=2 {transport}: {c.summary()}")
        assert c.ok and c.n == 8, c.problems
    # Pipeline stages against one rank with the same micro-batches: pp = 2 does the same operations in
    # the same order, so bitwise (tests/equivalence.py); pp = 2 x dp = 2 (ep = 2) on 4 ranks sums over
    # data-parallel ranks: the tolerance above.
    accum = common + ["train.grad_accum=2"]
    moe_train(Path(tmp) / "one2", accum)
    base2 = metric_rows(Path(tmp) / "one2")
    for name, ranks, sets, tol in (("pp2", 2, ["parallel.pp=2"], None),
                                   ("pp2ep2", 4, ["parallel.pp=2", "parallel.ep=2"], TOL)):
        moe_train(Path(tmp) / name, accum + sets, ranks)
        c = Comparison(metric_rows(Path(tmp) / name), base2, tol, None if tol is None else GRAD_NORM_TOL)
        print(f"{name}: {c.summary()}")
        assert c.ok and c.n == 8, c.problems
    # The tensors: each layer's router and experts at its own count.
    ls = tool("moe-ckpt", "ls", latest(Path(tmp) / "mpi"))
    assert "layers.1.moe.router" in ls and "(4, 32)" in ls and "layers.1.moe.experts.4." not in ls, ls
    assert "layers.3.moe.experts.7.w13" in ls and "(8, 32)" in ls, ls


def test_per_layer_checkpoints(tmp):
    """Exact resume, reshard on load (2 ranks ep=2 -> 1 rank), moe-ckpt reshard / loads / export, generation."""
    common = [PER_LAYER, "train.steps=8", "checkpoint.interval=4"]
    straight, split = Path(tmp) / "straight", Path(tmp) / "split"
    moe_train(straight, common)
    moe_train(split, common + ["train.stop_after=4"])
    out = moe_train(split, common)
    assert "resumed from" in out and "(step 4)" in out, out[-2000:]
    assert [r["loss"] for r in metric_rows(straight)] == [r["loss"] for r in metric_rows(split)], "not bitwise"
    assert "identical" in tool("moe-ckpt", "diff", latest(straight), latest(split), "--moments")
    # Written on 2 ranks with ep = 2, resumed on one: steps 1-4 the writer's, 5-8 another summation order.
    two, src = Path(tmp) / "two", Path(tmp) / "src"
    moe_train(two, common + ["parallel.ep=2"], 2)
    moe_train(src, common + ["parallel.ep=2", "train.stop_after=4"], 2)
    out = moe_train(src, common + ["parallel.ep=1"], 1)
    assert "resumed from" in out, out[-2000:]
    got, want = metric_rows(src), metric_rows(two)
    assert Comparison(got[:4], want[:4]).ok
    c = Comparison(got[4:], want[4:], TOL, GRAD_NORM_TOL)
    print(f"reshard on load 2 ranks ep=2 -> 1 rank: {c.summary()}")
    assert c.ok, c.problems
    # moe-ckpt reshard: to ep = 4 (1/2/2 experts per rank by layer), verified; ep = 8 does not divide 4.
    ck = latest(straight)
    j = json.loads(tool("moe-ckpt", "reshard", ck, Path(tmp) / "r4", "--dp", "4", "--ep", "4", "--json"))
    assert j["layout"]["ep"] == 4, j
    assert "OK" in tool("moe-ckpt", "verify", Path(tmp) / "r4")
    assert "identical" in tool("moe-ckpt", "diff", ck, Path(tmp) / "r4", "--moments")
    out = tool("moe-ckpt", "reshard", ck, Path(tmp) / "r8", "--dp", "8", "--ep", "8", expect=2)
    assert "moe.experts = [4, 8, 8] cannot be split evenly over parallel.ep = 8" in out, out
    # The resharded checkpoint resumes on 4 ranks (ep = 4: one expert of layer 1 per rank).
    out = moe_train(Path(tmp) / "four", common + ["train.steps=10", f"checkpoint.resume={Path(tmp) / 'r4'}",
                                                   "parallel.ep=4"], 4)
    assert "resumed from" in out and "step 10/10" in out, out[-2000:]
    loads = json.loads(tool("moe-ckpt", "loads", ck, "--json"))
    assert [len(l["load"]) for l in loads] == [4, 8, 8], loads
    out = tool("moe-ckpt", "export", ck, Path(tmp) / "hf", "--format", "deepseek-v3", expect=2)
    assert "moe.experts = [4, 8, 8]" in out and "n_routed_experts" in out, out
    assert not (Path(tmp) / "hf").exists()
    gen = json.loads(tool("moe-generate", ck, "--prompt", "Hello", "--max-new", "8", "--json", "--quiet"))
    assert len(gen["ids"]) >= 8, gen


def test_per_layer_errors(tmp):
    out = moe_train(Path(tmp) / "a", ["moe.experts=[4, 8]"], expect=2)
    assert "moe.experts = [4, 8] has 2 entries, the model has 3 MoE layers" in out, out
    out = moe_train(Path(tmp) / "b", ["moe.experts=[4, 8, 6]", "parallel.ep=4", "parallel.dp=4"], 4, expect=2)
    assert "moe.experts = [4, 8, 6] cannot be split evenly over parallel.ep = 4" in out, out[-2000:]
    # The formula: 4, 8, 16 (gamma 2 rounded to multiples of 4), ep = auto = gcd(dp, counts).
    out = moe_train(Path(tmp) / "c", ["moe.experts_min=4", "moe.experts_max=16", "moe.experts_gamma=2",
                                      "moe.experts_round=4", "train.steps=1"], 2)
    assert "E=[4,8,16]" in out and "2/4/8" in out, out[:2000]
    # moe-launch's plan: per-layer experts per rank, and its parameter count equals the trainer's.
    sets = [a for s in SMALL + [PER_LAYER, f"run.dir={Path(tmp) / 'p'}"] for a in ("--set", s)]
    plan = json.loads(tool("moe-launch", *sets, "--np", "2", "--dry-run", "--json"))
    assert plan["layout"]["experts_per_rank_by_layer"] == [2, 4, 4], plan["layout"]
    out = moe_train(Path(tmp) / "d", [PER_LAYER, "train.steps=1"])
    n = plan["model"]["parameters"]
    assert f"{n / 1000:.1f}k params" in out, (n, out[:1000])


def grow_setup(tmp):
    src = Path(tmp) / "src"
    moe_train(src, ["moe.experts=8", "train.steps=6", "checkpoint.interval=6"])
    return latest(src)


def logits(ck, tmp):
    j = json.loads(tool("moe-generate", ck, "--prompt", "The quick brown fox jumps", "--max-new", "1", "--json",
                        "--logits", "--quiet"))
    return np.array(j["prompt_logits"], dtype=np.float64)


def test_grow(tmp):
    ck = grow_setup(tmp)
    g = Path(tmp) / "g12.h5"
    j = json.loads(tool("moe-ckpt", "grow", ck, g, "--layer", "all", "--add", "4", "--json"))
    assert j["experts_before"] == [8, 8, 8] and j["experts_after"] == [12, 12, 12], j
    assert "OK" in tool("moe-ckpt", "verify", g)
    # Old tensors and moments bit for bit; new experts copy their round-robin source, zero moments.
    import h5py
    with h5py.File(g, "r") as f, h5py.File(ck / "manifest.h5", "r") as m:
        def old(group, name):
            file = m[f"tensors/{name}"].attrs["file"]
            file = file.decode() if isinstance(file, bytes) else file
            with h5py.File(ck / file, "r") as s:
                return s[f"{group}/{name}"][()]
        for grp in ("params", "adam_m", "adam_v"):
            assert np.array_equal(f[f"{grp}/layers.2.moe.experts.3.w13"][()], old(grp, "layers.2.moe.experts.3.w13"))
            assert np.array_equal(f[f"{grp}/layers.2.moe.router"][:8], old(grp, "layers.2.moe.router"))
        assert np.array_equal(f["params/layers.2.moe.experts.9.w2"][()], old("params", "layers.2.moe.experts.1.w2"))
        assert np.array_equal(f["params/layers.2.moe.router"][9], old("params", "layers.2.moe.router")[1])
        assert not f["adam_m/layers.2.moe.experts.9.w2"][()].any() and not f["adam_v/layers.2.moe.router"][8:].any()
    # Resumed on 2 ranks with ep = 2 (reshard on load): finite losses, the new experts take load.
    out = moe_train(Path(tmp) / "cont", ["moe.experts=12", "train.steps=10", f"checkpoint.resume={g}",
                                         "parallel.ep=2"], 2)
    assert "resumed from" in out and "(step 6)" in out, out[-2000:]
    rows = metric_rows(Path(tmp) / "cont")
    assert [r["step"] for r in rows] == [7, 8, 9, 10] and all(np.isfinite(r["loss"]) for r in rows), rows
    # This tiny model's routing collapses onto a few experts within steps
    # (it does so without growing too), so the new experts' load is summed
    # over the continued steps: a copy ties with its source and shares its picks.
    new = [sum(sum(r["expert_load"][l][8:]) for r in rows) for l in range(3)]
    allp = [sum(sum(r["expert_load"][l]) for r in rows) for l in range(3)]
    print("new experts' share of the picks per MoE layer, steps 7-10:", [round(n / a, 3) for n, a in zip(new, allp)])
    assert all(n > 0 for n in new), [r["expert_load"] for r in rows]
    loads = json.loads(tool("moe-ckpt", "loads", Path(tmp) / "cont", "--json"))
    assert all(len(l["load"]) == 12 for l in loads), loads
    # Growing one layer gives per-layer counts; fresh init; the config says so.
    g1 = Path(tmp) / "g1.h5"
    out = tool("moe-ckpt", "grow", ck, g1, "--layer", "2", "--add", "4", "--init", "fresh", "--seed", "5")
    assert "moe.experts = [8, 12, 8]" in out, out
    out = moe_train(Path(tmp) / "cont1", ["moe.experts=[8, 12, 8]", "train.steps=8", f"checkpoint.resume={g1}"])
    assert "E=[8,12,8]" in out and "step 8/8" in out, out[-2000:]
    # Refusals, exit 2, nothing written.
    for args, want in [((g,), "already exists"), ((Path(tmp) / "x.h5", "--layer", "0"), "--layer 0 is a dense block"),
                       ((Path(tmp) / "x.h5", "--layer", "9"), "--layer 9 is not a block"),
                       ((Path(tmp) / "x.h5", "--layer", "1", "--ep", "8"), "not a multiple of --ep 8"),
                       ((Path(tmp) / "x.h5", "--layer", "1,a"), "expected block numbers")]:
        extra = [] if "--layer" in args else ["--layer", "all"]
        out = tool("moe-ckpt", "grow", ck, *args, *extra, "--add", "4", expect=2)
        assert want in out, out
    assert not (Path(tmp) / "x.h5").exists() and not (Path(tmp) / "x.h5.tmp").exists()


# What is exact after growing with copies. A copied expert with its source's
# router row ties with its source: tokens that picked the source now pick
# both, so the output changes (measured: the logits move by 0.4% to 1.2% of
# their largest magnitude); that is what makes the copies take load, and it is not
# an identity. With the new experts' balancing bias at -1e30 they are never
# chosen: with sigmoid scores (independent per expert) the model is the old
# one bit for bit, whatever the balancing bias. With softmax scores every
# old score shrinks by the larger denominator, so where the balancing bias is
# non-zero the biased choice (score + bias) can change (measured: 1.9e-3 of
# the largest logit after 4 steps with moe.bias_update_rate = 0.01): exact
# only with zero bias and renormalize = true, where the chosen gates
# p_a / (p_a + p_b) are the same numbers mathematically (the larger
# denominator cancels) but rounded differently: a few ulps (2^-24) of
# relative gate error per MoE layer, 3 layers. Measured: 8.6e-8 and 1.3e-7
# of the largest logit (two models); tolerance 1e-6 (about 4 ulps x 3
# layers, 7.7x the larger measurement).
SOFTMAX_GROW_TOL = 1e-6


def test_grow_exact_when_unchosen(tmp):
    for score in ("sigmoid", "softmax"):
        src = Path(tmp) / score
        # softmax: no balancing bias (see above); sigmoid: with it.
        moe_train(src, ["moe.experts=8", f"moe.score={score}", "train.steps=4", "checkpoint.interval=4",
                        f"moe.bias_update_rate={0.01 if score == 'sigmoid' else 0}"])
        ck = latest(src)
        a = logits(ck, tmp)
        z, c = Path(tmp) / f"{score}_z.h5", Path(tmp) / f"{score}_c.h5"
        tool("moe-ckpt", "grow", ck, z, "--layer", "all", "--add", "4", "--new-bias", "-1e30")
        tool("moe-ckpt", "grow", ck, c, "--layer", "all", "--add", "4")
        dz = np.abs(logits(z, tmp) - a).max() / np.abs(a).max()
        dc = np.abs(logits(c, tmp) - a).max() / np.abs(a).max()
        print(f"{score}: unchosen copies {dz:.2e}, chosen copies {dc:.2e} (relative to the largest logit)")
        assert dz == 0 if score == "sigmoid" else dz <= SOFTMAX_GROW_TOL, dz
        assert dc > 100 * SOFTMAX_GROW_TOL, dc  # the test can tell a change


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        globals()[sys.argv[2]](tmp)
    print(f"{sys.argv[2]}: ok")
