#!/usr/bin/env python3
"""moe-eval and moe.eval_capacity_factor as users meet them: the loss of a
checkpoint equals the val_loss moe-train logged at that step; a dropless
evaluation does not depend on how the windows are batched, a capacity one
does; expert loads, JSON, --data, and bad inputs.

usage: test_eval.py BIN_DIR WORK_DIR CASE   (CASE "setup" trains the runs)

setup trains tiny three times, 20 steps each, validating at steps 10 and 20:
  dropless  capacity_factor 0, one process
  cap       capacity_factor 1.0, eval_capacity_factor 1.0 (the old validation), 2 ranks (dp 2, ep 2)
  cap0      capacity_factor 1.0, eval_capacity_factor 0 (the default), 2 ranks
"""
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
# One thread in training (train.threads) and in moe-eval (OMP_NUM_THREADS): both then do the same GEMMs on
# the same thread split, so per-token losses can be compared bit for bit. Setup and cases must also see the
# same OPENBLAS_CORETYPE (another sgemm kernel rounds differently): ctest gives them one environment.
ENV = mpi_env(OMP_NUM_THREADS="1")
STEPS = 20
RUNS = {"dropless": (1, ["moe.capacity_factor=0"]),
        "cap": (2, ["moe.capacity_factor=1.0", "moe.eval_capacity_factor=1.0"]),
        "cap0": (2, ["moe.capacity_factor=1.0", "moe.eval_capacity_factor=0"])}

# Tolerances, relative, on a mean cross-entropy of about 3 over 32 windows x 128 tokens = 4096 tokens.
# ROUNDOFF: the same windows through GEMMs of another shape (another batching, dropless; or 2 ranks' halves
# of a batch) may round the last bit of some per-token FP32 losses differently (2^-24 = 6e-8 relative each,
# of either sign); their mean over 4096 tokens moves by less than one FP32 ulp of it. Measured: 8.6e-10 over
# batches of 16, 8 and 1, 2e-11 between 2 ranks and one; 1e-7 (about 2 ulp, > 100x the measured) bounds it.
ROUNDOFF = 1e-7
# Capacity 1.0 drops a few percent of the picks: the batching changes the loss by 1.2e-4 relative on this
# run (measured); 10x ROUNDOFF separates it from round-off with a margin of 100 on either side.
CAPACITY_EFFECT = 10 * ROUNDOFF


def run(cmd, expect=0, timeout=300, env=ENV):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", env=env,
                       timeout=timeout)
    assert p.returncode == expect, f"{cmd}: exit {p.returncode}, expected {expect}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def run_dir(name):
    return WORK / name


def checkpoint(name, step):
    return run_dir(name) / "checkpoints" / f"step_{step:08d}"


def metrics(name):
    rows = [json.loads(line) for line in (run_dir(name) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in rows if "step" in r and "loss" in r}  # step lines (not the run's events)


def evaluate(ckpt, *args):
    return json.loads(run([BIN / "moe-eval", ckpt, "--json", *args]).stdout)


def rel(a, b):
    return abs(a - b) / abs(b)


def setup():
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    for name, (np, sets) in RUNS.items():
        sets = sets + [f"run.dir={run_dir(name)}", f"train.steps={STEPS}", "train.val_every=10", "train.val_batches=2",
                       "checkpoint.interval=10", "checkpoint.async=false", "train.threads=1", "train.log_every=10"]
        args = [a for s in sets for a in ("--set", s)]
        cmd = [BIN / "moe-train", *args]
        if np > 1:
            cmd = ["mpiexec", "-n", str(np), "--bind-to", "none", *cmd]
        run(cmd, timeout=600)


def test_reproduces_val_loss_dropless():
    # One rank, dropless: the same batches through the same forward in the same order: equal bit for bit.
    m = metrics("dropless")
    for step in (10, 20):
        r = evaluate(checkpoint("dropless", step))
        print(f"dropless step {step}: val_loss {m[step]['val_loss']!r}, moe-eval {r['loss']!r}")
        assert r["loss"] == m[step]["val_loss"], (step, r["loss"], m[step]["val_loss"])
        assert m[step]["val_capacity_factor"] == 0
        assert r["tokens"] == 2 * 16 * 128 and r["batches"] == 2 and r["batch"] == 16
        assert r["step"] == step and r["capacity_factor"] == 0
    # The run directory resolves to its latest checkpoint (step 20).
    assert evaluate(run_dir("dropless"))["loss"] == m[20]["val_loss"]


def test_reproduces_val_loss_two_ranks():
    # Two data-parallel ranks validated on 8 sequences each; moe-eval runs the same 16 as one batch. Dropless
    # (cap0), and with the training capacity (cap: capacity decided over the whole 16-sequence micro-batch in
    # both, the same picks dropped). The GEMMs see 8 x 128 rows there, 16 x 128 here, which may round the last
    # bit of some per-token losses differently (measured: 2e-11 relative in the mean), and the sums are added
    # in another order (4096 * 2^-53 = 5e-13): ROUNDOFF bounds both.
    for name in ("cap0", "cap"):
        m = metrics(name)
        for step in (10, 20):
            r = evaluate(checkpoint(name, step))
            d = rel(r["loss"], m[step]["val_loss"])
            print(f"{name} step {step}: val_loss {m[step]['val_loss']!r}, moe-eval {r['loss']!r}, rel diff {d:.2e}")
            assert d <= ROUNDOFF, (name, step, d)
            assert r["capacity_factor"] == m[step]["val_capacity_factor"] == (1.0 if name == "cap" else 0)


def test_eval_capacity_leaves_training_alone():
    # eval_capacity_factor changes validation only: cap and cap0 train bit-identically, their val_loss differs.
    a, b = metrics("cap"), metrics("cap0")
    assert [a[s]["loss"] for s in sorted(a)] == [b[s]["loss"] for s in sorted(b)]
    d = rel(a[20]["val_loss"], b[20]["val_loss"])
    print(f"step 20 val_loss: old (eval capacity 1.0) {a[20]['val_loss']:.6f}, dropless {b[20]['val_loss']:.6f}, "
          f"rel diff {d:.2e}")
    assert d > CAPACITY_EFFECT, d


def test_dropless_is_independent_of_batching():
    # The same 32 windows as 2 x 16, 4 x 8 and 32 x 1 sequences. Dropless: equal within round-off. With the
    # training capacity 1.0 the batching decides which picks are dropped: the losses differ (the check that
    # this test can fail).
    ck = checkpoint("cap0", 20)
    drop = [evaluate(ck, "--batch", str(b), "--capacity-factor", "0")["loss"] for b in (16, 8, 1)]
    cap = [evaluate(ck, "--batch", str(b), "--capacity-factor", "1")["loss"] for b in (16, 8, 1)]
    d_drop = max(rel(x, drop[0]) for x in drop)
    d_cap = max(rel(x, cap[0]) for x in cap)
    print(f"dropless over batch 16, 8, 1: {drop}, max rel diff {d_drop:.2e}")
    print(f"capacity 1.0 over batch 16, 8, 1: {cap}, max rel diff {d_cap:.2e}")
    assert d_drop <= ROUNDOFF, d_drop
    assert d_cap > CAPACITY_EFFECT, d_cap


def test_loads_and_drops():
    r = evaluate(checkpoint("cap0", 20), "--capacity-factor", "1")
    assert [l["layer"] for l in r["moe_layers"]] == [1, 2, 3]
    for l in r["moe_layers"]:
        assert len(l["load"]) == 8 and all(f >= 0 for f in l["load"])
        assert abs(sum(l["load"]) - 1) <= 1e-12, l  # shares of one integer total: equal to 1 but for rounding
        assert l["picks"] == 2 * 16 * 128 * 2  # tokens x top_k
        assert 0 <= l["dropped"] <= l["picks"] and l["drop_fraction"] == l["dropped"] / l["picks"]
    assert any(l["dropped"] > 0 for l in r["moe_layers"]), r  # capacity 1.0 drops something on tiny
    assert all(l["dropped"] == 0 for l in evaluate(checkpoint("cap0", 20))["moe_layers"])  # dropless
    assert r["tokens_per_second"] > 0 and r["seconds"] > 0
    assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-12)
    # The table: loss, perplexity and one row per MoE layer with 8 loads.
    text = run([BIN / "moe-eval", checkpoint("cap0", 20)]).stdout
    assert "loss " in text and "perplexity" in text and "tokens/s" in text, text
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0] in ("1", "2", "3")]
    assert len(rows) == 3 and all(len(row) == 2 + 8 for row in rows), text


def test_device_emulated():
    # --device cuda on the CUDA device emulated on the CPU (SY_EMULATE_CUDA=guarded: host code cannot touch
    # its memory, its ops refuse host buffers): the weights, bias, activations and MoE rows on the device give
    # the CPU's loss and loads bit for bit, dropless and with capacity dropping.
    for args in ([], ["--capacity-factor", "1"]):
        cpu = evaluate(checkpoint("cap0", 20), *args)
        p = run([BIN / "moe-eval", checkpoint("cap0", 20), "--json", "--device", "cuda", *args],
                env=dict(ENV, SY_EMULATE_CUDA="guarded"))
        dev = json.loads(p.stdout)
        assert dev["device"] == "cuda (emulated on the CPU)" and cpu["device"] == "cpu", (dev["device"], cpu["device"])
        for k in ("loss", "perplexity", "moe_layers", "windows"):
            assert dev[k] == cpu[k], (args, k, dev[k], cpu[k])
    # Without a GPU and without the emulation: bad input naming the device.
    p = run([BIN / "moe-eval", checkpoint("cap0", 20), "--device", "cuda"], expect=2)
    assert "device 'cuda' is not available" in p.stderr, p.stderr


def test_data_files():
    # --data: a text file evaluated whole, windows spread evenly over it; the same bytes as an llm.c shard
    # (format bin) give the same loss.
    src = sorted(Path("/usr/share/games/fortunes").glob("*.u8"))[0]
    text = WORK / "held_out.txt"
    text.write_bytes(src.read_bytes()[:20000])
    shard = WORK / "held_out.bin"
    tokens = list(text.read_bytes())
    shard.write_bytes(struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253)) + struct.pack(f"<{len(tokens)}H", *tokens))
    ck = checkpoint("dropless", 20)
    a = evaluate(ck, "--data", text, "--batches", "3", "--batch", "4")
    b = evaluate(ck, "--data", shard, "--format", "bin", "--batches", "3", "--batch", "4")
    assert a["tokens"] == 3 * 4 * 128 and a["files"] == [str(text)] and a["data"] == "files"
    assert a["loss"] == b["loss"], (a["loss"], b["loss"])
    assert 0 < a["loss"] < math.log(256)


def test_bad_inputs():
    ck = checkpoint("dropless", 20)

    def bad(args, *needles):
        p = run([BIN / "moe-eval", *args], expect=2)
        for n in needles:
            assert n in p.stderr, (args, p.stderr)
        assert p.stdout == "", p.stdout
        assert p.stderr.startswith("moe-eval: bad "), p.stderr

    bad([WORK / "nope"], str(WORK / "nope"))
    bad([ck, "--data", WORK / "missing.txt"], "missing.txt")
    # Token ids past the vocabulary (256): the message names the file.
    wide = WORK / "wide.bin"
    toks = [1] * 300 + [300] + [2] * 100
    wide.write_bytes(struct.pack("<256i", 20240520, 1, len(toks), *([0] * 253)) + struct.pack(f"<{len(toks)}H", *toks))
    bad([ck, "--data", wide, "--format", "bin"], str(wide), "300")
    short = WORK / "short.txt"
    short.write_text("too short")
    bad([ck, "--data", short], "--data", "short.txt")
    bad([ck, "--format", "bin"], "--format")
    bad([ck, "--format", "gguf"], "--format")
    bad([ck, "--batch", "5"], "--batch 5", "--batches")
    bad([ck, "--batch", "0"], "--batch")
    bad([ck, "--capacity-factor", "-1"], "--capacity-factor")
    bad([ck, "--threads", "100000"], "--threads")
    bad([ck, "--bogus"], "--bogus")


if __name__ == "__main__":
    if CASE == "setup":
        setup()
    else:
        globals()[CASE]()
    print(f"{CASE}: ok")
