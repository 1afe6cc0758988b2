#!/usr/bin/env python3
"""FP8 recipes train like FP32: the tiny model (sequences of 64) for 100 steps with each
precision.recipe ends near the FP32 run's loss, on one rank and with expert
parallelism on two; the step log and metrics report amax and saturation per
FP8 tensor group. BF16 AdamW moments likewise. Resumes are bit-identical.

usage: test_recipes.py BIN_DIR WORK_DIR CASE    (CASE "fp32" runs the baseline)

Every run has train.threads = 1 (the thread count alone moved the two-rank
block-wise run by 1.64% on Zen 3: OpenBLAS's Haswell/Zen sgemm rounds
differently on 1 and 2 threads, and 100 steps of training amplify it).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

ENV = mpi_env()
THREADS = 1
STEPS = 100
SETS = ["model.seq_len=64", f"train.steps={STEPS}", "train.log_every=10", "train.val_every=100",
        "checkpoint.resume=none", f"train.threads={THREADS}"]

# The convergence cases: name -> (recipe, ranks, extra settings, limit). The
# limit bounds |relative difference| of the mean of the last 10 training
# losses and of the final validation loss against the FP32 run's (same seed,
# threads and kernels). Limits come from bench/fp8_tolerance_spread.py, which
# runs each case and FP32 over seeds {1337 (the test's), 1, 2} x train.threads
# {1, 2} x OpenBLAS kernels {default (SkylakeX re-exec), Haswell, Sandybridge}
# (18 settings; measured on an AVX-512 AMD EPYC, where "default" is SkylakeX).
# Measured relative differences, min .. max over the 18 settings (negative:
# below FP32), in %:
#   case          train loss         validation loss    max |d|   limit
#   current       -0.423 .. +1.567   -0.582 .. +1.472   1.567     2.4
#   delayed       -0.593 .. +1.172   -0.447 .. +1.350   1.350     2.1
#   block         -0.356 .. +1.911   -0.745 .. +1.707   1.911     2.9
#   block_ep2     -1.227 .. +0.945   -1.226 .. +0.989   1.227     1.9
#   bf16_moments  -0.682 .. +0.569   -0.723 .. +0.423   0.723     1.1
# (FP32 itself moves by up to 0.34% between 1 and 2 threads.) The earlier 1%
# limits of block and block_ep2 were tuned to one machine: block_ep2 on
# Haswell kernels with this test's own seed and thread count is -1.23%.
# Each limit is the largest |difference| measured for that case (train or
# validation) times 1.5, rounded up to 0.1%: room for seeds and CPUs not
# measured; a recipe that trains worse than FP32 by more than this spread
# (a broken scale, a lost amax history) fails.
LIMIT_CURRENT, LIMIT_DELAYED, LIMIT_BLOCK, LIMIT_BLOCK_EP2, LIMIT_BF16 = 0.024, 0.021, 0.029, 0.019, 0.011
# precision.recipe = "bf16" (BF16 GEMM operands, FP32 accumulation), measured
# by the same script over seeds {1337, 1, 2} x threads {1, 2} x kernels
# {default (SkylakeX), Haswell} (12 settings, AVX-512 machine): train
# -0.425 .. +0.802 %, validation -0.518 .. +0.519 %; limit 1.5 x 0.802 -> 1.3%.
LIMIT_BF16_RECIPE = 0.013
CASES = {
    "current": ("fp8-tensor-current", 1, [], LIMIT_CURRENT),
    "delayed": ("fp8-tensor-delayed", 1, [], LIMIT_DELAYED),
    "block": ("fp8-block", 1, [], LIMIT_BLOCK),
    # Two ranks, experts split over them; gradients in E4M3, power-of-two scales.
    "block_ep2": ("fp8-block", 2, ["parallel.ep=2", "precision.grad_format=e4m3", "precision.pow2_scales=true"],
                  LIMIT_BLOCK_EP2),
    # AdamW moments in BF16 (FP32 master weights), FP32 recipe.
    "bf16_moments": ("fp32", 1, ["precision.moments=bf16"], LIMIT_BF16),
    # BF16 GEMM operands, FP32 accumulation and master weights (Megatron's mixed precision).
    "bf16": ("bf16", 1, [], LIMIT_BF16_RECIPE),
}


def loss_rows(run_dir):
    """metrics.jsonl's per-step rows (those with a loss; event lines are skipped)."""
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in rows if isinstance(r, dict) and "loss" in r]


def train(name, recipe, ranks=1, extra=(), steps=STEPS, rows_expected=None, work=None, bin_dir=None, env=None):
    work, bin_dir = work or WORK, bin_dir or BIN
    run = work / name
    shutil.rmtree(run, ignore_errors=True)  # a fresh run dir: nothing of an earlier run is resumed or kept
    args = [a for s in SETS + [f"run.dir={run}", f"precision.recipe={recipe}", f"train.steps={steps}", *extra]
            for a in ("--set", s)]
    cmd = [str(bin_dir / "moe-train"), *args]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), "--bind-to", "none"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       env=dict(env or ENV, OMP_NUM_THREADS=str(THREADS), OMP_WAIT_POLICY="passive"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = loss_rows(run)
    assert len(rows) == (rows_expected or steps), (len(rows), rows_expected or steps)
    return rows, p.stdout


def final(rows):
    last = [r["loss"] for r in rows[-10:]]
    return sum(last) / len(last), rows[-1]["val_loss"]


def check_loss(rows, limit):
    """Mean of the last 10 training losses and the final validation loss within `limit` of the FP32 run's."""
    base = json.loads((WORK / "fp32.json").read_text())
    loss, val = final(rows)
    for what, got, want in (("train loss (mean of the last 10 steps)", loss, base["loss"]),
                            ("validation loss", val, base["val"])):
        rel = abs(got - want) / want
        print(f"{what}: {got:.4f} vs FP32 {want:.4f} ({100 * rel:.2f}%, limit {100 * limit:.1f}%)")
        assert rel <= limit, f"{what} {got:.4f} is {100 * rel:.2f}% from FP32's {want:.4f} (limit {100 * limit}%)"


def check(rows, out, limit):
    check_loss(rows, limit)
    # amax and saturation per group in metrics and the log line.
    groups = rows[-1]["fp8"]
    assert set(groups) == {"attn_qkv", "attn_out", "mlp", "experts", "shared"}, groups
    for g, st in groups.items():
        assert st["amax_act"] > 0 and st["amax_weight"] > 0 and st["amax_grad"] > 0, (g, st)
        assert st["saturated"] >= 0
    assert "| fp8 amax act" in out and " sat " in out, out[-1000:]


def fp32():
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rows, out = train("fp32", "fp32")
    assert "fp8" not in rows[-1] and "| fp8" not in out
    loss, val = final(rows)
    (WORK / "fp32.json").write_text(json.dumps({"loss": loss, "val": val}))


def convergence(case):
    recipe, ranks, extra, limit = CASES[case]
    rows, out = train(case, recipe, ranks=ranks, extra=extra)
    if recipe in ("fp32", "bf16"):
        check_loss(rows, limit)
        assert "fp8" not in rows[-1] and "| fp8" not in out, "no FP8 statistics without an FP8 recipe"
    else:
        check(rows, out, limit)


def test_bf16_recipe():
    convergence("bf16")


def test_fp8_tensor_current():
    convergence("current")


def test_fp8_tensor_delayed():
    convergence("delayed")


def test_fp8_block():
    convergence("block")


def test_fp8_block_expert_parallel_e4m3_grads_pow2():
    convergence("block_ep2")


def test_fp8_activations_same_losses_less_memory():
    # Inputs of FP8 linears kept in FP8 for backward: the weight-gradient GEMM
    # reads the same operand, so every step's loss is bit-identical to keeping
    # FP32 copies; the activation memory held is smaller. Two EP ranks, MPI
    # dispatch in overlapped chunks, and shared memory.
    for transport in ("mpi", "shm"):
        runs = {}
        for keep in ("true", "false"):
            extra = ["parallel.ep=2", f"parallel.transport={transport}", "parallel.overlap=true",
                     f"precision.fp8_activations={keep}"]
            runs[keep], _ = train(f"acts_{transport}_{keep}", "fp8-block", ranks=2, extra=extra, steps=12)
        fp8, f32 = runs["true"], runs["false"]
        assert [r["loss"] for r in fp8] == [r["loss"] for r in f32], (transport, fp8[-1]["loss"], f32[-1]["loss"])
        a, b = fp8[-1]["activation_mib"], f32[-1]["activation_mib"]
        print(f"{transport}: activations {a['total']:.2f} MiB with FP8 storage ({a['fp8']:.2f} of it FP8) "
              f"vs {b['total']:.2f} MiB")
        assert b["fp8"] == 0 and a["fp8"] > 0
        assert a["arena"] < b["arena"] and a["expert_rows"] < b["expert_rows"], (a, b)
        assert a["total"] < 0.92 * b["total"], (a, b)


def test_fp8_delayed_resume_exact():
    # Delayed scaling's amax histories are training state: reduced over the
    # ranks (every rank keeps the same), saved in the checkpoint and restored,
    # so a run resumed at step 12 continues with bit-identical losses.
    extra = ["parallel.ep=2", "precision.amax_history=8", "checkpoint.interval=12", "checkpoint.async=false"]
    full, _ = train("delayed_full", "fp8-tensor-delayed", ranks=2, extra=extra, steps=24)
    ckpt = WORK / "delayed_full" / "checkpoints" / "step_00000012"
    import h5py
    with h5py.File(ckpt / "manifest.h5") as f:
        h = f["fp8_amax_history"]
        assert h.shape[1:] == (3, 8) and h.shape[0] == len(f["tensors"]), h.shape
        assert (h[...] > 0).any() and (h[...] >= 0).all()
    info = subprocess.run([str(BIN / "moe-ckpt"), "info", str(ckpt)], capture_output=True, text=True)
    assert info.returncode == 0 and "amax histories" in info.stdout and "x 8 steps" in info.stdout, info.stdout
    resumed, out = train("delayed_resumed", "fp8-tensor-delayed", ranks=2, steps=24, rows_expected=12,
                         extra=extra[:-2] + [f"checkpoint.resume={ckpt}"])
    assert "resumed from" in out and "no amax histories" not in out, out[-2000:]
    want = [r["loss"] for r in full[12:]]
    got = [r["loss"] for r in resumed[-12:]]
    assert got == want, f"resumed losses differ from step 13 on:\n{got}\n{want}"


def test_bf16_moments():
    # AdamW moments in BF16 (FP32 master weights): trains like FP32 moments
    # (within LIMIT_BF16), and checkpoints hold them exactly, so a resumed run
    # is bit-identical, with the optimizer replicated and with ZeRO-1.
    convergence("bf16_moments")
    for zero1 in ("false", "true"):
        extra = ["parallel.ep=2", f"parallel.zero1={zero1}", "precision.moments=bf16", "checkpoint.interval=12",
                 "checkpoint.async=false"]
        full, _ = train(f"bf16_full_{zero1}", "fp8-block", ranks=2, extra=extra, steps=24)
        ckpt = WORK / f"bf16_full_{zero1}" / "checkpoints" / "step_00000012"
        resumed, out = train(f"bf16_resumed_{zero1}", "fp8-block", ranks=2, steps=24, rows_expected=12,
                             extra=extra[:-2] + [f"checkpoint.resume={ckpt}"])
        assert [r["loss"] for r in resumed[-12:]] == [r["loss"] for r in full[12:]], f"zero1={zero1}"


if __name__ == "__main__":
    BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3]
    globals()[CASE]()
    print(f"{CASE}: ok")
