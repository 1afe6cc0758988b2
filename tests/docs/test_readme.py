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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

ROOT, WORK, CASE = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3]
SANDBOX = WORK / "clone"
ENV = mpi_env(OMP_WAIT_POLICY="passive")
SKIP = {
    "./dev.sh": "the quickstart itself: CI runs ./dev.sh test, and CASE setup runs what ./dev.sh train runs",
    "sbatch": "needs a Slurm cluster (tests/slurm runs the templates on a local one-node Slurm)",
    "srun": "needs a Slurm allocation (tests/slurm covers srun --mpi=pmix)",
    "kill": "acts on a running job (tests/ckpt test_signals sends these signals)",
}
# cluster/netns (the simulated cluster) needs root and network namespaces;
# where they are missing its lines are skipped, saying so (tests/multinode
# skips the same way).
NETNS = "cluster/netns/"


def netns_unavailable():
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, tc)"
    probe = subprocess.run(["ip", "netns", "add", "syadocsprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no network namespaces here ({probe.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", "syadocsprobe"], capture_output=True)
    return None


BUDGET = 150  # seconds a long-running command gets to show a step (8 ranks of small.toml on 2 busy cores are slow)


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


def stop(session, cmd):
    """SIGTERM where a user would send it: to moe-launch (it stops the job with a
    checkpoint), else to every moe-train rank (each checkpoints and exits 4;
    mpirun then reports their exit code)."""
    target = "moe-launch" if "moe-launch" in cmd else "moe-train"
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and os.getsid(int(d.name)) == session and \
                    target in (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace"):
                pids.append(int(d.name))
        except (OSError, ProcessLookupError):
            pass
    for pid in pids or [session]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def run(cmd, budget=None):
    """Runs one command line from the sandbox; returns (ok, why, output)."""
    p = subprocess.Popen(["bash", "-c", cmd], cwd=SANDBOX, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, errors="replace", start_new_session=True)
    out = []
    reader = threading.Thread(target=lambda: out.extend(iter(p.stdout.readline, "")), daemon=True)
    reader.start()
    t0, stopped = time.time(), False
    step = re.compile(r"^(\[\S+\] )?step +\d+", re.M)
    while p.poll() is None:
        text = "".join(out)
        if budget is not None and (step.search(text) or time.time() - t0 > budget):
            if not step.search(text) and not re.search(r"^(\[\S+\] )?(layout|world) +:", text, re.M):
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return False, f"no step line nor layout line within {budget} s", "".join(out)
            stop(p.pid, cmd)
            stopped = True
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return False, "did not stop within 120 s of SIGTERM", "".join(out)
            break
        if time.time() - t0 > 900:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return False, "still running after 900 s", "".join(out)
        time.sleep(0.1)
    reader.join(timeout=30)
    text = "".join(out)
    if re.search(r"bad input|error:|Traceback|terminate called", text):
        return False, f"exit {p.returncode} with an error message", text
    if stopped:
        return p.returncode in (0, 4, -signal.SIGTERM, 128 + signal.SIGTERM), f"exit {p.returncode} after SIGTERM", text
    return p.returncode == 0, f"exit {p.returncode}", text


def setup():
    subprocess.run(["rm", "-rf", str(WORK)], check=True)  # a fresh clone each time
    sandbox()
    # The quickstart's `./dev.sh train`: moe-launch on SY_RANKS (4) ranks, to the end.
    ok, why, out = run("build/bin/moe-launch --np 4")
    assert ok and (SANDBOX / "runs/tiny/checkpoints/step_00000300").is_dir(), f"{why}\n{out[-3000:]}"
    print(out[-600:])


def sections():
    sandbox()
    assert (SANDBOX / "runs/tiny/checkpoints/latest").exists(), "run CASE setup first"
    failures, ran, skipped = [], 0, 0
    netns_why = netns_unavailable()
    long_running = re.compile(r"(^|\s)(mpirun|build/bin/moe-train|build/bin/moe-launch)\b")
    for section, cmd in commands():
        head = cmd.split()[0]
        if head.startswith(NETNS) and netns_why:
            print(f"skip  [{section}] {cmd}   ({netns_why})")
            skipped += 1
            continue
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
