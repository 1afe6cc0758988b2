#!/usr/bin/env python3
"""moe-launch as users meet it: the plan and preflight, a rank killed or
stopped mid-training, too many failures, and stop signals.

usage: test_launch.py BIN_DIR WORK_DIR CASE   (CASE "reference" runs the uninterrupted baseline)
"""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
STEPS = 40
# train.threads = 1 on every run: the fault cases' losses must equal the
# uninterrupted reference's to the bit, so both run the same GEMMs on the
# same thread count whatever the machine's core count.
COMMON = [f"train.steps={STEPS}", "checkpoint.interval=10", "train.log_every=5", "train.val_every=0",
          "launch.restart_backoff=0.5", "launch.report=false", "train.threads=1"]


def launch_cmd(run_dir, sets=(), np=2, extra=()):
    args = [str(BIN / "moe-launch"), "--np", str(np)]
    for s in COMMON + [f"run.dir={run_dir}"] + list(sets):
        args += ["--set", s]
    return args + list(extra)


def launch(run_dir, sets=(), np=2, expect=0, extra=(), timeout=300):
    p = subprocess.run(launch_cmd(run_dir, sets, np, extra), capture_output=True, text=True, env=ENV, timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == expect, f"exit {p.returncode}, expected {expect}:\n{out[-4000:]}"
    return out


def losses(run_dir):
    """{step: loss} of metrics.jsonl's step rows (event lines, without a loss, are skipped)."""
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if isinstance(r, dict) and "loss" in r}


def attempts(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "logs" / "attempts.jsonl").read_text().splitlines()]


def heartbeat(run_dir, rank):
    try:
        return json.loads((Path(run_dir) / "heartbeat" / f"rank_{rank:05d}.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for_step(run_dir, rank, step, proc, timeout=600):
    # A condition with a generous deadline (a loaded machine may be slow to start MPI ranks); fails at
    # once if moe-launch exits.
    t0 = time.time()
    while time.time() - t0 < timeout:
        hb = heartbeat(run_dir, rank)
        if hb and hb["step"] >= step:
            return hb
        assert proc.poll() is None, f"moe-launch exited early ({proc.returncode})"
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} did not reach step {step} in {timeout} s")


def attempt_step(run_dir):
    """The last step the current attempt logged in metrics.jsonl (0 before its first)."""
    step = 0
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            d = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if d.get("event") == "start":
            step = 0
        elif isinstance(d.get("step"), int):
            step = d["step"]
    return step


def reference():
    # Only its own run: the cases without the fixture may be writing beside it (ctest -j).
    shutil.rmtree(WORK / "ref", ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    launch(WORK / "ref")


def same_losses(run_dir):
    want, got = losses(WORK / "ref"), losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1)), sorted(got)
    bad = [(s, got[s], want[s]) for s in want if got[s] != want[s]]
    assert not bad, f"losses differ from the uninterrupted run (step, got, want): {bad[:5]}"


def test_dry_run_prints_the_plan():
    out = launch(WORK / "dry", ["parallel.ep=2"], np=4, extra=["--dry-run"])
    for needle in ("world    : 4 ranks (--np) = pp 1 x dp 4; ep 2 (4 experts per rank), expert-dp 2",
                   "memory   : per rank", "FLOP per step", "ckpt     :", "command  : ", "mpirun -np 4",
                   "--tag-output", "moe-train"):
        assert needle in out, (needle, out)
    assert not (WORK / "dry" / "heartbeat").exists(), "a dry run started ranks"


def test_bad_input_is_refused_before_starting():
    def bad(sets, np, *needles):
        out = launch(WORK / "bad", sets, np=np, expect=2)
        for n in needles:
            assert n in out, (n, out)
        assert not (WORK / "bad" / "heartbeat").exists(), "ranks were started"
    bad(["parallel.ep=3"], 3, "parallel.ep")
    bad(["parallel.dp=3"], 4, "4 ranks")
    bad(["data.train=['/nonexistent/corpus.txt']"], 2, "/nonexistent/corpus.txt")
    bad(["checkpoint.keep=1000000"], 2, "not enough free disk for checkpoints", "checkpoint.keep = 1000000")
    bad(["launch.bind_to='none; reboot'"], 2, "launch.bind_to")
    out = launch(WORK / "bad", [], np=2, expect=2, extra=["--hostfile", "/nonexistent/hosts"])
    assert "cannot read hostfile '/nonexistent/hosts'" in out, out
    (WORK / "empty.txt").write_text("")
    out = launch(WORK / "bad", [f"data.train=['{WORK / 'empty.txt'}']"], np=2, expect=2)
    assert "empty.txt' is empty" in out, out
    # moe-train's own bad input (exit 2, here a checkpoint to resume from that
    # does not exist) is reported once and not retried.
    out = launch(WORK / "bad2", [f"checkpoint.resume={WORK / 'no_such_checkpoint'}"], np=2, expect=2)
    assert "no_such_checkpoint" in out and "not restarting" in out and "attempt 2" not in out, out[-3000:]
    assert [a["outcome"] for a in attempts(WORK / "bad2")] == ["bad_input"]


def test_preflight_checks_data_and_memory():
    """What would fail after the ranks started is refused first (exit 2, nothing started), and the
    dry run estimates memory from the config without allocating the model."""
    WORK.mkdir(parents=True, exist_ok=True)
    pre = WORK / "pre"
    shutil.rmtree(pre, ignore_errors=True)
    pre.mkdir()

    def refused(sets, *needles, extra=()):
        p = subprocess.run(launch_cmd(pre / "run", sets, 2, extra), capture_output=True, text=True, env=ENV,
                           timeout=60)
        out = p.stdout + p.stderr
        assert p.returncode == 2, f"exit {p.returncode}:\n{out[-3000:]}"
        for n in needles:
            assert n in out, (n, out)
        assert not (pre / "run" / "heartbeat").exists(), "ranks were started"

    # A token >= model.vocab_size anywhere in a shard (llm.c format: 256 int32 header, uint16 tokens).
    toks = [7] * 50000
    toks[45678] = 1000
    with open(pre / "bad.bin", "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, len(toks), *([0] * 253)))
        f.write(struct.pack(f"<{len(toks)}H", *toks))
    refused(["data.format=bin", f"data.train=['{pre / 'bad.bin'}']"], "token 1000 at position 45678",
            "model.vocab_size = 256")
    # Not a regular file: refused, never opened (a FIFO would block the open).
    os.mkfifo(pre / "fifo")
    refused([f"data.train=['{pre / 'fifo'}']"], f"'{pre / 'fifo'}' is a FIFO (named pipe), not a regular file")
    refused([f"data.train=['{pre}']"], "is a directory, not a regular file")
    refused([], f"hostfile '{pre / 'fifo'}' is a FIFO (named pipe), not a regular file",
            extra=["--hostfile", str(pre / "fifo")])
    # Every rank on this machine: the estimate is held against its memory.
    refused(["model.vocab_size=16777216"], "not enough memory: activations need", "model.vocab_size = 16777216")
    # Ranks elsewhere (a hostfile): the dry run prints the estimate; nothing of the model is allocated
    # (the activations of 2^20-token sequences, over 100 GiB, would end in std::bad_alloc here).
    (pre / "hosts").write_text("far1 slots=2\nfar2 slots=2\n")
    (pre / "long.txt").write_text("a long text " * 100000)  # 1.2 MB: one window of 2^20 + 1 bytes
    p = subprocess.run(launch_cmd(pre / "run", ["model.seq_len=1048576", f"data.train=['{pre / 'long.txt'}']"], 4,
                                  ["--dry-run", "--hostfile", str(pre / "hosts")]),
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    act = re.search(r"activations ([0-9.]+) GiB", p.stdout)
    assert act and float(act.group(1)) > 100, p.stdout


def kill_rank_during_run(run_dir, sets, at_step, sig, every_attempt=False):
    """Starts moe-launch; when rank 1 reaches at_step, sends it `sig` (on every attempt if asked)."""
    proc = subprocess.Popen(launch_cmd(run_dir, sets), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    out = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    signalled = []
    while proc.poll() is None:
        try:
            hb = wait_for_step(run_dir, 1, 0, proc)  # rank 1's pid, from its first beat
        except AssertionError:
            if proc.poll() is not None:
                break
            raise
        if hb["pid"] in [x[0] for x in signalled]:
            time.sleep(0.05)
            continue
        # The step from metrics.jsonl, a line per step, not from the heartbeat (one a second): a
        # fast machine trains past at_step, even to the end, between two beats.
        while proc.poll() is None and attempt_step(run_dir) < at_step:
            time.sleep(0.02)
        if proc.poll() is not None:
            break
        os.kill(hb["pid"], sig)
        when = time.time()
        last_beat = None
        if sig == signal.SIGSTOP:  # the stopped rank's last heartbeat (stat once the stop has surely landed)
            time.sleep(0.2)
            last_beat = (Path(run_dir) / "heartbeat" / "rank_00001.json").stat().st_mtime
        signalled.append((hb["pid"], when, last_beat))
        if not every_attempt:
            break
    proc.wait(timeout=300)
    reader.join(timeout=10)
    return proc.returncode, "".join(out), signalled


def test_sigkill_restarts_with_the_same_losses():
    run = WORK / "kill"
    code, out, sig = kill_rank_during_run(run, [], 25, signal.SIGKILL)
    assert code == 0, out[-4000:]
    assert len(sig) == 1
    a = attempts(run)
    assert [x["outcome"] for x in a] == ["failed", "ok"], a
    assert "rank 1 (host" in a[0]["report"] and "died on signal 9" in a[0]["report"], a[0]
    assert a[0]["latest_checkpoint_step"] in (20, 30), a[0]
    assert "resumed from" in out and "restart 1 of 3" in out, out[-3000:]
    same_losses(run)
    # Per-rank logs with one header per attempt.
    for r in (0, 1):
        log = (run / "logs" / f"rank_{r:05d}.log").read_text()
        assert log.count("=== attempt") == 2, log[:500]


def test_sigstop_is_detected_and_recovers():
    run = WORK / "stop"
    timeout = 4
    code, out, sig = kill_rank_during_run(run, [f"launch.hang_timeout={timeout}"], 25, signal.SIGSTOP)
    assert code == 0, out[-4000:]
    a = attempts(run)
    assert [x["outcome"] for x in a] == ["hung", "ok"], a
    assert f"rank 1 (host" in a[0]["report"] and "no heartbeat" in a[0]["report"], a[0]
    # The supervisor counts a rank as hung when its heartbeat file is older
    # than the timeout, and looks once a second. So detection comes after
    # the stopped rank's last heartbeat plus the timeout (never earlier), and
    # within the check interval (1 s) of it, plus up to 2 s for a loaded
    # machine to schedule the supervisor. The last heartbeat is at most the
    # heartbeat period (1 s) before the stop, so this is never looser than
    # "stop + timeout + heartbeat period + check interval + 1 s".
    stopped_at, last_beat = sig[0][1], sig[0][2]
    detected_at = float(a[0]["ended_at"])
    assert last_beat <= stopped_at, (last_beat, stopped_at)
    assert last_beat + timeout - 0.05 <= detected_at <= last_beat + timeout + 3, (last_beat, stopped_at, detected_at)
    same_losses(run)


def test_too_many_failures_give_up_with_a_report():
    run = WORK / "exhaust"
    code, out, sig = kill_rank_during_run(run, ["launch.max_restarts=2"], 12, signal.SIGKILL, every_attempt=True)
    assert code == 3, f"exit {code}\n{out[-4000:]}"
    assert len(sig) == 3, sig
    a = attempts(run)
    assert [x["outcome"] for x in a] == ["failed"] * 3, a
    assert "giving up: 3 failures, more than launch.max_restarts = 2 restarts allow" in out, out[-3000:]
    for i in (1, 2, 3):
        assert f"attempt {i}: the job failed" in out, out[-3000:]


def test_sigterm_checkpoints_and_resumes():
    run = WORK / "term"
    proc = subprocess.Popen(launch_cmd(run, []), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    wait_for_step(run, 0, 13, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 4, f"exit {proc.returncode}\n{out[-3000:]}"
    assert "SIGTERM received: asking every rank" in out and "stopped by SIGTERM after a checkpoint" in out, out[-3000:]
    step = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 13 <= step < STEPS, step
    assert max(losses(run)) == step
    # The same command resumes and finishes with the uninterrupted run's losses.
    out = launch(run)
    assert f"resumed from" in out, out[-2000:]
    same_losses(run)


def test_report_on_demand():
    out = subprocess.run([str(BIN / "moe-launch"), "--report", str(WORK / "ref")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rep = WORK / "ref" / "report"
    for name in ("loss.png", "throughput.png", "expert_load.png", "summary.txt"):
        assert (rep / name).stat().st_size > 0, name
    with open(rep / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = (rep / "summary.txt").read_text()
    assert f"steps        1 .. {STEPS}" in summary and "imbalance" in summary, summary


if __name__ == "__main__":
    if CASE == "reference":
        reference()
    else:
        globals()[CASE]()
    print(f"{CASE}: ok")
