#!/usr/bin/env python3
"""FP8 recipes train like FP32: the tiny model (sequences of 64) for 100 steps with each
precision.recipe ends within 2% of the FP32 run's loss (block-wise within
1%), on one rank and with expert parallelism on two; the step log and
metrics report amax and saturation per FP8 tensor group.

usage: test_recipes.py BIN_DIR WORK_DIR CASE    (CASE "fp32" runs the baseline)
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
STEPS = 100
SETS = ["model.seq_len=64", f"train.steps={STEPS}", "train.log_every=10", "train.val_every=100", "checkpoint.resume=none"]


def train(name, recipe, ranks=1, extra=(), steps=STEPS, rows_expected=None):
    run = WORK / name
    shutil.rmtree(run, ignore_errors=True)
    args = [a for s in SETS + [f"run.dir={run}", f"precision.recipe={recipe}", f"train.steps={steps}", *extra]
            for a in ("--set", s)]
    cmd = [str(BIN / "moe-train"), *args]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), "--bind-to", "none"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       env=dict(ENV, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
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
        print(f"{what}: {got:.4f} vs FP32 {want:.4f} ({100 * rel:.2f}%, limit {100 * limit:.0f}%)")
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


def test_fp8_tensor_current():
    check(*train("current", "fp8-tensor-current"), 0.02)


def test_fp8_tensor_delayed():
    check(*train("delayed", "fp8-tensor-delayed"), 0.02)


def test_fp8_block():
    check(*train("block", "fp8-block"), 0.01)


def test_fp8_block_expert_parallel_e4m3_grads_pow2():
    # Two ranks, experts split over them; gradients in E4M3, power-of-two scales.
    rows, out = train("block_ep2", "fp8-block", ranks=2,
                      extra=["parallel.ep=2", "precision.grad_format=e4m3", "precision.pow2_scales=true"])
    check(rows, out, 0.01)


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
    # (within 1%), and checkpoints hold them exactly, so a resumed run is
    # bit-identical, with the optimizer replicated and with ZeRO-1.
    check_loss(train("bf16_moments", "fp32", extra=["precision.moments=bf16"])[0], 0.01)
    for zero1 in ("false", "true"):
        extra = ["parallel.ep=2", f"parallel.zero1={zero1}", "precision.moments=bf16", "checkpoint.interval=12",
                 "checkpoint.async=false"]
        full, _ = train(f"bf16_full_{zero1}", "fp8-block", ranks=2, extra=extra, steps=24)
        ckpt = WORK / f"bf16_full_{zero1}" / "checkpoints" / "step_00000012"
        resumed, out = train(f"bf16_resumed_{zero1}", "fp8-block", ranks=2, steps=24, rows_expected=12,
                             extra=extra[:-2] + [f"checkpoint.resume={ckpt}"])
        assert [r["loss"] for r in resumed[-12:]] == [r["loss"] for r in full[12:]], f"zero1={zero1}"


if __name__ == "__main__":
    globals()[CASE]()
    print(f"{CASE}: ok")
