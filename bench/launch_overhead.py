#!/usr/bin/env python3
"""moe-launch's overhead and recovery time, on this machine (tiny config, 2 ranks):

  1. time from launch to the first training step: moe-launch (plan, preflight,
     mpirun, log demultiplexing) against a bare mpirun of the same moe-train
     job, measured alternately in the same run (median of --repeat each);
  2. restart time after a rank is killed with SIGKILL: detection (kill -> the
     launcher has torn the job down), and kill -> first training step of the
     restarted job (launch.restart_backoff = 0, so no deliberate wait).

usage: bench/launch_overhead.py [--bin build/bin] [--repeat 5]
Never pass/fail.
"""
import argparse
import json
import re
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
SETS = ["train.steps=400", "train.log_every=1", "train.val_every=0", "checkpoint.interval=20", "launch.report=false",
        "launch.restart_backoff=0"]


def sets(run_dir):
    return [a for s in SETS + [f"run.dir={run_dir}"] for a in ("--set", s)]


def first_step(cmd):
    """Seconds from start until a line containing `needle` appears; kills the job then."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                         start_new_session=True)
    for line in p.stdout:
        if re.match(r"step\s+1/", line):
            dt = time.perf_counter() - t0
            break
    else:
        raise SystemExit(f"{cmd[0]} ended before its first step")
    stop(p)
    return dt


def stop(p):
    """Ends a job now: moe-launch kills its job on a second SIGINT; a bare mpirun goes with its session."""
    if "moe-launch" in p.args[0]:
        p.send_signal(signal.SIGINT)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
    else:
        os.killpg(p.pid, signal.SIGKILL)
    for _ in p.stdout:
        pass
    p.wait()
    time.sleep(1.0)  # let the killed ranks' exit and shared-memory cleanup finish before the next start


def restart_time(bin_dir, tmp):
    run = tmp / "restart"
    shutil.rmtree(run, ignore_errors=True)
    p = subprocess.Popen([str(bin_dir / "moe-launch"), "--np", "2", *sets(run)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    hb = run / "heartbeat" / "rank_00001.json"
    killed_at = None
    for line in p.stdout:
        if killed_at is None and line.startswith("checkpoint step 40"):
            pid = json.loads(hb.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
        elif killed_at is not None and "resumed from" in line:
            resumed = time.time()
        elif killed_at is not None and line.startswith("step ") and "resumed" in locals():
            first = time.time()
            break
    stop(p)
    att = [json.loads(l) for l in (run / "logs" / "attempts.jsonl").read_text().splitlines()]
    return {"detected_s": att[0]["ended_at"] - killed_at, "kill_to_resumed_s": resumed - killed_at,
            "kill_to_first_step_s": first - killed_at, "report": att[0]["report"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args()
    bin_dir = Path(a.bin).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="sy-launch-bench-"))
    bare, launched = [], []
    for i in range(a.repeat):
        run = tmp / f"bare{i}"
        bare.append(first_step(["mpirun", "-np", "2", "--bind-to", "none", "--allow-run-as-root",
                                str(bin_dir / "moe-train"), *sets(run)]))
        run = tmp / f"launch{i}"
        launched.append(first_step([str(bin_dir / "moe-launch"), "--np", "2", *sets(run)]))
    b, l = statistics.median(bare), statistics.median(launched)
    print("launch to first training step (tiny, 2 ranks), median of", a.repeat)
    print(f"  bare mpirun  {b:.3f} s   ({', '.join(f'{x:.2f}' for x in bare)})")
    print(f"  moe-launch   {l:.3f} s   ({', '.join(f'{x:.2f}' for x in launched)})")
    print(f"  overhead     {l - b:+.3f} s   ratio {l / b:.2f}x")
    r = restart_time(bin_dir, tmp)
    print("restart after SIGKILL of rank 1 at step ~40 (restart_backoff 0)")
    print(f"  kill -> job torn down and failure reported   {r['detected_s']:.2f} s")
    print(f"  kill -> resumed from the checkpoint          {r['kill_to_resumed_s']:.2f} s")
    print(f"  kill -> first training step again           {r['kill_to_first_step_s']:.2f} s")
    print(f"  report: {r['report']}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
