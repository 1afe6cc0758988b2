#!/usr/bin/env python3
"""Training with run.device = "cuda" on the CUDA device emulated on the CPU
(SY_EMULATE_CUDA=guarded, kernels/cpu/emulated_device.h): parameters,
gradients, moments, balancing bias and activations live in "device" memory the
host cannot touch (a host read or write exits 86; a host buffer handed to an
op is refused), and the ops are the CPU backend's, so every number must equal
the same run on run.device = "cpu" bit for bit: losses, gradient norms,
validation losses, router statistics, samples and checkpoint datasets. A
checkpoint written on either device resumes on the other. The bf16 and FP8
recipes too (FP8 codes and scales are host memory, staged to and from the
device), and two ranks data parallel, expert parallel (with ZeRO-1 too) or
as two pipeline stages. What the device path does not do yet
is refused with exit 2 naming the key.

usage: test_device_train.py BIN_DIR WORK_DIR CASE
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ENV = mpi_env(OMP_NUM_THREADS="1")
EMU = dict(ENV, SY_EMULATE_CUDA="guarded")
STEPS = 6
MPI2 = ["mpiexec", "-n", "2", "--bind-to", "none"]
PP2 = ["parallel.pp=2", "parallel.ep=1", "model.tie_embeddings=true", "train.global_batch=4", "train.grad_accum=4",
       "train.sample_every=0"]
# Tiny and short (the emulation changes page protections around every op):
# 6 steps of 2 sequences of 32 bytes, one thread. The balancing bias, an lr
# group, validation and samples are on so that each of the device path's
# host copies (bias upload, parameters for the sampler, ...) is exercised.
BASE = ["model.seq_len=32", "train.global_batch=2", f"train.steps={STEPS}", "train.threads=1",
        "train.val_every=3", "train.val_batches=1", "train.sample_every=3", "train.sample_tokens=16",
        "checkpoint.interval=3", "moe.bias_update_rate=0.01",
        'train.lr_groups=[{ match = "layers.*.moe.experts.**", scale = 0.5 }]']


def moe_train(run_dir, sets, device, expect=0, env=None, extra=()):
    args = [a for s in BASE + sets + [f"run.dir={run_dir}", f"run.device={device}"] for a in ("--set", s)]
    env = env or (EMU if device == "cuda" else ENV)
    p = subprocess.run([str(c) for c in [*extra, BIN / "moe-train", *args]], capture_output=True, text=True,
                       errors="replace", env=env, timeout=300)
    assert p.returncode == expect, f"{device} {sets}: exit {p.returncode}, expected {expect}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def steps(run_dir):
    """The last record of each step (a resume repeats none here, but readers keep the last)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "step" in r:
            out[r["step"]] = r
    return out


# What a step record holds that depends on the numbers (not on time or memory).
NUMERIC = ["loss", "grad_norm", "lr", "expert_load", "aux_loss", "z_loss", "router_entropy", "router_margin",
           "imbalance", "dropped_frac", "val_loss"]


def same_steps(a, b, which):
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for s in which:
        for k in NUMERIC:
            assert a[s].get(k) == b[s].get(k), (s, k, a[s].get(k), b[s].get(k))
    assert "loss" in a[which[0]] and "grad_norm" in a[which[0]], a[which[0]]


def datasets(ckpt):
    out = {}
    for f in sorted(ckpt.glob("*.h5")):
        with h5py.File(f, "r") as h:
            def visit(name, obj):
                # "seal" holds CRCs of the attributes too, which carry the run's identity and time.
                if isinstance(obj, h5py.Dataset) and name != "seal":
                    out[f"{f.name}:{name}"] = obj[()]
            h.visititems(visit)
    return out


def same_checkpoint(a, b):
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db), (sorted(set(da) ^ set(db)))
    assert any("adam_m/" in k for k in da) and any(k.endswith("expert_bias") for k in da), sorted(da)[:20]
    bad = [k for k in da if not np.array_equal(np.asarray(da[k]), np.asarray(db[k]))]
    assert not bad, bad


def ckpt(run_dir, step):
    return run_dir / "checkpoints" / f"step_{step:08d}"


def fresh(name):
    d = WORK / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def test_equal(extra_sets):
    d = fresh("equal" + "".join("_" + x.split("=")[1] for x in extra_sets if x.startswith("precision.recipe")))
    cpu = moe_train(d / "cpu", extra_sets, "cpu")
    dev = moe_train(d / "dev", extra_sets, "cuda")
    a, b = steps(d / "cpu"), steps(d / "dev")
    same_steps(a, b, list(range(1, STEPS + 1)))
    assert a[3]["val_loss"] == b[3]["val_loss"] and a[3]["val_loss"] > 0, (a[3], b[3])
    # The bias moved (so a missing upload would show) and the samples match.
    assert (d / "cpu" / "samples.txt").read_bytes() == (d / "dev" / "samples.txt").read_bytes()
    for s in (3, STEPS):
        same_checkpoint(ckpt(d / "cpu", s), ckpt(d / "dev", s))
    with h5py.File(ckpt(d / "dev", STEPS) / "manifest.h5", "r") as h:
        assert np.any(np.asarray(h["expert_bias"]) != 0), "the balancing bias never moved"
    assert "starting at step 0" in dev.stdout, dev.stdout[-2000:]


def test_resume_across_devices():
    # An uninterrupted CPU run against runs that stop after step 3 on one device
    # and resume on the other: the steps after the checkpoint and the last
    # checkpoint equal the uninterrupted run's bit for bit, both ways.
    d = fresh("resume")
    moe_train(d / "whole", [], "cpu")
    whole = steps(d / "whole")
    for first, then in (("cpu", "cuda"), ("cuda", "cpu")):
        r = d / f"{first}_then_{then}"
        moe_train(r, ["train.stop_after=3"], first)
        p = moe_train(r, [], then)
        assert "resuming at step 3" in p.stdout, p.stdout[-2000:]
        got = steps(r)
        same_steps({s: got[s] for s in whole}, whole, list(range(4, STEPS + 1)))
        same_checkpoint(ckpt(r, STEPS), ckpt(d / "whole", STEPS))


def test_refusals():
    d = fresh("refusals")

    def refused(sets, needles, **kw):
        p = moe_train(d / "r", sets + ["train.steps=1"], kw.pop("device", "cuda"), expect=2, **kw)
        for n in needles:
            assert n in p.stderr, (sets, n, p.stderr[-2000:])
        assert not (d / "r" / "checkpoints").exists(), sets

    refused([], ["run.device", "tpu", '"cpu", "cuda"'], device="tpu", env=ENV)
    # No GPU here and no emulation: the missing device is named (exit 2), not a crash, with the
    # module the run loaded (or the file it looked for).
    refused([], ['run.device = "cuda"', "not available", "libswitchyard_cuda.so"], env=ENV)
    # A device too small for the run (the emulated one with 1 GiB): its activations are named.
    refused(["model.seq_len=4096", "train.global_batch=8"],
            ['run.device = "cuda": not enough device memory: activations need', "model.seq_len = 4096",
             "the device has 1.0 GiB free of 1.0 GiB"], env=dict(EMU, SY_EMULATE_CUDA_GIB="1"))
    # The device dispatch is the flat MPI transport (overlapped or not), not shm or hierarchical.
    refused(["parallel.ep=2", "parallel.transport=shm"], ['run.device = "cuda"', 'parallel.transport = "shm"',
                                                          '"auto" or "mpi"'], extra=MPI2)


def test_parallel(name, sets):
    # Two ranks: data parallel (ep = 1) or expert parallel (ep = 2). The device
    # gradients are reduced over the device communicator during backward
    # (staged through host memory: the device is emulated), and the MoE rows
    # cross ranks device to device (packed on the device for a smaller
    # payload); every number and every checkpoint dataset equals the same
    # two-rank run on the CPU bit for bit (both move the rows by MPI:
    # parallel.transport = "mpi" on the CPU too).
    d = fresh(name)
    moe_train(d / "cpu", sets, "cpu", extra=MPI2)
    moe_train(d / "dev", sets, "cuda", extra=MPI2)
    a, b = steps(d / "cpu"), steps(d / "dev")
    same_steps(a, b, list(range(1, STEPS + 1)))
    if (d / "cpu" / "samples.txt").exists() or (d / "dev" / "samples.txt").exists():
        assert (d / "cpu" / "samples.txt").read_bytes() == (d / "dev" / "samples.txt").read_bytes()
    for s in (3, STEPS):
        same_checkpoint(ckpt(d / "cpu", s), ckpt(d / "dev", s))
    # A rank that updated with its own gradients alone (no reduction, or the
    # sums not sent back to the device), or experts that read rows never
    # copied up, would diverge from the CPU run at step 1 or 2.


CASES = {
    "equal": lambda: test_equal([]),
    "equal_bf16": lambda: test_equal(["precision.recipe=bf16", "precision.moments=bf16"]),
    # FP8 recipes: the codes and scales (Fp8Matrix) are device memory; a host read of them faults.
    "equal_fp8_block": lambda: test_equal(["precision.recipe=fp8-block"]),
    "equal_fp8_delayed": lambda: test_equal(["precision.recipe=fp8-tensor-delayed"]),
    "resume": test_resume_across_devices,
    "refusals": test_refusals,
    "dp2": lambda: test_parallel("dp2", ["parallel.ep=1", "parallel.dp=2"]),
    # Two pipeline stages (no samples with pp): activations and their gradients
    # staged through host memory between stages, the tied embedding's
    # gradient summed over both; zero-bubble's deferred weight gradients keep
    # their output gradients in device memory (WgradQueue).
    "pp2_1f1b": lambda: test_parallel("pp2_1f1b", PP2 + ["parallel.schedule=1f1b", "parallel.recompute=full"]),
    "pp2_zb_bf16": lambda: test_parallel("pp2_zb_bf16", PP2 + ["parallel.schedule=zb", "precision.recipe=bf16"]),
    # ZeRO-1: the reduced shard goes to the device for this rank's share of the
    # update, the updated parts are all-gathered on the host.
    "zero1_ep2": lambda: test_parallel("zero1_ep2", ["parallel.ep=2", "parallel.transport=mpi", "parallel.zero1=true",
                                                     "precision.moments=bf16"]),
    "ep2": lambda: test_parallel("ep2", ["parallel.ep=2", "parallel.transport=mpi"]),
    # FP8 rows to the experts and BF16 back, packed and unpacked on the device,
    # in 3 chunks all posted at once (parallel.overlap), each chunk's experts
    # running as it lands.
    "ep2_fp8_overlap": lambda: test_parallel("ep2_fp8_overlap", ["parallel.ep=2", "parallel.transport=mpi",
                                                                 "precision.recipe=fp8-block",
                                                                 "parallel.dispatch_dtype=fp8", "parallel.overlap=true",
                                                                 "parallel.dispatch_chunks=3"]),
    "ep2_fp8": lambda: test_parallel("ep2_fp8", ["parallel.ep=2", "parallel.transport=mpi", "precision.recipe=fp8-block",
                                                 "parallel.dispatch_dtype=fp8"]),
}

if __name__ == "__main__":
    CASES[CASE]()
    print(f"{CASE}: ok")
