#!/usr/bin/env python3
"""Checkpoints never lose a run's work: run identity, retention that only
touches this run, fallback that stays within it, a damaged `latest`, sealed
metadata (a flipped bit anywhere is named), shards tied to their manifest,
appended metrics, the default run's final checkpoint, a full disk, and one
job per checkpoint directory.

usage: test_ownership.py BIN_DIR CASE
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

BIN = Path(sys.argv[1])
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
SMALL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=32",
         "model.dense_hidden=64", "moe.experts=8", "moe.expert_hidden=24", "moe.shared_experts=1",
         "moe.bias_update_rate=0.01", "train.global_batch=8", "train.micro_batch=0", "train.val_every=0",
         "train.log_every=1", "train.warmup_steps=2", "train.lr=1e-2", "train.threads=1"]


def moe_train(run_dir, sets, expect=0, extra_env=None):
    args = [a for s in SMALL + [f"run.dir={run_dir}"] + sets for a in ("--set", s)]
    p = subprocess.run([str(BIN / "moe-train"), *args], capture_output=True, text=True, errors="replace",
                       env=dict(ENV, **(extra_env or {})), timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == expect, f"exit {p.returncode}, expected {expect}:\n{out[-3000:]}"
    return out


def tool(name, *args, expect=0):
    p = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, errors="replace",
                       timeout=300)
    assert p.returncode == expect, f"{name} {args}: exit {p.returncode}, expected {expect}:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def lines(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def steps_of(run_dir):
    return [r["step"] for r in lines(run_dir) if "loss" in r]


def ckdirs(run_dir):
    d = Path(run_dir) / "checkpoints"
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.exists() else []


def latest(run_dir):
    return (Path(run_dir) / "checkpoints" / "latest").read_text().strip()


def run_id(ckpt):
    with h5py.File(Path(ckpt) / "manifest.h5", "r") as m:
        v = m.attrs["run_id"]  # fixed-length UTF-8: h5py gives bytes
        return v.decode() if isinstance(v, bytes) else v


def flip_bit(path, offset, bit=2):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ (1 << bit)]))


def flip_in(path, needle, nth=0):
    """Flips a bit inside the nth occurrence of `needle` (a name or a value's bytes) in the raw file."""
    raw = Path(path).read_bytes()
    at = -1
    for _ in range(nth + 1):
        at = raw.index(needle, at + 1)
    flip_bit(path, at + len(needle) // 2)


def other_run(tmp, interval=2, total=6):
    """Checkpoints of another run of the same model (its own identity), every `interval` steps."""
    run = Path(tmp) / "other"
    moe_train(run, [f"train.steps={total}", f"checkpoint.interval={interval}", "checkpoint.keep=10",
                    "train.seed=99"])
    assert ckdirs(run) == [f"step_{s:08d}" for s in range(interval, total + 1, interval)], ckdirs(run)
    return run


# ---------------------------------------------------------------- ownership

def test_scratch_start_over_another_run_is_refused(tmp):
    # The reproduction: another run's checkpoints copied into a run dir,
    # then a run from scratch with retention: it must neither delete them nor
    # point `latest` at them; it refuses, and says how to proceed.
    other = other_run(tmp)
    run = Path(tmp) / "run"
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    before = ckdirs(run)
    out = moe_train(run, ["train.steps=6", "checkpoint.interval=2", "checkpoint.resume=none"], expect=2)
    assert "refusing to start from scratch" in out and "checkpoint.overwrite" in out and "run.dir" in out, out[-2000:]
    assert ckdirs(run) == before and latest(run) == "step_00000006", (ckdirs(run), latest(run))
    # overwrite: the run starts; the other run's checkpoints go only after this run's first commit.
    out = moe_train(run, ["train.steps=6", "checkpoint.interval=2", "checkpoint.resume=none",
                          "checkpoint.overwrite=true", "checkpoint.keep=3"])
    assert "deleted" in out, out[-2000:]
    mine = {run_id(run / "checkpoints" / d) for d in ckdirs(run)}
    assert len(mine) == 1 and run_id(other / "checkpoints" / "step_00000006") not in mine, mine
    assert ckdirs(run) == ["step_00000002", "step_00000004", "step_00000006"] and latest(run) == "step_00000006"


def test_retention_and_fallback_stay_within_the_run(tmp):
    other = other_run(tmp, 7, 21)
    run = Path(tmp) / "run"
    moe_train(run, ["train.steps=4", "checkpoint.interval=2", "checkpoint.keep=1"])
    mine = run_id(run / "checkpoints" / "step_00000004")
    # Another run's checkpoints, one with a higher step, land in this run's directory.
    for d in ("step_00000007", "step_00000014"):
        shutil.copytree(other / "checkpoints" / d, run / "checkpoints" / d)
    # Resuming continues this run (latest), keeps 1 of its own, never touches the others.
    out = moe_train(run, ["train.steps=10", "checkpoint.interval=2", "checkpoint.keep=1"])
    assert "resumed from" in out and "(step 4)" in out, out[-2000:]
    assert ckdirs(run) == ["step_00000007", "step_00000010", "step_00000014"], ckdirs(run)
    assert run_id(run / "checkpoints" / "step_00000010") == mine and latest(run) == "step_00000010"
    for d in ("step_00000007", "step_00000014"):
        assert run_id(run / "checkpoints" / d) != mine
    # This run's only checkpoint is damaged: fallback must not cross into the other run's.
    shard = sorted((run / "checkpoints" / "step_00000010").glob("shard_*.h5"))[0]
    flip_in(shard, b"params")
    out = moe_train(run, ["train.steps=12", "checkpoint.interval=2", "checkpoint.keep=1",
                          "checkpoint.fallback=true"], expect=2)
    assert "no intact checkpoint of this run is left" in out and "resumed from" not in out, out[-2000:]
    assert ckdirs(run) == ["step_00000007", "step_00000010", "step_00000014"], ckdirs(run)
    # Saving onto a step directory of another run is refused, not overwritten.
    shutil.rmtree(run / "checkpoints" / "step_00000010")
    out = moe_train(Path(tmp) / "fresh", ["train.steps=2", "checkpoint.interval=2"])
    shutil.copytree(other / "checkpoints" / "step_00000007", Path(tmp) / "fresh" / "checkpoints" / "step_00000004")
    out = moe_train(Path(tmp) / "fresh", ["train.steps=4", "checkpoint.interval=2"], expect=1)
    assert "holds a checkpoint of another run" in out, out[-1500:]
    assert run_id(Path(tmp) / "fresh" / "checkpoints" / "step_00000004") == run_id(other / "checkpoints" /
                                                                                     "step_00000007")


def test_fallback_picks_this_runs_older_checkpoint(tmp):
    other = other_run(tmp, 7, 14)
    run = Path(tmp) / "run"
    moe_train(run, ["train.steps=4", "checkpoint.interval=2", "checkpoint.keep=5"])
    shutil.copytree(other / "checkpoints" / "step_00000014", run / "checkpoints" / "step_00000014")
    flip_in(run / "checkpoints" / "step_00000004" / "manifest.h5", b"expert_bias")
    out = moe_train(run, ["train.steps=6", "checkpoint.interval=2", "checkpoint.keep=5"], expect=2)
    assert "expert_bias" in out and "checkpoint.fallback = true" in out, out[-2000:]
    out = moe_train(run, ["train.steps=6", "checkpoint.interval=2", "checkpoint.keep=5", "checkpoint.fallback=true"])
    assert "falling back" in out and "(step 2)" in out, out[-2000:]
    # step 4 (damaged) was re-saved in place: intact now, of this run.
    assert "OK" in tool("moe-ckpt", "verify", run / "checkpoints" / "step_00000004")
    assert run_id(run / "checkpoints" / "step_00000004") == run_id(run / "checkpoints" / "step_00000002")
    assert run_id(run / "checkpoints" / "step_00000014") != run_id(run / "checkpoints" / "step_00000002")
    assert latest(run) == "step_00000006" and "OK" in tool("moe-ckpt", "verify", run / "checkpoints" / "step_00000006")


def test_damaged_latest(tmp):
    base = Path(tmp) / "base"
    moe_train(base, ["train.steps=4", "checkpoint.interval=2"])
    cases = {"empty": b"", "whitespace": b"  \n\t\n", "garbage": b"\x00\xffstep", "outside": b"../../x\n",
             "absolute": b"/etc\n", "dangling": b"step_00000008\n", "deleted": None, "directory": "dir"}
    for name, content in cases.items():
        run = Path(tmp) / name
        shutil.copytree(base, run)
        lf = run / "checkpoints" / "latest"
        lf.unlink()
        if content == "dir":
            lf.mkdir()
        elif content is not None:
            lf.write_bytes(content)
        out = moe_train(run, ["train.steps=6", "checkpoint.interval=2"], expect=2)
        assert ("latest" in out and "not starting from scratch" in out and "checkpoint.fallback" in out), \
            (name, out[-1500:])
        if name in ("outside", "absolute"):
            assert "outside the checkpoint directory" in out, (name, out[-1500:])
        assert steps_of(run) == [1, 2, 3, 4], (name, steps_of(run))  # nothing retrained, nothing overwritten
        out = moe_train(run, ["train.steps=6", "checkpoint.interval=2", "checkpoint.fallback=true"])
        assert "(step 4)" in out, (name, out[-1500:])
        assert latest(run) == "step_00000006", name
    # The tools say the same about a damaged latest.
    run = Path(tmp) / "empty"
    (run / "checkpoints" / "latest").write_text("")
    out = tool("moe-generate", run, "--prompt", "a", "--max-new", "2", expect=2)
    assert "latest" in out and "is empty" in out and "step_00000006" in out, out


# ---------------------------------------------------------------- sealed metadata

def test_every_manifest_item_is_checksummed(tmp):
    run = Path(tmp) / "run"
    moe_train(run, ["train.steps=4", "checkpoint.interval=2", "precision.recipe=fp8-tensor-delayed",
                    "precision.amax_history=3"])
    ck = run / "checkpoints" / "step_00000004"
    man = ck / "manifest.h5"
    with h5py.File(man, "r") as m:
        bias_at = m["expert_bias"].id.get_offset()
        load_at = m["expert_load"].id.get_offset()
        amax_at = m["fp8_amax_history"].id.get_offset()
    # A value inside each dataset, a name of each, and attributes by value.
    flips = {"expert_bias value": ("offset", bias_at + 5), "expert_load value": ("offset", load_at + 3),
             "fp8_amax_history value": ("offset", amax_at + 7), "expert_bias name": ("name", b"expert_bias"),
             "expert_load name": ("name", b"expert_load"), "run_id value": ("name", run_id(ck).encode()),
             "config text": ("name", b"d_model = 32"), "tensor file attr": ("name", b"shard_00000.h5")}
    for what, (kind, where) in flips.items():
        d = Path(tmp) / what.replace(" ", "_")
        shutil.copytree(run, d)
        target = d / "checkpoints" / "step_00000004" / "manifest.h5"
        if kind == "offset":
            flip_bit(target, where)
        else:
            flip_in(target, where)
        out = tool("moe-ckpt", "verify", d / "checkpoints" / "step_00000004", expect=1)
        assert "manifest.h5" in out and ("checksum" in out or "missing" in out), (what, out)
        out = moe_train(d, ["train.steps=6", "checkpoint.interval=2", "precision.recipe=fp8-tensor-delayed",
                            "precision.amax_history=3"], expect=2)
        assert "manifest.h5" in out and "corrupt" in out, (what, out[-1500:])
        out = moe_train(d, ["train.steps=6", "checkpoint.interval=2", "precision.recipe=fp8-tensor-delayed",
                            "precision.amax_history=3", "checkpoint.fallback=true"])
        assert "(step 2)" in out, (what, out[-1500:])
    # An edit through h5py (consistent HDF5, no new checksum): a NaN balancing bias.
    d = Path(tmp) / "nan_bias"
    shutil.copytree(run, d)
    with h5py.File(d / "checkpoints" / "step_00000004" / "manifest.h5", "r+") as m:
        b = m["expert_bias"][...]
        b[0, 0] = np.nan
        m["expert_bias"][...] = b
    out = tool("moe-ckpt", "verify", d / "checkpoints" / "step_00000004", expect=1)
    assert "expert_bias" in out and "checksum" in out, out


def test_shards_belong_to_their_manifest(tmp):
    run = Path(tmp) / "run"
    moe_train(run, ["train.steps=4", "checkpoint.interval=2", "checkpoint.keep=5", "parallel.dp=1"])
    a, b = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000004"
    # A shard copied from another step of the same run.
    d = Path(tmp) / "swap_shard"
    shutil.copytree(run, d)
    shutil.copy(a / "shard_00000.h5", d / "checkpoints" / "step_00000004" / "shard_00000.h5")
    out = tool("moe-ckpt", "verify", d / "checkpoints" / "step_00000004", expect=1)
    assert "does not belong" in out and "step 2" in out, out
    out = moe_train(d, ["train.steps=6", "checkpoint.interval=2"], expect=2)
    assert "does not belong" in out and "shard_00000.h5" in out, out[-1500:]
    # A manifest copied from another step.
    d = Path(tmp) / "swap_manifest"
    shutil.copytree(run, d)
    shutil.copy(a / "manifest.h5", d / "checkpoints" / "step_00000004" / "manifest.h5")
    out = moe_train(d, ["train.steps=6", "checkpoint.interval=2"], expect=2)
    assert ("does not belong" in out or "directory name step 4" in out), out[-1500:]
    # A shard from another run of the same model.
    other = Path(tmp) / "other"
    moe_train(other, ["train.steps=4", "checkpoint.interval=4", "train.seed=5"])
    d = Path(tmp) / "foreign_shard"
    shutil.copytree(run, d)
    shutil.copy(other / "checkpoints" / "step_00000004" / "shard_00000.h5",
                d / "checkpoints" / "step_00000004" / "shard_00000.h5")
    out = moe_train(d, ["train.steps=6", "checkpoint.interval=2"], expect=2)
    assert "does not belong" in out and run_id(other / "checkpoints" / "step_00000004") in out, out[-1500:]


# ---------------------------------------------------------------- what a run leaves behind

def test_default_run_keeps_a_checkpoint_and_its_metrics(tmp):
    run = Path(tmp) / "run"
    moe_train(run, ["train.steps=3"])  # checkpoint.interval = 0: still saved at the end
    assert latest(run) == "step_00000003", ckdirs(run)
    assert "step        3" in tool("moe-ckpt", "info", run / "checkpoints" / "step_00000003")
    tool("moe-generate", run, "--prompt", "The ", "--max-new", "4", "--quiet")
    # A rerun appends: nothing recorded is lost, each start is marked.
    out = moe_train(run, ["train.steps=5"])
    assert "(step 3)" in out
    rows = lines(run)
    assert [r.get("event") for r in rows if "event" in r] == ["start", "resume"], rows
    assert steps_of(run) == [1, 2, 3, 4, 5], steps_of(run)
    assert rows[4]["from_step"] == 3 and rows[4]["run_id"] == rows[0]["run_id"], rows[4]
    # checkpoint.at_end = false keeps nothing; the tools say so.
    bare = Path(tmp) / "bare"
    moe_train(bare, ["train.steps=2", "checkpoint.at_end=false"])
    assert not ckdirs(bare)
    out = tool("moe-generate", bare, "--prompt", "a", expect=2)
    assert "holds no checkpoint" in out, out
    # A cut last line (a kill, a full disk) does not block or join the next.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.')
    moe_train(run, ["train.steps=6"])
    text = (run / "metrics.jsonl").read_text().splitlines()
    assert text[-3] == '{"step": 6, "loss": 1.' and json.loads(text[-2])["event"] == "resume", text[-3:]


def test_full_disk(tmp):
    # A small tmpfs as the run dir: the save fails cleanly, says why, leaves
    # no .tmp and the previous checkpoint intact; with room again, resume works.
    mnt = Path(tmp) / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"skipped: cannot mount a tmpfs here ({r.stderr.strip()})")
        sys.exit(77)  # ctest reports it as skipped (SKIP_RETURN_CODE), not passed
    try:
        run = mnt / "run"
        moe_train(run, ["train.steps=2", "checkpoint.interval=2"])  # one checkpoint (~1 MiB)
        # Room for part of a shard, then room for the shards but not the manifest.
        for leave, step in ((100_000, 4), (1_000_000, 6)):
            filler = mnt / "filler"
            free = shutil.disk_usage(mnt).free
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - leave))
            out = moe_train(run, [f"train.steps={step}", "checkpoint.interval=2"], expect=1)
            assert "no space left on device" in out and "previous checkpoint" in out, out[-2000:]
            assert not list((run / "checkpoints").glob("*.tmp")), list((run / "checkpoints").iterdir())
            assert latest(run) == f"step_{step - 2:08d}", latest(run)
            assert "OK" in tool("moe-ckpt", "verify", run / "checkpoints" / latest(run))
            filler.unlink()
            out = moe_train(run, [f"train.steps={step}", "checkpoint.interval=2"])
            assert f"(step {step - 2})" in out and latest(run) == f"step_{step:08d}", out[-2000:]
            assert steps_of(run)[-2:] == [step - 1, step]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_one_job_per_checkpoint_directory(tmp):
    run = Path(tmp) / "run"
    args = [a for s in SMALL + [f"run.dir={run}", "train.steps=100000"] for a in ("--set", s)]
    p = subprocess.Popen([str(BIN / "moe-train"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=ENV)
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").exists() and time.time() - t0 < 120:
            time.sleep(0.1)
        out = moe_train(run, ["train.steps=4"], expect=2)
        assert "in use by another job" in out and f"pid {p.pid}" in out, out[-1500:]
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        globals()[sys.argv[2]](tmp)
    print(f"{sys.argv[2]}: ok")
