#!/usr/bin/env python3
"""End-to-end tests of moe-train as a user runs it.

usage: test_cli.py BUILD_BIN_DIR CASE      (CASE = one of the test_* names below)
Each case runs the real binary in a temporary directory and checks its exit
code, its message and what it wrote.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BIN = Path(sys.argv[1])
TRAIN = BIN / "moe-train"
# A model small enough that a few steps take a second.
SMALL = ["--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
         "--set", "model.n_kv_heads=1", "--set", "model.seq_len=32", "--set", "moe.experts=4",
         "--set", "moe.expert_hidden=32", "--set", "model.dense_hidden=64", "--set", "train.global_batch=4",
         "--set", "train.val_every=0", "--set", "train.log_every=1"]


def run(args, cwd, expect_rc, *needles):
    p = subprocess.run([str(TRAIN)] + args, cwd=cwd, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == expect_rc, f"exit {p.returncode}, expected {expect_rc}; output:\n{out}"
    for n in needles:
        assert n in out, f"expected {n!r} in output:\n{out}"
    return out


def write_config(d, text, name="c.toml"):
    path = Path(d) / name
    path.write_text(text)
    return str(path)


def write_shard(path, tokens, magic=20240520, version=1, count=None):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [magic, version, len(tokens) if count is None else count]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def step_rows(run_dir):
    """metrics.jsonl's per-step rows: those with a loss (event lines such as a start marker are skipped)."""
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in rows if isinstance(r, dict) and "loss" in r]


def losses(run_dir):
    return [r["loss"] for r in step_rows(run_dir)]


# ---------------------------------------------------------------- bad input

def test_unknown_key(d):
    c = write_config(d, "[moe]\nexperts = 4\ntopk = 2\n")
    run([c], d, 2, f"{c}:3", "unknown key 'moe.topk'", "did you mean 'moe.top_k'")


def test_unknown_section(d):
    c = write_config(d, "[trian]\nsteps = 3\n")
    run([c], d, 2, "unknown section [trian]", "did you mean '[train]'")


def test_wrong_type(d):
    c = write_config(d, '[model]\nd_model = "wide"\n')
    run([c], d, 2, f"{c}:2", "model.d_model must be an integer, got 'wide' (a string)")


def test_out_of_range(d):
    c = write_config(d, "[train]\nlr = -1.0\n")
    run([c], d, 2, "train.lr = -1 is out of range")


def test_bad_enum(d):
    run(["--set", "moe.score=relu"], d, 2, 'moe.score = "relu" is not one of "softmax", "sigmoid"')


def test_bad_override(d):
    run(["--set", "train.steps"], d, 2, "--set train.steps", "expected section.key=value")
    run(["--set", "train.stepz=3"], d, 2, "unknown key 'train.stepz'", "did you mean 'train.steps'")


def test_cross_key(d):
    run(["--set", "model.n_kv_heads=3"], d, 2, "model.n_kv_heads = 3 must divide model.n_heads = 4")
    run(["--set", "moe.top_k=9"], d, 2, "moe.top_k = 9 exceeds moe.experts = 8")


def test_toml_syntax(d):
    c = write_config(d, "[train\nsteps = 3\n")
    run([c], d, 2, f"{c}:1", "TOML syntax error")


def test_missing_config(d):
    run(["nope.toml"], d, 2, "cannot read config file 'nope.toml'")


def test_missing_data(d):
    run(SMALL + ["--set", 'data.train="/nonexistent/*.txt"'], d, 2, "data.train: no file matches '/nonexistent/*.txt'")


def test_empty_data(d):
    (Path(d) / "empty.txt").write_text("")
    run(SMALL + ["--set", "data.train=empty.txt"], d, 2, "data file 'empty.txt' is empty")


def test_data_too_short(d):
    (Path(d) / "short.txt").write_text("hello")
    run(SMALL + ["--set", "data.train=short.txt"], d, 2, "has no file with at least model.seq_len + 1 = 33 tokens")


def test_bad_shard_magic(d):
    write_shard(Path(d) / "bad.bin", [1, 2, 3] * 100, magic=1234)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=bad.bin"], d, 2,
        "data shard 'bad.bin': bad magic 1234")


def test_bad_shard_version(d):
    write_shard(Path(d) / "v7.bin", [1, 2, 3] * 100, version=7)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=v7.bin"], d, 2, "header version 7 is not supported")


def test_truncated_shard(d):
    write_shard(Path(d) / "cut.bin", [1, 2, 3] * 100, count=1000)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=cut.bin"], d, 2,
        "header says 1000 tokens", "truncated?")


def test_vocab_mismatch(d):
    write_shard(Path(d) / "big.bin", [5] * 200 + [300] + [5] * 200)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=big.bin", "--set", "train.steps=50"], d, 2,
        "data file 'big.bin': token 300", "outside the vocabulary (model.vocab_size = 256)")
    run(SMALL + ["--set", "model.vocab_size=100"], d, 2, 'data.format = "text" has byte tokens 0..255')


def test_wrong_world_size(d):
    run(SMALL + ["--set", "parallel.dp=2"], d, 2, "parallel.pp x parallel.dp = 1 x 2 = 2 ranks, but the job has 1 rank")


# ---------------------------------------------------------------- good runs

def test_metrics_and_log(d):
    out = run(SMALL + ["--set", "train.steps=4", "--set", "train.val_every=2", "--set", "run.dir=r"], d, 0,
              "step 1/4 | loss ", "tok/s", "GFLOP/s", "| imb ", "| drop ", "| eta ", "| val ")
    rows = step_rows(Path(d) / "r")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for k in ("loss", "lr", "grad_norm", "tokens_per_s", "expert_load", "dropped_frac", "gflops"):
            assert k in r, (k, r)
        assert len(r["expert_load"]) == 1 and len(r["expert_load"][0]) == 4  # 1 MoE layer, 4 experts
        assert sum(r["expert_load"][0]) == 2 * 4 * 32  # top-2 of B*T tokens
    assert "val_loss" in rows[1] and "val_loss" in rows[3] and "val_loss" not in rows[0]
    resolved = (Path(d) / "r" / "config.toml").read_text()
    assert "d_model = 32" in resolved


def test_same_seed_same_bits(d):
    # The same thread count on both runs (OpenBLAS's rounding can depend on it), set explicitly.
    common = SMALL + ["--set", "train.steps=6", "--set", "moe.capacity_factor=1.0", "--set", "train.threads=2"]
    run(common + ["--set", "run.dir=a"], d, 0)
    run(common + ["--set", "run.dir=b"], d, 0)
    run(common + ["--set", "run.dir=c", "--set", "train.seed=7"], d, 0)
    a, b, c = losses(Path(d) / "a"), losses(Path(d) / "b"), losses(Path(d) / "c")
    assert a == b, (a, b)
    assert a != c


def test_bin_shards_train_and_validate(d):
    rng = np.random.default_rng(0)
    # A learnable stream: token i+1 = (token i * 3 + 1) mod 500, with 10% noise.
    toks = [1]
    for _ in range(20000):
        toks.append(int(rng.integers(0, 500)) if rng.random() < 0.1 else (toks[-1] * 3 + 1) % 500)
    write_shard(Path(d) / "train_000.bin", toks[:15000])
    write_shard(Path(d) / "train_001.bin", toks[15000:18000])
    write_shard(Path(d) / "val_000.bin", toks[18000:])
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=train_*.bin", "--set", "data.val=val_*.bin",
                 "--set", "model.vocab_size=512", "--set", "train.steps=60", "--set", "train.val_every=60",
                 "--set", "train.lr=1e-2", "--set", "run.dir=r"], d, 0, "18000 tokens in 2 files", "val 2001 tokens in 1 file")
    rows = step_rows(Path(d) / "r")
    assert rows[-1]["val_loss"] < 0.6 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["val_loss"])


def test_print_config_round_trips(d):
    out = run(["--print-config", "--set", "moe.score=sigmoid", "--set", "run.name=x y"], d, 0, 'score = "sigmoid"')
    c = write_config(d, out)
    again = run([c, "--print-config"], d, 0)
    assert again == out


def test_help_config_lists_keys(d):
    run(["--help-config"], d, 0, "moe.capacity_factor", "train.grad_accum", "data.format")


def test_default_run_learns(d):
    # The main job as the quickstart runs it: the built-in tiny config, 300 steps.
    out = run(["--set", "run.dir=r"], d, 0, "step 300/300")
    rows = step_rows(Path(d) / "r")
    first, last = rows[0]["loss"], rows[-1]
    print(f"loss {first:.3f} -> {last['loss']:.3f}, val {last['val_loss']:.3f}, "
          f"{sum(r['step_seconds'] for r in rows):.1f} s of steps")
    assert first > 5.0 and last["val_loss"] < 2.6, out[-2000:]


if __name__ == "__main__":
    case = sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        globals()[case](d)
    print(f"{case}: ok")
