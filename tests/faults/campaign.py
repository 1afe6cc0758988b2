"""The fault campaign's harness: run a tool under a timeout, judge what it
did, keep a tally per case group, and print the table.

A case passes when the tool
  - exits 0 and that is correct (valid input, or an intact checkpoint), or
  - exits with a documented error code (2 bad input, 1 other failures) and
    the message names the culprit (file, dataset, attribute, key or flag), or
  - falls back correctly (checkpoint.fallback = true: resumes from an older
    intact checkpoint of the same run, saying so).
It fails on a crash (a signal, exit 134/139), a hang (every subprocess has
a timeout), an uncaught exception ("terminate called", a Python traceback),
a sanitizer report, a silent success on corrupt input, a message that does
not name the culprit, or a lost checkpoint (one that existed before the
case and that the case did not corrupt no longer verifies).

Cases known to fail because someone is fixing them are listed, by owner, in
EXPECTED_FAILURES (fnmatch patterns over case ids). A listed case that
fails is counted apart and does not fail the test; a listed case that
passes fails it ("delete the entry"), so the list never goes stale.
"""
import fnmatch
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY = "/usr/bin/python3"

# The small model of tests/ckpt/test_checkpoint.py, on one thread.
SMALL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=32",
         "model.dense_hidden=64", "moe.experts=8", "moe.expert_hidden=24", "moe.shared_experts=1",
         "moe.bias_update_rate=0.01", "train.global_batch=8", "train.micro_batch=0", "train.val_every=0",
         "train.log_every=1", "train.warmup_steps=2", "train.lr=1e-2", "train.threads=1"]

# One-rank moe-train without mpirun: an isolated singleton with the shared
# memory and self transports starts in ~0.3 s instead of ~1 s (it spawns no
# orted and probes no network); nothing it does is checkpoint-specific.
ENV = mpi_env(OMPI_MCA_ess_singleton_isolated="1", OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader",
              OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", OPENBLAS_NUM_THREADS="1",
              UBSAN_OPTIONS=os.environ.get("UBSAN_OPTIONS", "print_stacktrace=1"), PYTHONDONTWRITEBYTECODE="1")
SANITIZED = "ASAN_OPTIONS" in os.environ or os.environ.get("SY_SANITIZED") == "1"
# Sanitized binaries run several times slower.
SLOW = 4.0 if SANITIZED else 1.0

# ---------------------------------------------------------------- expected failures
# Cases known to fail, by owner: case id (exact, or an fnmatch pattern) ->
# "owner: what is wrong". Delete an entry when its fix lands: the campaign
# fails while a listed case passes. "known": reported in issue 15 and being
# fixed by its owner; "new": found by this campaign (see the report).
EXPECTED_FAILURES = {}


def _expect(owner, reason, *ids):
    for i in ids:
        EXPECTED_FAILURES[i] = f"{owner}: {reason}"


CKPT, CLI, DATA = "checkpoint/trainer", "CLI/apps", "data/config"

# Every case the campaign found failing has been fixed; list a new one here
# (with _expect(owner, reason, *case ids)) only while its fix is in progress.


def expected(case_id, why=None):
    """(pattern, reason) of the entry that expects case_id to fail, or None. A pattern
    "ID_GLOB :: WHY_GLOB" also matches the failure's description: for cases whose outcome
    depends on timing (a kill), matched only when the case fails, so never an unexpected pass."""
    for pat, reason in EXPECTED_FAILURES.items():
        if " :: " in pat:
            id_pat, why_pat = pat.split(" :: ", 1)
            if why is not None and fnmatch.fnmatchcase(case_id, id_pat) and fnmatch.fnmatchcase(why, why_pat):
                return pat, reason
        elif case_id == pat or fnmatch.fnmatchcase(case_id, pat):
            return pat, reason
    return None



# ---------------------------------------------------------------- running things

@dataclass
class Result:
    cmd: list
    rc: int
    out: str
    seconds: float
    timed_out: bool
    peak_mb: float = 0.0       # the largest resident size seen (VmHWM), when watched
    memory_blowup: bool = False  # killed for passing max_mb
    max_mb: int = 0


def shell_words(cmd):
    def q(a):
        a = a.decode("utf-8", "backslashreplace") if isinstance(a, bytes) else str(a)
        if len(a) > 120:
            a = a[:60] + f"...<{len(a)} chars>"
        return a if re.fullmatch(r"[\w./=:,+@%-]+", a) else "'" + a.replace("'", "'\\''") + "'"
    return " ".join(q(a) for a in cmd)


def _peak_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


MPI_INIT_FAILED = "An error occurred in MPI_Init"
RETRIED = []


def run(cmd, timeout, env=None, cwd=None, stdin=None, max_mb=2048):
    """run_once(), again once if MPI itself failed to start (seen rarely under heavy load: an
    environment problem, not the tool's; every retry is listed at the end)."""
    res = run_once(cmd, timeout, env, cwd, stdin, max_mb)
    if MPI_INIT_FAILED in res.out and stdin is None:
        RETRIED.append(f"{shell_words(cmd)[:200]}: {' '.join(res.out.split())[:600]}")
        res = run_once(cmd, timeout, env, cwd, stdin, max_mb)
    return res


def run_once(cmd, timeout, env=None, cwd=None, stdin=None, max_mb=2048):
    """Runs cmd (a list; bytes allowed) with a timeout, in its own session so a
    timeout kills everything it started. Its resident memory is watched: past
    max_mb it is killed and reported (a small input must not make a tool take
    gigabytes); the address space is capped at 8 GiB so nothing can take the
    machine (not under AddressSanitizer, which reserves terabytes)."""
    t0 = time.time()
    if SANITIZED:
        max_mb *= 3  # the sanitizer's shadow memory and quarantine

    def limits():
        import resource
        if not SANITIZED:
            resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from crashes

    p = subprocess.Popen([a if isinstance(a, bytes) else str(a) for a in cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL if stdin is None else stdin,
                         env=env or ENV, cwd=cwd, start_new_session=True, preexec_fn=limits)
    timed_out = blowup = False
    peak = 0.0
    step, deadline = 0.002, t0 + timeout * SLOW
    while True:
        try:
            out, _ = p.communicate(timeout=step)
            break
        except subprocess.TimeoutExpired:
            pass
        peak = max(peak, _peak_mb(p.pid))
        if peak > max_mb or time.time() > deadline:
            blowup, timed_out = peak > max_mb, peak <= max_mb
            kill_group(p)
            out, _ = p.communicate()
            break
        step = min(step * 2, 0.05)
    res = Result(list(cmd), p.returncode, out.decode("utf-8", "replace"), time.time() - t0, timed_out, peak, blowup,
                 max_mb)
    tool = Path(str(cmd[0])).name if not str(cmd[0]).endswith("python3") else Path(str(cmd[1])).name
    if os.environ.get("SY_FAULTS_SLOW") and res.seconds > float(os.environ["SY_FAULTS_SLOW"]):
        print(f"slow: {res.seconds:.1f} s exit {res.rc}: {shell_words(cmd)}", flush=True)
    with _lock:
        n, t = SPENT.get(tool, (0, 0.0))
        SPENT[tool] = (n + 1, t + res.seconds)
    return res


SPENT = {}  # tool -> (runs, seconds)
_lock = threading.Lock()


def resource_core():
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from crashes


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def moe_train_cmd(bin_dir, run_dir, sets, config=None):
    cmd = [str(Path(bin_dir) / "moe-train")] + ([str(config)] if config else [])
    for s in SMALL + [f"run.dir={run_dir}"] + list(sets):
        cmd += ["--set", s]
    return cmd


# ---------------------------------------------------------------- judging

CRASH_MARKS = [("terminate called", "an uncaught C++ exception"), ("Traceback (most recent call last)", "a Python traceback"),
               ("AddressSanitizer", "an AddressSanitizer report"), ("LeakSanitizer", "a LeakSanitizer report"),
               ("runtime error:", "an UndefinedBehaviorSanitizer report"), ("Segmentation fault", "a segfault"),
               ("core dumped", "a crash")]


def crash(res):
    """Why the run is a crash or hang (never acceptable), or None."""
    if res.memory_blowup:
        return f"memory blow-up: killed at {res.peak_mb:.0f} MB resident (the case allows {res.max_mb} MB)"
    if res.timed_out:
        return f"hang: no exit within {res.seconds:.0f} s"
    if res.rc is None or res.rc < 0:
        return f"killed by signal {-(res.rc or 0)} ({signal.Signals(-res.rc).name if res.rc else '?'})"
    if res.rc in (134, 136, 139) or res.rc > 128:
        return f"exit {res.rc} (an abort or a crash)"
    for mark, what in CRASH_MARKS:
        if mark in res.out:
            return f"{what} ('{mark}' in the output)"
    return None


def names_any(out, culprits):
    return not culprits or any(c in out for c in culprits)


# ---------------------------------------------------------------- tally

class Tally:
    """Counts per group and the failures, printed as a table at the end."""

    COLS = ("cases", "ok", "clean errors", "fallbacks", "expected fail", "failures")

    def __init__(self, title):
        self.title = title
        self.groups = {}
        self.failures = []   # (case id, why, command)
        self.xfails = []     # (case id, pattern, why)
        self.xpasses = []    # (case id, pattern)
        self.lock = threading.Lock()
        self.seen = set()
        self.tmp = ""

    def _row(self, group):
        return self.groups.setdefault(group, dict.fromkeys(self.COLS, 0))

    def record(self, group, case_id, verdict, why="", cmd=None):
        """verdict: 'ok', 'clean', 'fallback' or 'fail'."""
        why = why or ""
        if self.tmp:  # case ids are stable across runs: the scratch directory is $TMP
            case_id, why = case_id.replace(self.tmp, "$TMP"), why.replace(self.tmp, "$TMP")
        if os.environ.get("SY_FAULTS_VERBOSE"):
            print(f"{verdict:>8}  {case_id}", flush=True)
        with self.lock:
            assert case_id not in self.seen, f"duplicate case id {case_id}"
            self.seen.add(case_id)
            row = self._row(group)
            row["cases"] += 1
            exp = expected(case_id, why if verdict == "fail" else None)
            if verdict == "fail":
                if exp:
                    row["expected fail"] += 1
                    self.xfails.append((case_id, exp[0], why))
                else:
                    row["failures"] += 1
                    self.failures.append((case_id, why, shell_words(cmd) if cmd else ""))
            else:
                row[{"ok": "ok", "clean": "clean errors", "fallback": "fallbacks"}[verdict]] += 1
                if exp:
                    row["failures"] += 1
                    self.xpasses.append((case_id, exp[0]))

    def report(self):
        w = max([len(g) for g in self.groups] + [12])
        head = f"{'group':<{w}}  " + "  ".join(f"{c:>13}" for c in self.COLS)
        print(f"\n== {self.title}\n{head}\n{'-' * len(head)}")
        total = dict.fromkeys(self.COLS, 0)
        for g, row in self.groups.items():
            print(f"{g:<{w}}  " + "  ".join(f"{row[c]:>13}" for c in self.COLS))
            for c in self.COLS:
                total[c] += row[c]
        print(f"{'-' * len(head)}\n{'total':<{w}}  " + "  ".join(f"{total[c]:>13}" for c in self.COLS))
        if self.xfails:
            print(f"\nexpected failures ({len(self.xfails)}; see EXPECTED_FAILURES in tests/faults/campaign.py):")
            for case_id, pat, why in self.xfails:
                print(f"  [{EXPECTED_FAILURES[pat].split(':')[0]}] {case_id}: {why[:300]}")
        if self.xpasses:
            print(f"\nlisted as expected failures but passed ({len(self.xpasses)}): delete these entries "
                  f"from EXPECTED_FAILURES:")
            for case_id, pat in self.xpasses:
                print(f"  {case_id}   (pattern {pat!r})")
        if self.failures:
            print(f"\nFAILURES ({len(self.failures)}):")
            for case_id, why, cmd in self.failures:
                print(f"  {case_id}\n      {why[:1500]}\n      command: {cmd}")
        return 1 if self.failures or self.xpasses else 0


# ---------------------------------------------------------------- checkpoints that must not be lost

def tree_digest(path):
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


class Guard:
    """Checkpoints that exist before a case and must survive it: unchanged
    byte for byte, or (when a run legitimately re-saved them) still
    verifying with `moe-ckpt verify` and of the same run."""

    def __init__(self, bin_dir, dirs):
        self.bin = Path(bin_dir)
        self.dirs = {Path(d): tree_digest(d) for d in dirs}

    def lost(self):
        """What was lost ("" if nothing)."""
        for d, digest in self.dirs.items():
            if not d.is_dir():
                return f"checkpoint {d} is gone"
            if tree_digest(d) == digest:
                continue
            r = run([self.bin / "moe-ckpt", "verify", d], 120)
            if r.rc != 0:
                return f"checkpoint {d} was changed and no longer verifies: {r.out[-500:]}"
        return ""


HARNESS_ERRORS = []


def parallel(fn, items, workers=2):
    """fn(worker index, item) over items on `workers` threads (each worker
    owns its scratch copies), in order of items."""
    items = list(items)
    out = [None] * len(items)
    nxt = iter(range(len(items)))
    lock = threading.Lock()

    def work(w):
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                out[i] = fn(w, items[i])
            except Exception:  # a harness bug in one case must not hide the others' results
                import traceback
                HARNESS_ERRORS.append(f"case {items[i]!r:.200}: {traceback.format_exc()}")

    with ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(work, w) for w in range(workers)]:
            f.result()
    return out


def workers():
    return max(1, min(2, int(os.environ.get("SY_FAULTS_JOBS", "2"))))


def scratch_dir(name):
    """A fresh temporary directory, removed by cleanup() even when the test fails."""
    import tempfile
    return Path(tempfile.mkdtemp(prefix=f"sy-faults-{name}-"))


def main(cases, argv=None):
    """usage: SCRIPT BIN_DIR CASE; runs cases[CASE](bin_dir, tmp, tally)."""
    argv = argv or sys.argv
    if len(argv) != 3 or argv[2] not in cases:
        sys.exit(f"usage: {argv[0]} BIN_DIR CASE   (CASE: {', '.join(cases)})")
    bin_dir, name = Path(argv[1]).resolve(), argv[2]
    global SANITIZED, SLOW
    if not SANITIZED and b"__asan_init" in (bin_dir / "moe-ckpt").read_bytes():
        SANITIZED, SLOW = True, 4.0  # a -DSY_SANITIZE build run without the ctest environment
    tally = Tally(f"{Path(argv[0]).name} {name}")
    tmp = scratch_dir(name)
    tally.tmp = str(tmp)
    t0 = time.time()
    try:
        rc = cases[name](bin_dir, tmp, tally)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rc == 77:
        sys.exit(77)
    # Every part provokes errors: one that saw none tested nothing.
    if not any(row["clean errors"] + row["fallbacks"] + row["expected fail"] + row["failures"]
               for row in tally.groups.values()) and not name.startswith("sigkill"):
        tally.record("campaign", f"{name} provoked at least one error", "fail", "no case ended in an error")
    status = tally.report()
    for r in RETRIED:
        print(f"\nretried once because MPI failed to start: {r}")
    for e in HARNESS_ERRORS:
        print(f"\nHARNESS ERROR (the test itself failed): {e}")
        status = 1
    print("\ntime in tools: " + ", ".join(f"{k} {n} runs {t:.0f} s" for k, (n, t) in sorted(SPENT.items())))
    print(f"\n{name}: {'FAILED' if status else 'ok'} in {time.time() - t0:.0f} s")
    sys.exit(status)
