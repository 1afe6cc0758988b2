#!/usr/bin/env python3
"""Starting from trained weights and chilling parts of a model:
checkpoint.init_from (weights only, any layout, new run at step 0) and
train.lr_groups (per-parameter learning-rate multipliers by name pattern).

usage: test_finetune.py BIN_DIR CASE
"""
import json
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import test_checkpoint as tc  # noqa: E402
from equivalence import Comparison, metric_rows  # noqa: E402

LR, WARMUP, WD = 1e-2, 2, 0.1  # SMALL's train.lr, train.warmup_steps; tiny.toml's weight_decay
LR0 = LR / WARMUP  # lr_at(step 0): the first warm-up step
EXPERTS_0_3 = "layers.*.moe.experts.[0-3].*"


def params(tmp, ckpt, tag, group="params"):
    """{name: float32 array} of a checkpoint's weights (or "adam_m" / "adam_v"; any layout), through
    moe-ckpt consolidate."""
    out = Path(tmp) / f"consolidated_{tag}.h5"
    if not out.exists():
        tc.ckpt("consolidate", ckpt, out)
    with h5py.File(out, "r") as f:
        return {name: np.array(f[group][name]) for name in f[group]}


def first_adam_step(tmp, p0, ckpt1, tag, lr_of):
    """Problems ([] if none) with checkpoint ckpt1 being ONE AdamW step (the first: zero moments,
    step 1) from weights p0, with learning rate lr_of(name) per tensor.

    The gradient g of that step is read back from ckpt1's own first moment (m = (1 - b1) g); then
    (i) v = (1 - b2) g^2, i.e. v = 5 m^2 with b1 = 0.9, b2 = 0.95: moments a first step writes into
    zeros (leaked moments break it); (ii) p1 = p0 (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps)
    with bc1 = 1 - b1, bc2 = 1 - b2 (a step counter or schedule not reset, other weights, another
    learning rate break it). Tolerances: (i) relative 1e-5, m and v are each a couple of FP32
    roundings of g (~3 ulp = 4e-7), 25x; (ii) absolute 1e-6: p1 is rounded in FP32 (|p| <= ~1.2:
    ulp/2 = 6e-8 for the decay product and again for the difference) and the Adam term (<= lr =
    5e-3) carries ~4 FP32 roundings (2.4e-7 relative: 1.2e-9): ~1.3e-7 in all, 7.5x. Measured on
    test_init_from_exact's b2: 3.4e-7 and 6.0e-8; the resumed control fails on 110 tensors."""
    p1 = params(tmp, ckpt1, tag)
    m1, v1 = params(tmp, ckpt1, tag, "adam_m"), params(tmp, ckpt1, tag, "adam_v")
    problems, moved, total = [], 0, 0
    for name, a in p0.items():
        lr = lr_of(name)
        a, b = a.astype(np.float64), p1[name].astype(np.float64)
        m, v = m1[name].astype(np.float64), v1[name].astype(np.float64)
        worst = np.max(np.abs(v - 5 * m * m) / np.maximum(v, 1e-300), initial=0.0)
        if worst > 1e-5:
            problems.append(f"{name}: moments are not a first step's (v vs 5 m^2: relative {worst:.2e})")
        decay = WD if a.ndim >= 2 else 0.0
        want = a * (1 - lr * decay) - lr * (m / 0.1) / (np.sqrt(v / 0.05) + 1e-8)
        err = np.max(np.abs(want - b))
        if err > 1e-6:
            problems.append(f"{name}: {err:.2e} from the first Adam step at lr {lr}")
        total += a.size
        moved += int((a != b).sum())
    if moved < total // 4:
        problems.append(f"only {moved} of {total} elements moved")
    return problems


def start_event(run_dir):
    return json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[0])


# ---------------------------------------------------------------- init_from

def test_init_from_exact(tmp):
    """Weights only, nothing else: (1) from a checkpoint whose weights are the seed's init but
    whose moments, step, schedule, data position are 3 steps on (lr = 0 there), 3 steps equal a
    from-scratch run bitwise (losses and every weight and moment); (2) from trained weights, the
    first step is exactly a first Adam step from those weights, which a resumed run's is not."""
    t = Path(tmp)
    # (1) A: 3 steps that change everything but the weights (lr 0; no balancing bias either, as
    # the bias is model state that init_from takes along).
    tc.moe_train(t / "a", ["train.steps=3", "train.lr=0", "moe.bias_update_rate=0"])
    assert tc.metrics(t / "a")[-1]["grad_norm"] > 0
    b_out = tc.moe_train(t / "b", ["train.steps=3", f"checkpoint.init_from={t / 'a'}"])
    assert "initialised the weights from" in b_out and "step_00000003" in b_out, b_out[-2000:]
    assert "moe.bias_update_rate = 0.0 there, 0.01 here" in b_out, b_out[-2000:]  # (A's differs: said)
    tc.moe_train(t / "c", ["train.steps=3"])
    mb, mc = tc.metrics(t / "b"), tc.metrics(t / "c")
    assert [r["step"] for r in mb] == [1, 2, 3] and mb[0]["lr"] == LR0
    assert [r["loss"] for r in mb] == [r["loss"] for r in mc], ([r["loss"] for r in mb], [r["loss"] for r in mc])
    assert "identical" in tc.ckpt("diff", tc.latest(t / "b"), tc.latest(t / "c"), "--moments")
    # Its own identity, and a record of where it started.
    ev, src = start_event(t / "b"), json.loads(tc.ckpt("info", tc.latest(t / "a"), "--json"))
    assert ev["event"] == "start" and ev["from_step"] == 0 and ev["init_from"]["step"] == 3, ev
    assert ev["init_from"]["run_id"] == src["run_id"] != ev["run_id"], (ev, src["run_id"])
    assert ev["init_from"]["checkpoint"] == str(tc.latest(t / "a")), ev
    b_info = json.loads(tc.ckpt("info", tc.latest(t / "b"), "--json"))
    assert b_info["run_id"] == ev["run_id"] and f"init_from = '{t / 'a'}'" in b_info["config"], b_info["config"]
    # A restarted job resumes its own checkpoint: resume wins over init_from, and says so.
    out = tc.moe_train(t / "b", ["train.steps=4", f"checkpoint.init_from={t / 'a'}"])
    assert "resumed from" in out and "(step 3)" in out and "init_from" in out and "not used" in out, out[-2000:]

    # (2) From trained weights (lr 1e-2, bias balancing on): B2's first step against the
    # weights it started from; the same check on the step a resume takes must fail (a control
    # that shows the check sees leaked moments and steps).
    tc.moe_train(t / "a2", ["train.steps=3"])
    out = tc.moe_train(t / "b2k", ["train.steps=1", "moe.top_k=3", f"checkpoint.init_from={t / 'a2' / 'checkpoints'}"])
    assert "moe.top_k = 2 there, 3 here" in out, out[-2000:]  # same shapes, another model function: said
    tc.moe_train(t / "b2", ["train.steps=1", f"checkpoint.init_from={t / 'a2' / 'checkpoints'}"])
    assert tc.metrics(t / "b2")[0]["lr"] == LR0
    p0 = params(tmp, tc.latest(t / "a2"), "a2")
    problems = first_adam_step(tmp, p0, tc.latest(t / "b2"), "b2", lambda name: LR0)
    assert not problems, problems
    tc.moe_train(t / "a2", ["train.steps=4"])  # resumes a2 at step 3 with its moments
    control = first_adam_step(tmp, p0, tc.latest(t / "a2"), "a2_resumed", lambda name: LR0)
    assert control, "the check cannot tell a resumed step from a fresh first step"
    # The balancing bias comes along (model state the weights were trained with): b2's first
    # step routes like a2's weights with a2's bias, so its loss differs from c's.
    assert tc.metrics(t / "b2")[0]["loss"] != mc[0]["loss"]
    print("init_from_exact: bitwise equal to a from-scratch run; the first step is a first Adam step from the loaded weights; "
          f"control (resumed): {control[0]}")


def test_init_from_layout_change(tmp):
    """Saved by 2 ranks (ep=2, ZeRO-1), initialised into 1 rank, from the directory and from a
    consolidated file: the same first step (bitwise), exactly a first Adam step from the saved weights;
    and into 2 ranks of other layouts (ZeRO-1 over ep=1, pp=2): a first Adam step from them too."""
    t = Path(tmp)
    tc.moe_train(t / "a", ["train.steps=3", "parallel.ep=2", "parallel.zero1=true"], ranks=2)
    one = t / "a.h5"
    tc.ckpt("consolidate", tc.latest(t / "a"), one)
    tc.moe_train(t / "b", ["train.steps=1", f"checkpoint.init_from={tc.latest(t / 'a')}"])
    tc.moe_train(t / "h", ["train.steps=1", f"checkpoint.init_from={one}"])
    assert "identical" in tc.ckpt("diff", tc.latest(t / "b"), tc.latest(t / "h"), "--moments")
    assert tc.metrics(t / "b")[0]["loss"] == tc.metrics(t / "h")[0]["loss"]
    p0 = params(tmp, tc.latest(t / "a"), "a")
    problems = first_adam_step(tmp, p0, tc.latest(t / "b"), "b", lambda name: LR0)
    assert not problems, problems
    # And into 2 ranks of another layout (ep=1, ZeRO-1): the same check.
    tc.moe_train(t / "c", ["train.steps=1", "parallel.ep=1", "parallel.zero1=true",
                           f"checkpoint.init_from={t / 'a'}"], ranks=2)
    problems = first_adam_step(tmp, p0, tc.latest(t / "c"), "c", lambda name: LR0)
    assert not problems, problems
    # And into a pipeline of 2 stages (each reads only its own layers).
    tc.moe_train(t / "d", ["train.steps=1", "parallel.pp=2", "parallel.ep=1", f"checkpoint.init_from={t / 'a'}"],
                 ranks=2)
    problems = first_adam_step(tmp, p0, tc.latest(t / "d"), "d", lambda name: LR0)
    assert not problems, problems


def test_init_from_bad_input(tmp):
    """Exit 2 naming the path or the tensor; nothing is written into the source."""
    t = Path(tmp)
    tc.moe_train(t / "a", ["train.steps=1"])
    src = tc.latest(t / "a")
    before = sorted(p.name for p in src.iterdir())
    cases = [
        (["model.d_model=48"], ["'embed.weight'", "(256, 32)", "(256, 48)", str(src)]),
        (["model.n_layers=4"], ["'layers.3.attn_norm.weight'", "missing"]),
        (["model.n_layers=2"], ["'layers.2.attn_norm.weight'", "does not have"]),
        (["moe.experts=4", "parallel.ep=1"], ["'layers.1.moe.router'", "(8, 32)", "(4, 32)"]),
    ]
    for i, (sets, want) in enumerate(cases):
        out = tc.moe_train(t / f"bad{i}", sets + ["train.steps=1", f"checkpoint.init_from={t / 'a'}"], expect=2)
        for w in want:
            assert w in out, (sets, w, out[-2000:])
        assert "checkpoint.init_from" in out
    missing = t / "no" / "such" / "checkpoint"
    out = tc.moe_train(t / "bad_missing", ["train.steps=1", f"checkpoint.init_from={missing}"], expect=2)
    assert str(missing) in out and "does not exist" in out, out[-2000:]
    out = tc.moe_train(t / "bad_empty", ["train.steps=1", f"checkpoint.init_from={t}"], expect=2)
    assert "holds no checkpoint" in out, out[-2000:]
    assert sorted(p.name for p in src.iterdir()) == before


# ---------------------------------------------------------------- lr_groups

def group(match, scale):
    return f'train.lr_groups=[{{ match = "{match}", scale = {scale} }}]'


# Layouts a group must follow: experts by global index on each rank (ep=2),
# ZeRO-1 shards cutting expert buckets (ep=1, expert-dp 2), pipeline stages.
# The dp layouts sum gradients over 2 ranks in another order than 1 rank:
# their losses are compared within tests/mpi/test_layouts.py's measured
# dropless tolerance (3e-6, 5.7x the 5.2e-7 spread over 12 layouts x seeds;
# its gradient-norm tolerance 1e-2 likewise). pp=2 without tied embeddings
# does the same operations in the same order: bitwise.
TOL_DROPLESS, GRAD_NORM_TOL = 3e-6, 1e-2
LAYOUTS = [("ep2_zero1", 2, ["parallel.ep=2", "parallel.zero1=true"], TOL_DROPLESS),
           ("ep1_zero1", 2, ["parallel.ep=1", "parallel.zero1=true"], TOL_DROPLESS),
           ("pp2", 2, ["parallel.pp=2", "parallel.ep=1"], None)]


def test_lr_groups_freeze_layouts(tmp):
    """scale = 0 on experts 0-3 of every MoE layer: exactly those stay bitwise at their init after 4
    steps, everything else moves, on 1 rank and on each 2-rank layout; the 2-rank losses equal 1 rank's."""
    t = Path(tmp)
    tc.moe_train(t / "init", ["train.steps=1", "train.lr=0"])  # lr 0: the saved weights are the init, bit for bit
    p_init = params(tmp, tc.latest(t / "init"), "init")
    frozen = {n for n in p_init if ".moe.experts." in n and int(n.split(".")[4]) < 4}
    assert len(frozen) == 16, sorted(frozen)  # 2 MoE layers x experts 0-3 x (w13, w2)
    sets = ["train.steps=4", group(EXPERTS_0_3, 0)]
    out = tc.moe_train(t / "one", sets)
    assert f'"{EXPERTS_0_3}" x 0: 16 tensors' in out, out[:3000]
    base = metric_rows(t / "one")
    for name, ranks, extra, tol in [("one", 1, [], None)] + LAYOUTS:
        if ranks > 1:
            tc.moe_train(t / name, sets + extra, ranks)
            c = Comparison(metric_rows(t / name), base, tol, None if tol is None else GRAD_NORM_TOL)
            print(f"{name} against 1 rank: {c.summary()}")
            assert c.ok, c.summary()
        p = params(tmp, tc.latest(t / name), name)
        for n, a in p_init.items():
            if n in frozen:
                assert np.array_equal(p[n], a), f"{name}: frozen {n} moved"
            else:
                assert not np.array_equal(p[n], a), f"{name}: {n} did not move"


def test_lr_groups_scale(tmp):
    """scale = 1 for every parameter is the run without groups, bitwise; a scale multiplies the first
    step exactly (0.5 on every w2, 0.25 on routers, 1 elsewhere), weight decay with it."""
    t = Path(tmp)
    tc.moe_train(t / "none", ["train.steps=3"])
    tc.moe_train(t / "ones", ["train.steps=3", group("**", 1)])
    assert [r["loss"] for r in tc.metrics(t / "none")] == [r["loss"] for r in tc.metrics(t / "ones")]
    assert "identical" in tc.ckpt("diff", tc.latest(t / "none"), tc.latest(t / "ones"), "--moments")
    tc.moe_train(t / "init", ["train.steps=1", "train.lr=0"])
    groups = 'train.lr_groups=[{ match = "**.w2", scale = 0.5 }, { match = "layers.*.moe.router", scale = 0.25 }]'
    tc.moe_train(t / "half", ["train.steps=1", groups])

    def lr_of(name):
        return LR0 * (0.5 if name.endswith(".w2") else 0.25 if name.endswith(".moe.router") else 1.0)
    p0 = params(tmp, tc.latest(t / "init"), "init")
    problems = first_adam_step(tmp, p0, tc.latest(t / "half"), "half", lr_of)
    assert not problems, problems
    # The control: with the scales ignored the check fails.
    assert first_adam_step(tmp, p0, tc.latest(t / "half"), "half", lambda name: LR0)


def test_lr_groups_bad_pattern(tmp):
    """A pattern that matches nothing, one that earlier groups shadow, and malformed ones: exit 2 naming it."""
    t = Path(tmp)
    for sets, want in [
        ([group("layers.*.moe.expert.[0-7].*", 0.1)], ['"layers.*.moe.expert.[0-7].*"', "matches no parameter"]),
        ([group("layers.*.moe.experts.[8-9].*", 0.1)], ["[8-9]", "matches no parameter"]),
        (['train.lr_groups=[{ match = "**", scale = 1 }, { match = "embed.weight", scale = 0 }]'],
         ["lr_groups[1]", "embed.weight", "earlier groups"]),
        ([group("layers.[7-0].attn.wo", 1)], ["[7-0]", "empty range"]),
        ([group("layers.1x[0-3].w2", 1)], ["[0-3]", "whole component"]),
        ([group("layers.[a-b].w2", 1)], ["[a-b]", "integer"]),
        (['train.lr_groups=[{ match = "**", scale = -1 }]'], ["lr_groups[0].scale", "out of range"]),
        (['train.lr_groups=[{ match = "**", lr = 1 }]'], ["unknown key 'lr'"]),
    ]:
        out = tc.moe_train(t / "bad", sets + ["train.steps=1"], expect=2)
        for w in want:
            assert w in out, (sets, w, out[-2000:])


if __name__ == "__main__":
    tc.BIN = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        globals()[sys.argv[2]](tmp)
    print(f"{sys.argv[2]}: ok")
