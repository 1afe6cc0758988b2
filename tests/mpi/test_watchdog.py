#!/usr/bin/env python3
"""No rank hangs forever: stop one rank mid-training and the others abort.

usage: test_watchdog.py BIN_DIR

Runs moe-train on 2 ranks with parallel.timeout = 4 s, waits until both
ranks' heartbeats show training, then SIGSTOPs rank 1 (a stuck peer: alive
but silent). Rank 0 must abort within the timeout plus slack, with exit
code 3 and a message naming rank 1 as silent and the operation and group
rank 0 was waiting in.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

BIN = Path(sys.argv[1])
ENV = mpi_env(OMP_NUM_THREADS="1")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = ["mpiexec", "-n", "2", str(BIN / "moe-train"), "--set", f"run.dir={run}", "--set", "train.steps=100000",
               "--set", "parallel.timeout=4", "--set", "train.val_every=0", "--set", "model.d_model=32",
               "--set", "model.n_layers=2", "--set", "train.global_batch=4", "--set", "model.seq_len=32",
               "--set", "train.threads=1"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        beat = run / "heartbeat" / "rank_00001.json"
        t0 = time.time()
        pid = None
        # A condition with a generous deadline: starting 2 MPI ranks on a loaded machine can take a while.
        while time.time() - t0 < 300 and p.poll() is None:
            try:
                hb = json.loads(beat.read_text())
                if hb["step"] >= 2:
                    pid = hb["pid"]
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        assert pid, "rank 1 never reported training in its heartbeat"
        os.kill(pid, signal.SIGSTOP)
        stopped = time.time()
        try:
            out, _ = p.communicate(timeout=60)
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        took = time.time() - stopped
        print(out[-2500:])
        print(f"job ended {took:.1f} s after rank 1 was stopped, exit code {p.returncode}")
        assert p.returncode != 0, "the job must fail"
        assert "watchdog: rank 0" in out, "rank 0's watchdog must report"
        assert "rank 1" in out and "SILENT" in out, "the message must name rank 1 as silent"
        assert "on group" in out and "(world rank" in out, "the message must name the group"
        assert took < 4 + 20, "abort must come soon after the timeout"
    print("PASS")


if __name__ == "__main__":
    main()
