#!/usr/bin/env python3
"""Slurm end to end on a real one-node cluster (cluster/local-slurm/up.sh):
the tiny job submitted with sbatch finishes; the pre-timeout signal and
`scontrol requeue` make it checkpoint, requeue and resume to the same final
losses.

usage: test_slurm.py SOURCE_DIR BIN_DIR WORK_DIR CASE    (CASE up / down start and stop the cluster)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SRC, BIN, WORK = (Path(a).resolve() for a in sys.argv[1:4])
CASE = sys.argv[4]
SLURM_DIR = WORK / "slurm"
ENV = dict(os.environ, SLURM_CONF=str(SLURM_DIR / "slurm.conf"), SY_HOME=str(SRC), OMP_NUM_THREADS="1")
ENV.pop("SLURM_JOB_ID", None)
STEPS = 60
# train.threads = 1: the requeued job's losses must equal the plain job's to the bit (the same GEMMs on the
# same thread count, whatever cores Slurm hands out).
SETS = [f"train.steps={STEPS}", "checkpoint.interval=10", "train.log_every=5", "train.val_every=0",
        "parallel.ep=2", "launch.report=false", "train.threads=1"]


def sh(cmd, expect=0, timeout=120):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert p.returncode == expect, f"{cmd}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def up():
    for tool in ("slurmctld", "slurmd", "munged", "sbatch"):
        assert shutil.which(tool), f"{tool} not found: the test command installs slurm-wlm and munge (./dev.sh deps)"
    subprocess.run(["bash", SRC / "cluster/local-slurm/down.sh", SLURM_DIR], env=ENV)
    shutil.rmtree(WORK, ignore_errors=True)  # no result of an earlier run may stand in for this one's
    WORK.mkdir(parents=True)
    print(sh(["bash", SRC / "cluster/local-slurm/up.sh", SLURM_DIR, "8"], timeout=120))


def down():
    sh(["bash", SRC / "cluster/local-slurm/down.sh", SLURM_DIR])


def submit(run_dir):
    args = [a for s in SETS + [f"run.dir={run_dir}"] for a in ("--set", s)]
    out = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={run_dir}.slurm.out", "--chdir", SRC,
              SRC / "cluster/slurm/one_node.sbatch", *args])
    return out.strip().split(";")[0]


def job(jid):
    out = sh(["scontrol", "show", "job", "-o", jid])
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_state(jid, states, timeout=600, hurry=True):  # generous: a loaded 2-core machine trains slowly
    t0 = time.time()
    pending_since = None
    while time.time() - t0 < timeout:
        j = job(jid)
        if j["JobState"] in states:
            return j
        # A requeued job waits ~2 minutes before it is eligible again; make it
        # eligible sooner, but not at once (Slurm refuses to start a batch job
        # whose previous run's credential it revoked that same second).
        if hurry and j["JobState"] == "PENDING" and j.get("Reason") == "BeginTime":
            pending_since = pending_since or time.time()
            if time.time() - pending_since > 5:
                subprocess.run(["scontrol", "update", f"jobid={jid}", "StartTime=now"], env=ENV, capture_output=True)
        time.sleep(0.5)
    raise AssertionError(f"job {jid} not in {states} after {timeout} s: {job(jid)}")


def step_of(run_dir):
    try:
        return json.loads((Path(run_dir) / "heartbeat" / "rank_00000.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def losses(run_dir):
    """{step: loss} of metrics.jsonl's step rows (event lines, without a loss, are skipped)."""
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if isinstance(r, dict) and "loss" in r}


def reference():
    run = WORK / "plain"
    if not (run / "metrics.jsonl").exists() or len(losses(run)) != STEPS:
        shutil.rmtree(run, ignore_errors=True)
        jid = submit(run)
        j = wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
        log = Path(f"{run}.slurm.out").read_text()
        assert j["JobState"] == "COMPLETED", f"{j}\n{log[-3000:]}"
    return losses(run)


def test_sbatch_tiny_finishes():
    want = reference()
    assert sorted(want) == list(range(1, STEPS + 1))
    log = Path(f"{WORK / 'plain'}.slurm.out").read_text()
    assert "srun --mpi=pmix -n 2" in log and "training finished (1 attempt)" in log, log[-3000:]
    assert want[STEPS] < want[1] - 1.0, want


def interrupted(name, interrupt):
    want = reference()
    run = WORK / name
    shutil.rmtree(run, ignore_errors=True)
    jid = submit(run)
    wait_state(jid, {"RUNNING"}, hurry=False)
    t0 = time.time()
    while step_of(run) < 15:
        assert time.time() - t0 < 600 and job(jid)["JobState"] == "RUNNING", job(jid)
        time.sleep(0.1)
    interrupt(jid)
    # It checkpoints, goes back to the queue, runs again and resumes.
    t0 = time.time()
    while int(job(jid).get("Restarts", "0")) < 1:
        assert time.time() - t0 < 600, job(jid)
        time.sleep(0.2)
    j = wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = Path(f"{run}.slurm.out").read_text()
    assert j["JobState"] == "COMPLETED", f"{j}\n{log[-3000:]}"
    assert "restart count 1" in log and "resumed from" in log, log[-4000:]
    m = re.search(r"resumed from \S+step_(\d+) \(step (\d+)\)", log)
    assert m and 15 <= int(m.group(2)) < STEPS, log[-3000:]
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1)), sorted(got)
    bad = [(s, got[s], want[s]) for s in want if got[s] != want[s]]
    assert not bad, f"losses differ from the uninterrupted job (step, got, want): {bad[:5]}"
    return log


def test_pre_timeout_signal_requeues_and_resumes():
    # What --signal=B:USR1@120 delivers before the time limit.
    log = interrupted("usr1", lambda jid: sh(["scancel", "--signal=USR1", "--batch", jid]))
    assert "SIGUSR1 received" in log and "requeueing Slurm job" in log, log[-4000:]


def test_scontrol_requeue_checkpoints_and_resumes():
    log = interrupted("requeue", lambda jid: sh(["scontrol", "requeue", jid]))
    assert "stopped by" in log, log[-4000:]


if __name__ == "__main__":
    globals()[CASE]()
    print(f"{CASE}: ok")
