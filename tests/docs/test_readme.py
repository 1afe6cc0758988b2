#!/usr/bin/env python3
"""Every command line the README shows runs as written.

usage: test_readme.py REPO_ROOT WORK_DIR CASE

The README's ```sh blocks are read in order (backslash continuations
joined, comments dropped) and run from a sandbox that looks like a fresh
clone after the quickstart: `build/`, `configs/`, `cluster/`, `tools/` are
links into the repository, and `runs/tiny` is made by the quickstart's
training command itself (CASE `setup`: what `./dev.sh train` runs, to the
end). CASE `sections` runs every other command in order, each with a time
budget:
  - a command that finishes must exit 0 (and print no "error" / "bad input");
  - a training command that is still running when its budget is up must
    have printed a step line (or, for a job too big to reach one in the
    budget, its layout line) and no error; it is then stopped with SIGTERM,
    which makes it checkpoint and exit 4, as a user's Ctrl-C would.
Lines that cannot run on one machine are listed in SKIP with the reason
(`./dev.sh` is the quickstart, CI runs it; `sbatch`/`srun` need a Slurm
allocation, which tests/slurm covers). Multi-node lines (`--hostfile
hosts`) run with a `hosts` file naming this machine. Anything else the test
cannot run is a failure: the README must not show it as a command.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT, WORK, CASE = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3]
SANDBOX = WORK / "clone"
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1", OMP_WAIT_POLICY="passive")
SKIP = {
    "./dev.sh": "the quickstart itself: CI runs ./dev.sh test, and CASE setup runs what ./dev.sh train runs",
    "sbatch": "needs a Slurm cluster (tests/slurm runs the templates on a local one-node Slurm)",
    "srun": "needs a Slurm allocation (tests/slurm covers srun --mpi=pmix)",
    "kill": "acts on a running job (tests/ckpt test_signals sends these signals)",
}
BUDGET = 40  # seconds a long-running command gets to show it started cleanly


def commands():
    """(section, command) for every line of every ```sh block, in order."""
    out, section, block, cont = [], "", None, ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if block is None:
            if line.startswith("#"):
                section = line.lstrip("# ").strip()
            if line.strip() == "```sh":
                block = []
            continue
        if line.strip() == "```":
            block = None
            continue
        line = cont + line.strip()
        cont = ""
        if line.endswith("\\"):
            cont = line[:-1] + " "
            continue
        words = shlex.split(line, comments=True)
        if words:
            out.append((section, shlex.join(words)))
    return out


def sandbox():
    SANDBOX.mkdir(parents=True, exist_ok=True)
    for name in ("build", "configs", "cluster", "tools", "dev.sh", "README.md"):
        link = SANDBOX / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    (SANDBOX / "hosts").write_text("localhost slots=16\n")


def run(cmd, budget=None):
    """Runs one command line from the sandbox; returns (ok, why, output)."""
    p = subprocess.Popen(["bash", "-c", cmd], cwd=SANDBOX, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, errors="replace", start_new_session=True)
    out, t0, stopped = [], time.time(), False
    os.set_blocking(p.stdout.fileno(), False)
    while True:
        chunk = p.stdout.read()
        if chunk:
            out.append(chunk)
        if p.poll() is not None:
            rest = p.stdout.read()
            if rest:
                out.append(rest)
            break
        text = "".join(out)
        started = re.search(r"^(\[\S+\] )?step +\d+/", text, re.M) or re.search(r"^(\[\S+\] )?step \d+", text, re.M)
        if budget is not None and (started or time.time() - t0 > budget):
            if not started and not re.search(r"^(\[\S+\] )?(layout|world) +:", text, re.M):
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return False, f"no step line nor layout line within {budget} s", text
            os.killpg(p.pid, signal.SIGTERM)  # checkpoint and stop, as Ctrl-C would
            stopped = True
            try:
                rest, _ = p.communicate(timeout=120)
                out.append(rest or "")
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return False, "did not stop within 120 s of SIGTERM", "".join(out)
            break
        if budget is None and time.time() - t0 > 600:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return False, "still running after 600 s", "".join(out)
        time.sleep(0.1)
    text = "".join(out)
    if re.search(r"bad input|error:|Traceback|terminate called", text):
        return False, f"exit {p.returncode} with an error message", text
    if stopped:
        return p.returncode in (0, 4, -signal.SIGTERM, 128 + signal.SIGTERM), f"exit {p.returncode} after SIGTERM", text
    return p.returncode == 0, f"exit {p.returncode}", text


def setup():
    sandbox()
    # The quickstart's `./dev.sh train`: moe-launch on SY_RANKS (4) ranks, to the end.
    ok, why, out = run("build/bin/moe-launch --np 4")
    assert ok and (SANDBOX / "runs/tiny/checkpoints/step_00000300").is_dir(), f"{why}\n{out[-3000:]}"
    print(out[-600:])


def sections():
    sandbox()
    assert (SANDBOX / "runs/tiny/checkpoints/latest").exists(), "run CASE setup first"
    failures, ran, skipped = [], 0, 0
    long_running = re.compile(r"(^|\s)(mpirun|build/bin/moe-train|build/bin/moe-launch)\b")
    for section, cmd in commands():
        head = cmd.split()[0]
        if head in SKIP:
            print(f"skip  [{section}] {cmd}   ({SKIP[head]})")
            skipped += 1
            continue
        quick = ("--dry-run" in cmd or "--print-config" in cmd or "--help" in cmd or "--report" in cmd
                 or not long_running.search(cmd))
        t0 = time.time()
        ok, why, out = run(cmd, budget=None if quick else BUDGET)
        ran += 1
        print(f"{'ok  ' if ok else 'FAIL'}  [{section}] {cmd}   ({why}, {time.time() - t0:.1f} s)", flush=True)
        if not ok:
            failures.append((cmd, why, out[-2500:]))
    for cmd, why, out in failures:
        print(f"\n=== FAILED: {cmd} ({why})\n{out}")
    print(f"\n{ran} commands run, {skipped} skipped with a reason, {len(failures)} failed")
    assert not failures, [c for c, _, _ in failures]


if __name__ == "__main__":
    globals()[CASE]()
