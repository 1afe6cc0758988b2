#!/usr/bin/env python3
"""Fault campaign, command lines: hostile arguments and paths for every tool
(moe-train, moe-launch incl. --dry-run and --report, moe-plan, moe-ckpt and
each of its commands, moe-generate, tools/moe_report.py): missing, extra and
garbage flags, negative and huge numbers, FIFOs, directories where files are
expected and the reverse, /dev/zero, paths under a regular file, nonexistent
paths, invalid UTF-8, very long arguments.

Each case lists the exit codes it may end with (the README: 0 success, 2 bad
input or usage, 1 other failures) and what the message must name (the flag,
the path or the value); none may crash, hang (FIFOs included), print a
traceback or an uncaught exception, or change a file it must not (an
existing output, the checkpoint it reads).

The tools of issue 19 (moe-eval, moe-ckpt import and upcycle, moe-train's
checkpoint.init_from and train.lr_groups) have a case of their own,
eval_import_upcycle, which also feeds them damaged Hugging Face directories
(a cut model.safetensors, garbage config.json, no config.json) and checks
that a refused import or upcycle leaves nothing behind.

usage: test_hostile_args.py BIN_DIR CASE     (CASE: train_launch_plan, ckpt_generate_report, eval_import_upcycle)
"""
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import campaign as C  # noqa: E402

REPORT = C.REPO / "tools" / "moe_report.py"
LONG = "x" * 20000
BAD_UTF8 = b"\xff\xfe\xc3\x28"


class Paths:
    """Hostile paths inside tmp, created once."""

    def __init__(self, tmp):
        t = Path(tmp) / "p"
        t.mkdir()
        self.fifo = t / "fifo"
        os.mkfifo(self.fifo)
        self.dir = t / "adir"
        self.dir.mkdir()
        self.file = t / "afile"
        self.file.write_text("a regular file, not what the tool wants\n")
        self.under_file = self.file / "x"
        self.missing = t / "nowhere" / "x"
        self.loop = t / "loop"
        self.loop.symlink_to(self.loop)
        self.zero = Path("/dev/zero")
        self.utf8 = bytes(t) + b"/bad" + BAD_UTF8
        self.long = str(t / ("l" * 5000))
        self.empty_file = t / "empty"
        self.empty_file.write_bytes(b"")
        self.binary = t / "binary"
        self.binary.write_bytes(random.Random(1).randbytes(4096))

    def inputs(self):
        """(label, path, culprit substring) for paths a tool should read."""
        return [("a FIFO", self.fifo, str(self.fifo)), ("a directory", self.dir, str(self.dir)),
                ("/dev/zero", self.zero, "/dev/zero"), ("a path under a regular file", self.under_file, "afile"),
                ("a nonexistent path", self.missing, "nowhere"), ("a symlink loop", self.loop, "loop"),
                ("invalid UTF-8", self.utf8, "bad"), ("a 5000-character name", self.long, "lllll"),
                ("an empty file", self.empty_file, "empty"), ("random bytes", self.binary, "binary"),
                ("an empty string", "", "")]

    def out_fifo(self):
        """A FIFO of its own for a case that may write to it: a writer opening the readers' FIFO would
        unblock a concurrent case that reads it (and feed it what it wrote)."""
        self.n_out = getattr(self, "n_out", 0) + 1
        p = self.fifo.parent / f"out_fifo_{self.n_out}"
        os.mkfifo(p)
        return p

    def outputs(self):
        """(label, path, culprit, may succeed) for paths a tool should write (must not exist yet)."""
        return [("an existing file", self.file, "afile", False), ("an existing directory", self.dir, "adir", False),
                ("a FIFO", self.out_fifo(), "fifo", False), ("a path under a regular file", self.under_file, "afile", False),
                ("/dev/full", Path("/dev/full"), "/dev/full", False), ("/dev/null", Path("/dev/null"), "/dev/null", False),
                ("a 5000-character name", self.long, "lllll", False), ("an empty string", "", "", False)]


def drain(fifo, seconds):
    """Reads the FIFO (a reader, as `tool --out >(cat)` would have) until its writer closes it."""
    import threading

    def read():
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return
        t0 = time.time()
        try:
            while time.time() - t0 < seconds:
                try:
                    if os.read(fd, 1 << 16) == b"" and time.time() - t0 > 0.5:
                        break
                except BlockingIOError:
                    time.sleep(0.01)
        finally:
            os.close(fd)
    th = threading.Thread(target=read, daemon=True)
    th.start()
    return th


def check(tally, group, cid, cmd, allowed, culprits=(), timeout=30, cwd=None, unchanged=(), env=None, max_mb=1024,
          reader=None, absent=()):
    """Runs one case. allowed: exit codes; culprits: the message must contain one (when it fails);
    reader: a FIFO the tool may write, read meanwhile; absent: paths a failed run must not leave behind."""
    before = {Path(p): snapshot(p) for p in unchanged}
    if reader:
        drain(reader, timeout)
    res = C.run(cmd, timeout, cwd=cwd, env=env, max_mb=max_mb)
    why = C.crash(res)
    verdict = "fail" if why else "ok" if res.rc == 0 else "clean"
    if not why and res.rc not in allowed:
        verdict, why = "fail", f"exit {res.rc} (want {' or '.join(map(str, allowed))}): {tail(res.out)}"
    elif not why and res.rc != 0 and culprits and not any(c and c in res.out for c in culprits):
        verdict, why = "fail", f"exit {res.rc}, but the message names none of {list(culprits)}: {tail(res.out)}"
    for p, snap in before.items():
        if snapshot(p) != snap:
            verdict, why = "fail", f"{p} was changed (it must not be): {why or tail(res.out)}"
    for p in absent:
        if res.rc != 0 and (os.path.lexists(p) or os.path.lexists(str(p) + ".tmp")):
            verdict, why = "fail", f"exit {res.rc}, but it left {p} behind: {why or tail(res.out)}"
    tally.record(group, cid, verdict, why or "", cmd)
    return res


def tail(out, n=400):
    return " ".join(out.split())[-n:]


def snapshot(p):
    p = Path(p)
    if p.is_symlink():
        return ("link", os.readlink(p))
    if p.is_dir():
        return ("dir", sorted((str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns) for q in p.rglob("*")))
    if p.is_fifo():
        return ("fifo",)
    if p.is_file():
        return ("file", p.read_bytes())
    return ("none",)


def gen_cmd(bin_dir, ck):
    return [bin_dir / "moe-generate", ck, "--prompt", "a", "--max-new", "2", "--quiet"]


def corpus(path):
    rng = random.Random(7)
    words = "the yard switches wagons along rails while experts route tokens to their tracks".split()
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(9)) + ".\n" for _ in range(2000)))


# ---------------------------------------------------------------- moe-train, moe-launch, moe-plan

def case_train_launch_plan(bin_dir, tmp, tally):
    tmp = Path(tmp)
    P = Paths(tmp)
    corpus(tmp / "corpus.txt")
    run = tmp / "run"
    safe = [f'data.train=["{tmp / "corpus.txt"}"]', "train.steps=2", "checkpoint.at_end=false"]
    safe_args = [a for s in C.SMALL + safe for a in ("--set", s)]
    train = [bin_dir / "moe-train"]
    cases = []  # (group, id, cmd, allowed, culprits, extra kwargs)

    def add(group, cid, cmd, allowed, culprits=(), **kw):
        cases.append((group, cid, cmd, allowed, culprits, kw))

    # moe-train: flags
    for cid, args, cul in (
            ("an unknown flag", ["--bogus"], ["--bogus"]), ("a single dash flag", ["-x"], ["-x"]),
            ("--set without a value", ["--set"], ["--set"]), ("--set without '='", ["--set", "train.steps"], ["train.steps"]),
            ("--set '=1'", ["--set", "=1"], ["=1", "key"]), ("--set 'train.steps='", ["--set", "train.steps="], ["train.steps"]),
            ("--set a non-number", ["--set", "train.steps=abc"], ["train.steps"]),
            ("--set a negative step count", ["--set", "train.steps=-5"], ["train.steps"]),
            ("--set 2^64", ["--set", "train.steps=18446744073709551616"], ["train.steps"]),
            ("--set a deep key", ["--set", "a.b.c.d=1"], ["a.b.c.d", "'a'"]),
            ("--set an unknown section", ["--set", "nosuch.key=1"], ["nosuch"]),
            ("--set NaN lr", ["--set", "train.lr=nan"], ["train.lr"]),
            ("--set inf lr", ["--set", "train.lr=inf"], ["train.lr"]),
            ("--set a 20000-character run.name (run.dir is set)", ["--set", "run.name=" + LONG], ["run.name"]),
            ("--set a 20000-character key", ["--set", LONG + "=1"], ["xxxxxxxx"]),
            ("--set invalid UTF-8 in a key", ["--set", b"train.st\xffeps=1"], ["train.st", "key"]),
            ("--set invalid UTF-8 in a string", ["--set", b'run.name="a\xffb"'], ["run.name"]),
            ("two config files", [P.file, P.file], ["afile", "config"]),
            ("--print-config and --help-config", ["--print-config", "--help-config"], []),
    ):
        # run.dir is given, so a long or odd run.name names nothing on disk: accepting it is fine
        allowed = (0, 2) if cid.startswith(("--print-config", "--set a 20000-character run.name",
                                            "--set invalid UTF-8 in a string")) else (2,)
        add("moe-train flags", f"moe-train {cid}", train + safe_args + args, allowed, cul)
    for label, path, cul in P.inputs():
        # an empty file is an empty TOML document (every default); "" is no config (the built-in one)
        allowed = (0, 2) if label in ("an empty file", "an empty string") else (2,)
        add("moe-train paths", f"moe-train config = {label}", train + [path] + safe_args, allowed, [cul, "config"])
    add("moe-train paths", "moe-train checkpoint.resume = a FIFO", train + safe_args +
        ["--set", f"checkpoint.resume={P.fifo}"], (2,), [str(P.fifo)])
    add("moe-train paths", "moe-train checkpoint.resume = /dev/zero", train + safe_args +
        ["--set", "checkpoint.resume=/dev/zero"], (2,), ["/dev/zero"])
    add("moe-train paths", "moe-train checkpoint.resume = a regular file", train + safe_args +
        ["--set", f"checkpoint.resume={P.binary}"], (2,), ["binary"])
    add("moe-train paths", "moe-train run.dir under a regular file", train + safe_args +
        ["--set", f"run.dir={P.under_file}"], (1, 2), ["afile"])
    add("moe-train paths", "moe-train run.dir = /dev/null", train + safe_args + ["--set", "run.dir=/dev/null"],
        (1, 2), ["/dev/null"])
    add("moe-train paths", "moe-train checkpoint.dir = a FIFO", train + safe_args +
        ["--set", f"checkpoint.dir={P.fifo}", "--set", "checkpoint.interval=1"], (1, 2), [str(P.fifo)])

    # moe-launch (always --dry-run unless the case is an error before any launch)
    launch = [bin_dir / "moe-launch"]
    cfg = tmp / "ok.toml"
    cfg.write_text(f'[data]\ntrain = ["{tmp / "corpus.txt"}"]\n[run]\ndir = "{tmp / "lrun"}"\n')
    for cid, args, allowed, cul in (
            ("an unknown flag", ["--bogus"], (2,), ["--bogus"]), ("--np 0", ["--np", "0"], (2,), ["--np"]),
            ("--np -1", ["--np", "-1"], (2,), ["--np"]), ("--np 2^40", ["--np", str(1 << 40)], (2,), ["--np"]),
            ("--np abc", ["--np", "abc"], (2,), ["--np"]), ("--np without a value", ["--np"], (2,), ["--np"]),
            ("--set garbage", ["--set", "garbage"], (2,), ["garbage"]),
            ("--json without --dry-run", ["--json", "--np", "0"], (2,), ["--np"]),
            ("--report and --dry-run on nothing", ["--report", P.missing], (1, 2), ["nowhere"]),
    ):
        add("moe-launch flags", f"moe-launch {cid}", launch + [cfg, "--dry-run"] + args, allowed, cul)
    for label, path, cul in P.inputs():
        if label == "an empty string":
            continue
        add("moe-launch paths", f"moe-launch --dry-run config = {label}", launch + [path, "--dry-run", "--np", "1"],
            (2,), [cul, "config"])
        add("moe-launch paths", f"moe-launch --dry-run --hostfile {label}", launch + [cfg, "--dry-run", "--hostfile",
                                                                                    path], (2,), [cul, "hostfile"])
        add("moe-launch paths", f"moe-launch --dry-run --train-binary {label}",
            launch + [cfg, "--dry-run", "--np", "1", "--train-binary", path], (2,), [cul, "moe-train", "binary"])
        add("moe-launch paths", f"moe-launch --report {label}", launch + ["--report", path], (1, 2),
            [cul, "metrics", "report"])
    # (a host name mpirun cannot resolve is mpirun's to report when the job starts)
    for label, text, allowed in (("garbage", b"\x00\xff garbage\n", (0, 2)), ("slots=-1", b"localhost slots=-1\n", (2,)),
                                 ("slots=2^40", b"localhost slots=1099511627776\n", (2,)),
                                 ("slots=abc", b"localhost slots=abc\n", (2,)),
                                 ("a 20000-character host", LONG.encode() + b" slots=1\n", (0, 2)),
                                 ("invalid UTF-8", BAD_UTF8 + b"\n", (0, 2)), ("no hosts", b"# nothing\n", (2,))):
        hf = tmp / f"hosts_{len(cases)}"
        hf.write_bytes(text)
        add("moe-launch hostfile", f"moe-launch --dry-run --hostfile with {label}",
            launch + [cfg, "--dry-run", "--hostfile", hf], allowed, [hf.name, "hostfile"])

    # moe-plan
    plan = [bin_dir / "moe-plan"]
    for cid, args, allowed, cul in (
            ("an unknown flag", ["--bogus"], (2,), ["--bogus"]), ("--pp -1", ["--pp", "-1"], (2,), ["--pp"]),
            ("--pp 2^40", ["--pp", str(1 << 40)], (2,), ["--pp", "parallel.pp"]),
            ("--pp 1000", ["--pp", "1000"], (2,), ["pp"]), ("--pp abc", ["--pp", "abc"], (2,), ["--pp"]),
            ("--schedule bogus", ["--schedule", "bogus"], (2,), ["bogus", "schedule"]),
            ("--schedule ''", ["--schedule", ""], (0, 2), ["schedule"]),
            ("--schedule invalid UTF-8", ["--schedule", BAD_UTF8], (2,), ["schedule"]),
            ("--microbatches -1", ["--microbatches", "-1"], (2,), ["--microbatches"]),
            ("--microbatches 2^40", ["--pp", "2", "--microbatches", str(1 << 40)], (2,), ["microbatches"]),
            ("--virtual -1", ["--virtual", "-1"], (2,), ["--virtual"]),
            ("--virtual 1000", ["--pp", "2", "--virtual", "1000"], (2,), ["virtual"]),
            ("--width 0", ["--width", "0"], (2,), ["--width"]), ("--width 1001", ["--width", "1001"], (2,), ["--width"]),
            ("--width abc", ["--width", "abc"], (2,), ["--width"]),
            ("--set parallel.pp=2^40", ["--set", f"parallel.pp={1 << 40}"], (2,), ["parallel.pp"]),
            ("pp 4, 8 micro-batches, zb, --ops", ["--pp", "4", "--microbatches", "8", "--schedule", "zb", "--ops"],
             (0,), []),
    ):
        add("moe-plan flags", f"moe-plan {cid}", plan + args, allowed, cul)
    for label, path, cul in P.inputs():
        if label != "an empty string":
            add("moe-plan paths", f"moe-plan config = {label}", plan + [path], (2,), [cul, "config"])
    # --svg is an output a user names: replacing a file, writing into /dev/null or into a FIFO
    # someone reads is fine; "" means no picture.
    svg_ok = {"an existing file": (0, 1, 2), "a FIFO": (0, 1, 2), "/dev/null": (0,), "an empty string": (0,)}
    for label, path, cul, _ in P.outputs():
        unchanged = [path] if label == "an existing directory" else []
        add("moe-plan paths", f"moe-plan --svg {label} (with a reader)" if label == "a FIFO" else
            f"moe-plan --svg {label}", plan + ["--svg", path], svg_ok.get(label, (1, 2)), [cul, "--svg"],
            unchanged=unchanged, reader=path if label == "a FIFO" else None)
    add("moe-plan paths", "moe-plan --svg in a new directory", plan + ["--svg", tmp / "new" / "t.svg"], (0, 1, 2),
        ["--svg", "new"])

    def one(w, case):
        group, cid, cmd, allowed, culprits, kw = case
        if group.startswith("moe-train"):
            # a run directory of its own (one job per checkpoint directory; a later --set wins)
            cmd = cmd[:1] + ["--set", f"run.dir={run}_{zlib.crc32(cid.encode()):08x}"] + cmd[1:]
        check(tally, group, cid, cmd, allowed, culprits, timeout=6, cwd=tmp, **kw)

    C.parallel(one, cases, C.workers())
    if (tmp / "lrun").exists() and any((tmp / "lrun").rglob("metrics.jsonl")):
        tally.record("moe-launch flags", "moe-launch --dry-run never trains", "fail", "a dry run started training")


# ---------------------------------------------------------------- moe-ckpt, moe-generate, moe_report.py

def case_ckpt_generate_report(bin_dir, tmp, tally):
    tmp = Path(tmp)
    P = Paths(tmp)
    corpus(tmp / "corpus.txt")
    run = tmp / "run"
    res = C.run(C.moe_train_cmd(bin_dir, run, [f'data.train=["{tmp / "corpus.txt"}"]', "train.steps=2",
                                               "checkpoint.interval=2"]), 120)
    assert res.rc == 0, res.out[-2000:]
    ck = run / "checkpoints" / "step_00000002"
    guard = C.Guard(bin_dir, [ck])
    ckpt = [bin_dir / "moe-ckpt"]
    cases = []

    def add(group, cid, cmd, allowed, culprits=(), **kw):
        cases.append((group, cid, cmd, allowed, culprits, kw))

    add("moe-ckpt usage", "moe-ckpt without a command", ckpt, (2,), ["command", "subcommand"])
    add("moe-ckpt usage", "moe-ckpt bogus", ckpt + ["bogus", ck], (2,), ["bogus"])
    add("moe-ckpt usage", "moe-ckpt --bogus", ckpt + ["--bogus", "ls", ck], (2,), ["--bogus"])
    add("moe-ckpt usage", "moe-ckpt invalid UTF-8 command", ckpt + [BAD_UTF8, ck], (2,), ["command"])
    add("moe-ckpt usage", "moe-ckpt a 20000-character command", ckpt + [LONG, ck], (2,), ["command", "xxxx"])
    commands = ["ls", "info", "loads", "show", "verify", "diff", "consolidate", "reshard", "export"]
    full = {"show": ["embed.weight"], "diff": [ck], "consolidate": [tmp / "nope.h5"], "reshard": [tmp / "nope",
                                                                                                 "--dp", "1"],
            "export": [tmp / "nope"]}
    for c in commands:
        add("moe-ckpt usage", f"moe-ckpt {c} without arguments", ckpt + [c], (2,), ["required", "checkpoint"])
        add("moe-ckpt usage", f"moe-ckpt {c} with an unknown flag", ckpt + [c, ck] + full.get(c, []) + ["--bogus"],
            (2,), ["--bogus"])
    # every command that reads a checkpoint, on hostile paths
    reads = {"ls": [], "info": [], "loads": [], "show": ["embed.weight"], "verify": [], "diff": [ck],
             "consolidate": [tmp / "never1.h5"], "reshard": [tmp / "never2", "--dp", "1"],
             "export": [tmp / "never3", "--format", "deepseek-v3"]}
    for c, rest in reads.items():
        for label, path, cul in P.inputs():
            add("moe-ckpt paths", f"moe-ckpt {c} on {label}", ckpt + [c, path] + rest,
                (1, 2) if c == "verify" else (2,), [cul, "checkpoint"] if cul else ["checkpoint"])
    add("moe-ckpt paths", "moe-ckpt diff against a FIFO", ckpt + ["diff", ck, P.fifo], (2,), [str(P.fifo)])
    add("moe-ckpt paths", "moe-ckpt diff against /dev/zero", ckpt + ["diff", ck, "/dev/zero"], (2,), ["/dev/zero"])
    add("moe-ckpt paths", "moe-ckpt info on a step's shard file", ckpt + ["info", ck / "shard_00000.h5"], (2,),
        ["shard_00000.h5"])
    # outputs
    for c, extra in (("consolidate", []), ("reshard", ["--dp", "1"]), ("export", ["--format", "mixtral"])):
        for label, path, cul, _ in P.outputs():
            unchanged = [path] if label in ("an existing file", "an existing directory") else []
            add("moe-ckpt outputs", f"moe-ckpt {c} into {label}", ckpt + [c, ck, path] + extra, (1, 2), [cul, "out"],
                unchanged=unchanged)
    # show
    for cid, args, cul in (
            ("an unknown tensor", ["nosuch.weight"], ["nosuch.weight"]), ("--group bogus", ["embed.weight", "--group", "x"],
                                                                           ["--group"]),
            ("--bins 0", ["embed.weight", "--bins", "0"], ["--bins"]), ("--bins -5", ["embed.weight", "--bins", "-5"],
                                                                        ["--bins"]),
            ("--bins 2^40", ["embed.weight", "--bins", str(1 << 40)], ["--bins"]),
            ("--bins abc", ["embed.weight", "--bins", "abc"], ["--bins"]),
            ("--slice a:b", ["embed.weight", "--slice", "a:b"], ["--slice"]),
            ("--slice 0:99999999999999999999", ["embed.weight", "--slice", "0:99999999999999999999"], ["--slice"]),
            ("--slice 5:2", ["embed.weight", "--slice", "5:2"], ["--slice"]),
            ("--slice -1:3", ["embed.weight", "--slice", "-1:3"], ["--slice"]),

            ("--slice 1:2:3", ["embed.weight", "--slice", "1:2:3"], ["--slice"]),
            ("--slice 0:8193 (past the end)", ["embed.weight", "--slice", "0:8193"], ["--slice"]),
            ("a tensor name of invalid UTF-8", [BAD_UTF8], ["tensor", "name"]),
            ("a 20000-character tensor name", [LONG], ["tensor", "xxxx"]),
    ):
        add("moe-ckpt show", f"moe-ckpt show {cid}", ckpt + ["show", ck] + args, (2,), cul)
    # A checkpoint whose config text holds invalid UTF-8 (run.name, accepted by moe-train): every
    # command still answers, JSON included.
    odd = tmp / "run_utf8"
    res = C.run(C.moe_train_cmd(bin_dir, odd, [f'data.train=["{tmp / "corpus.txt"}"]', "train.steps=1"]) +
                ["--set", b'run.name="a\xffb"'], 120)
    if res.rc == 0:
        ock = odd / "checkpoints" / "step_00000001"
        for c, rest in (("info", []), ("ls", []), ("loads", []), ("verify", []), ("diff", [ock])):
            for js in ([], ["--json"]):
                add("moe-ckpt odd config", f"moe-ckpt {' '.join(js + [c])} on a config with invalid UTF-8",
                    ckpt + js + [c, ock] + rest, (0,))
        add("moe-ckpt odd config", "moe-generate on a config with invalid UTF-8", gen_cmd(bin_dir, odd), (0,))
    add("moe-ckpt show", "moe-ckpt show --slice ':' (everything, or refused)", ckpt + ["show", ck, "embed.weight",
                                                                                     "--slice", ":"], (0, 2), ["--slice"])
    add("moe-ckpt show", "moe-ckpt show --bins 10000 --slice 0:0 (valid)", ckpt + ["show", ck, "embed.weight",
                                                                                 "--bins", "10000", "--slice", "0:0"],
        (0,))
    # reshard numbers
    for cid, args, cul in (("--dp -2", ["--dp", "-2"], ["--dp"]), ("--dp 0", ["--dp", "0"], ["--dp"]),
                           ("--dp 2^40", ["--dp", str(1 << 40)], ["--dp"]), ("--dp abc", ["--dp", "abc"], ["--dp"]),
                           ("--dp 3 (does not fit the experts)", ["--dp", "3", "--ep", "3"], ["--ep", "3"]),
                           ("--ep -1", ["--dp", "2", "--ep", "-1"], ["--ep"]),
                           ("--pp 0", ["--dp", "1", "--pp", "0"], ["--pp"]),
                           ("--pp 1000", ["--dp", "1", "--pp", "1000"], ["pp", "layers"])):
        add("moe-ckpt reshard", f"moe-ckpt reshard {cid}", ckpt + ["reshard", ck, tmp / f"rs{len(cases)}"] + args,
            (2,), cul)
    for fmt in ("gguf", "", BAD_UTF8, LONG):
        add("moe-ckpt export", f"moe-ckpt export --format {fmt[:10]!r}", ckpt + ["export", ck, tmp / f"ex{len(cases)}",
                                                                           "--format", fmt], (2,), ["--format"])
    add("moe-ckpt export", "moe-ckpt export --json after the command (valid)",
        ckpt + ["export", ck, tmp / "exj", "--format", "deepseek-v3", "--json"], (0,))

    # moe-generate
    gen = [bin_dir / "moe-generate"]
    g = gen + [run, "--quiet"]
    add("moe-generate usage", "moe-generate without a checkpoint", gen, (2,), ["checkpoint", "required"])
    for cid, args, cul in (
            ("an unknown flag", ["--bogus"], ["--bogus"]), ("--max-new -1", ["--prompt", "a", "--max-new", "-1"],
                                                            ["--max-new"]),
            ("--max-new 2^40", ["--prompt", "a", "--max-new", str(1 << 40)], ["--max-new"]),
            ("--max-new abc", ["--prompt", "a", "--max-new", "abc"], ["--max-new"]),
            ("--temperature -1", ["--prompt", "a", "--temperature", "-1"], ["--temperature"]),
            ("--temperature nan", ["--prompt", "a", "--temperature", "nan"], ["--temperature"]),
            ("--temperature inf", ["--prompt", "a", "--temperature", "inf"], ["--temperature"]),
            ("--temperature 1e400", ["--prompt", "a", "--temperature", "1e400"], ["--temperature"]),
            ("--top-p 0", ["--prompt", "a", "--top-p", "0"], ["--top-p"]),
            ("--top-p 1.5", ["--prompt", "a", "--top-p", "1.5"], ["--top-p"]),
            ("--top-p nan", ["--prompt", "a", "--top-p", "nan"], ["--top-p"]),
            ("--top-k -1", ["--prompt", "a", "--top-k", "-1"], ["--top-k"]),
            ("--top-k 2^40", ["--prompt", "a", "--top-k", str(1 << 40)], ["--top-k"]),
            ("--seed abc", ["--prompt", "a", "--seed", "abc"], ["--seed"]),
            ("--seed 2^64", ["--prompt", "a", "--seed", str(1 << 64)], ["--seed"]),
            ("--context -1", ["--prompt", "a", "--context", "-1"], ["--context"]),
            ("--context 2^40", ["--prompt", "a", "--context", str(1 << 40)], ["--context"]),
            ("an empty prompt", ["--prompt", ""], ["prompt"]),
            ("a 20000-byte prompt", ["--prompt", LONG], ["prompt", "context"]),
            ("--prompt and --prompt-ids", ["--prompt", "a", "--prompt-ids", "1"], ["--prompt"]),
            ("--prompt-ids garbage", ["--prompt-ids", "1,x,3"], ["--prompt-ids", "'x'"]),
            ("--prompt-ids 999999", ["--prompt-ids", "999999"], ["999999"]),
            ("--prompt-ids -1", ["--prompt-ids", "-1"], ["-1"]),
            ("--prompt-ids 2^40", ["--prompt-ids", str(1 << 40)], ["--prompt-ids", str(1 << 40)]),
            ("--prompt-ids ',,,'", ["--prompt-ids", ",,,"], ["--prompt-ids"]),
            ("--logits without --json", ["--prompt", "a", "--logits"], ["--logits", "--json"]),
    ):
        add("moe-generate flags", f"moe-generate {cid}", g + args, (2,), cul)
    add("moe-generate flags", "moe-generate a prompt of invalid UTF-8 (bytes are tokens)",
        g + ["--prompt", BAD_UTF8, "--max-new", "2"], (0,))
    add("moe-generate flags", "moe-generate --max-new 0 --json --logits (valid)",
        g + ["--prompt", "ab", "--max-new", "0", "--json", "--logits"], (0,))
    for label, path, cul in P.inputs():
        add("moe-generate paths", f"moe-generate on {label}", gen + [path, "--prompt", "a", "--max-new", "1"], (2,),
            [cul, "checkpoint"] if cul else ["checkpoint"])

    # tools/moe_report.py and moe-launch --report
    rep = [C.PY, REPORT]
    add("moe_report.py", "moe_report.py without arguments", rep, (1, 2), ["usage"])
    add("moe_report.py", "moe_report.py with two arguments", rep + [run, run], (1, 2), ["usage"])
    for label, path, cul in P.inputs():
        if label not in ("an empty string",):
            add("moe_report.py", f"moe_report.py on {label}", rep + [path], (1, 2), [cul, "metrics", "report"])
    step = b'{"step": 1, "loss": 5.5, "lr": 0.001, "tokens_per_s": 100}\n'
    metrics = {
        "empty": (b"", (1,)), "only events": (b'{"event": "start", "run_id": "x"}\n', (1,)),
        "events and steps": (b'{"event": "start"}\n' + step + b'{"event": "resume", "from_step": 1}\n' + step, (0,)),
        "a string step": (b'{"step": "1", "loss": 2}\n' + step, (0,)), "no loss": (b'{"step": 2}\n' + step, (0,)),
        "invalid UTF-8": (b'{"step": 3, "loss": "\xff"}\n' + step, (0,)), "NaN and Infinity":
            (b'{"step": 2, "loss": NaN}\n{"step": 3, "loss": Infinity}\n' + step, (0,)),
        "1e400": (b'{"step": 2, "loss": 1e400}\n' + step, (0,)), "a JSON array": (b"[1, 2, 3]\n" + step, (0,)),
        "deep nesting": (b"[" * 100000 + b"]" * 100000 + b"\n" + step, (0,)),
        "a cut last line": (step + b'{"step": 2, "lo', (0,)),
        "a 10 MB line": (b'{"step": 2, "loss": 1, "x": "' + b"y" * 10_000_000 + b'"}\n' + step, (0,)),
        "huge step numbers": (b'{"step": 1e300, "loss": 1}\n{"step": -5, "loss": 1}\n' + step, (0,)),
        "expert_load of strings": (b'{"step": 2, "loss": 1, "expert_load": [["a", "b"]]}\n' + step, (0,)),
        "imbalance null": (b'{"step": 2, "loss": 1, "imbalance": null, "dropped_frac": "x"}\n' + step, (0,)),
    }
    for label, (text, allowed) in metrics.items():
        d = tmp / f"rep_{len(cases)}"
        d.mkdir()
        (d / "metrics.jsonl").write_bytes(text)
        add("moe_report.py", f"moe_report.py on metrics with {label}", rep + [d], allowed, ["metrics"],
            max_mb=2048)
        if label in ("empty", "events and steps", "invalid UTF-8", "deep nesting", "a 10 MB line"):
            add("moe-launch --report", f"moe-launch --report on metrics with {label}",
                [bin_dir / "moe-launch", "--report", d], allowed, ["metrics"], max_mb=2048)
    for label, make in (("a directory", lambda p: p.mkdir()), ("a FIFO", lambda p: os.mkfifo(p)),
                        ("/dev/zero", lambda p: p.symlink_to("/dev/zero"))):
        d = tmp / f"rep_{len(cases)}"
        d.mkdir()
        make(d / "metrics.jsonl")
        add("moe_report.py", f"moe_report.py on metrics.jsonl that is {label}", rep + [d], (1, 2), ["metrics.jsonl"])
        add("moe-launch --report", f"moe-launch --report on metrics.jsonl that is {label}",
            [bin_dir / "moe-launch", "--report", d], (1, 2), ["metrics.jsonl"])
    d = tmp / "rep_ro"
    d.mkdir()
    (d / "metrics.jsonl").write_bytes(step)
    (d / "report").write_text("a file where the report directory goes\n")
    add("moe_report.py", "moe_report.py when report/ is a regular file", rep + [d], (1, 2), ["report"],
        unchanged=[d / "report"])

    def one(w, case):
        group, cid, cmd, allowed, culprits, kw = case
        check(tally, group, cid, cmd, allowed, culprits, timeout=20 if "report" in group else 8, cwd=tmp, **kw)

    C.parallel(one, cases, C.workers())
    lost = guard.lost()
    tally.record("moe-ckpt paths", "the checkpoint every case read is unchanged", "fail" if lost else "ok", lost)


# ---------------------------------------------------------------- moe-eval, moe-ckpt import / upcycle, init_from, lr_groups

# The checkpoints of this case: MoE that a Mixtral loader reads exactly (so export --format mixtral works), and a
# fully dense one (what upcycle takes).
MIXTRAL_OK = ["model.dense_layers=0", "moe.shared_experts=0", "moe.bias_update_rate=0"]
DENSE = ["model.dense_layers=3", "moe.shared_experts=0", "moe.bias_update_rate=0"]


def case_eval_import_upcycle(bin_dir, tmp, tally):
    import shutil
    tmp = Path(tmp)
    P = Paths(tmp)
    corpus(tmp / "corpus.txt")
    data = [f'data.train=["{tmp / "corpus.txt"}"]', "train.steps=1", "checkpoint.interval=1"]
    made = C.parallel(lambda w, a: C.run(C.moe_train_cmd(bin_dir, tmp / a[0], data + a[1]), 120),
                      [("moe", MIXTRAL_OK), ("dense", DENSE)], 2)
    for r in made:
        assert r is not None and r.rc == 0, r.out[-2000:] if r else C.HARNESS_ERRORS
    ck, dense = tmp / "moe" / "checkpoints" / "step_00000001", tmp / "dense" / "checkpoints" / "step_00000001"
    ckpt = [bin_dir / "moe-ckpt"]
    hf = tmp / "hf"
    res = C.run(ckpt + ["export", ck, hf, "--format", "mixtral"], 60)
    assert res.rc == 0, res.out[-2000:]
    guard = C.Guard(bin_dir, [ck, dense])
    hf_digest = C.tree_digest(hf)

    # Damaged Hugging Face directories: a copy of the export each, one thing wrong.
    def hf_copy(name, damage):
        d = tmp / f"hf_{name}"
        shutil.copytree(hf, d)
        damage(d)
        return d
    st_size = (hf / "model.safetensors").stat().st_size
    header_len = int.from_bytes((hf / "model.safetensors").read_bytes()[:8], "little")

    def cut(n):
        def f(d):
            with open(d / "model.safetensors", "r+b") as fh:
                fh.truncate(n)
        return f

    def write(name, data_):
        def f(d):
            (d / name).unlink()
            (d / name).write_bytes(data_)
        return f

    def replace(name, make):
        def f(d):
            (d / name).unlink()
            make(d / name)
        return f

    def header(text):
        def f(d):
            body = (d / "model.safetensors").read_bytes()[8 + header_len:]
            (d / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + body)
        return f
    damaged = [  # (label, directory, what the message must name)
        ("a model.safetensors cut in its data", hf_copy("cut_data", cut(st_size - 100)), ["model.safetensors"]),
        ("a model.safetensors cut in its header", hf_copy("cut_header", cut(8 + header_len // 2)),
         ["model.safetensors"]),
        ("a model.safetensors of 3 bytes", hf_copy("cut_3", cut(3)), ["model.safetensors"]),
        ("an empty model.safetensors", hf_copy("empty_st", cut(0)), ["model.safetensors"]),
        ("a header length of 2^63", hf_copy("huge_header", lambda d: (d / "model.safetensors").write_bytes(
            (1 << 63).to_bytes(8, "little") + b"{}")), ["model.safetensors"]),
        ("a header of garbage JSON", hf_copy("garbage_header", header(b"{not json at all")), ["model.safetensors"]),
        ("a header that is a JSON list", hf_copy("list_header", header(b"[1, 2, 3]")), ["model.safetensors"]),
        ("a tensor's offsets past the end", hf_copy("offsets", header(
            b'{"embed_tokens.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 99999999999]}}')),
         ["model.safetensors"]),
        ("a config.json of garbage JSON", hf_copy("garbage_cfg", write("config.json", b"{ this is : not json")),
         ["config.json"]),
        ("a config.json of invalid UTF-8", hf_copy("utf8_cfg", write("config.json", b'{"a": "' + BAD_UTF8 + b'"}')),
         ["config.json"]),
        ("a config.json that is a list", hf_copy("list_cfg", write("config.json", b"[]")), ["config.json"]),
        ("an empty config.json", hf_copy("empty_cfg", write("config.json", b"")), ["config.json"]),
        ("a config.json nested 100000 deep", hf_copy("deep_cfg", write("config.json", b"[" * 100000 + b"]" * 100000)),
         ["config.json"]),
        ("a config.json with hidden_size -1", hf_copy("neg_cfg", lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"hidden_size": ', '"hidden_size": -1, "x_": '))),
         ["config.json", "hidden_size"]),
        ("no config.json", hf_copy("no_cfg", lambda d: (d / "config.json").unlink()), ["config.json"]),
        ("config.json a directory", hf_copy("dir_cfg", replace("config.json", lambda p: p.mkdir())), ["config.json"]),
        ("config.json a FIFO", hf_copy("fifo_cfg", replace("config.json", os.mkfifo)), ["config.json"]),
        ("config.json -> /dev/zero", hf_copy("zero_cfg", replace("config.json", lambda p: p.symlink_to("/dev/zero"))),
         ["config.json"]),
        ("config.json a symlink loop", hf_copy("loop_cfg", replace("config.json", lambda p: p.symlink_to(p))),
         ["config.json"]),
        ("no model.safetensors", hf_copy("no_st", lambda d: (d / "model.safetensors").unlink()),
         ["model.safetensors", "safetensors"]),
        ("model.safetensors a directory", hf_copy("dir_st", replace("model.safetensors", lambda p: p.mkdir())),
         ["model.safetensors"]),
        ("model.safetensors a FIFO", hf_copy("fifo_st", replace("model.safetensors", os.mkfifo)),
         ["model.safetensors"]),
        ("model.safetensors -> /dev/zero", hf_copy("zero_st", replace("model.safetensors",
                                                                     lambda p: p.symlink_to("/dev/zero"))),
         ["model.safetensors"]),
    ]
    hdr = (hf / "model.safetensors").read_bytes()[8:8 + header_len]
    damaged += [
        ("a tensor of dtype Q4_K", hf_copy("dtype", header(hdr.replace(b'"F32"', b'"Q4_K"', 1))),
         ["model.safetensors"]),
        ("a tensor whose shape disagrees with its bytes", hf_copy("shape", header(
            hdr.replace(b'"shape":[', b'"shape":[3,', 1).replace(b'"shape": [', b'"shape": [3, ', 1))),
         ["model.safetensors"]),
    ]
    idx = "model.safetensors.index.json"

    def index(text, keep=False):
        def f(d):
            (d / idx).write_bytes(text)
            if not keep:
                (d / "model.safetensors").rename(d / "part-1.safetensors")
        return f
    damaged += [
        ("an index of garbage JSON", hf_copy("idx_garbage", index(b"{ nope")), [idx]),
        ("an index without weight_map", hf_copy("idx_nomap", index(b'{"metadata": {}}')), [idx]),
        ("an index naming a missing file", hf_copy("idx_missing", index(
            b'{"weight_map": {"model.embed_tokens.weight": "nosuch.safetensors"}}')), ["nosuch.safetensors"]),
        ("an index naming ../ (outside the directory)", hf_copy("idx_up", index(
            b'{"weight_map": {"model.embed_tokens.weight": "../hf/model.safetensors"}}')), [idx]),
        ("an index beside model.safetensors", hf_copy("idx_both", index(
            b'{"weight_map": {"model.embed_tokens.weight": "model.safetensors"}}', keep=True)), [idx]),
        ("an index a FIFO", hf_copy("idx_fifo", lambda d: os.mkfifo(d / idx)), [idx]),
    ]

    def hf_set(key, value, strip=True):
        """config.json with key = value (raw JSON text), without the switchyard metadata when strip (so the
        Hugging Face keys alone describe the model)."""
        def f(d):
            text = (d / "config.json").read_text()
            j = json.loads(text)
            if strip:
                j.pop("switchyard", None)
            j[key] = "@@VALUE@@"
            (d / "config.json").write_text(json.dumps(j).replace('"@@VALUE@@"', value))
        return f
    for key, value in (("num_local_experts", str(1 << 40)), ("vocab_size", str(1 << 40)),
                       ("num_hidden_layers", str(1 << 40)), ("hidden_size", str(1 << 31)),
                       ("intermediate_size", "-1"), ("num_experts_per_tok", "0"), ("num_attention_heads", "7"),
                       ("rope_theta", "1e400"), ("rms_norm_eps", '"small"'), ("num_local_experts", "2.5"),
                       ("vocab_size", "18446744073709551616")):
        damaged.append((f"config.json {key} = {value}", hf_copy(f"set_{key}_{len(damaged)}", hf_set(key, value)),
                        ["config.json"]))
    damaged.append(("the switchyard metadata disagreeing with num_local_experts = 2", hf_copy(
        "meta_disagrees", hf_set("num_local_experts", "2", strip=False)), ["config.json", "model.safetensors"]))
    cases = []

    def add(group, cid, cmd, allowed, culprits=(), **kw):
        cases.append((group, cid, cmd, allowed, culprits, kw))

    # ---- moe-eval
    ev = [bin_dir / "moe-eval"]
    txt = tmp / "corpus.txt"
    short = tmp / "short.txt"
    short.write_text("too short\n")
    odd = tmp / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    add("moe-eval usage", "moe-eval without a checkpoint", ev, (2,), ["checkpoint", "required"])
    add("moe-eval usage", "moe-eval with two checkpoints", ev + [ck, ck], (2,), [str(ck), "argument"])
    for cid, args, cul in (
            ("an unknown flag", ["--bogus"], ["--bogus"]), ("a single dash flag", ["-x"], ["-x"]),
            ("--data without files", ["--data"], ["--data"]),
            ("--format without a value", ["--data", txt, "--format"], ["--format"]),
            ("--format bogus", ["--data", txt, "--format", "bogus"], ["--format", "bogus"]),
            ("--format invalid UTF-8", ["--data", txt, "--format", BAD_UTF8], ["--format"]),
            ("--format without --data", ["--format", "text"], ["--format"]),
            ("--batches 0", ["--batches", "0"], ["--batches"]), ("--batches -1", ["--batches", "-1"], ["--batches"]),
            ("--batches 2^40", ["--batches", str(1 << 40)], ["--batches"]),
            ("--batches abc", ["--batches", "abc"], ["--batches"]),
            ("--batches nan", ["--batches", "nan"], ["--batches"]),
            ("--batches 2^64", ["--batches", str(1 << 64)], ["--batches"]),
            ("--batch 0", ["--batch", "0"], ["--batch"]), ("--batch -3", ["--batch", "-3"], ["--batch"]),
            ("--batch 2^40", ["--batch", str(1 << 40)], ["--batch"]), ("--batch 1.5", ["--batch", "1.5"], ["--batch"]),
            ("--batch 3 (does not divide the validation windows)", ["--batch", "3"], ["--batch"]),
            ("--capacity-factor -1", ["--capacity-factor", "-1"], ["--capacity-factor"]),
            ("--capacity-factor nan", ["--capacity-factor", "nan"], ["--capacity-factor"]),
            ("--capacity-factor inf", ["--capacity-factor", "inf"], ["--capacity-factor"]),
            ("--capacity-factor 1e400", ["--capacity-factor", "1e400"], ["--capacity-factor"]),
            ("--capacity-factor abc", ["--capacity-factor", "abc"], ["--capacity-factor"]),
            ("--threads -1", ["--threads", "-1"], ["--threads"]), ("--threads abc", ["--threads", "abc"], ["--threads"]),
            ("--threads 2^40", ["--threads", str(1 << 40)], ["--threads"]),
            ("--threads 100000 (more than the machine has)", ["--threads", "100000"], ["--threads"]),
            # (--json=yes and --json=false are CLI11's spellings of a flag's value)
            ("--json with a garbage value", ["--json=maybe"], ["--json"]),
            ("--data a file shorter than a window", ["--data", short], ["short.txt"]),
            ("--data a glob that matches nothing", ["--data", str(tmp / "nosuch*.txt")], ["--data: no file"]),
            ("--data a 3-byte bin shard", ["--data", odd, "--format", "bin"], ["odd.bin"]),
            ("--data a text file as bin", ["--data", txt, "--format", "bin"], ["corpus.txt"]),
            ("--data a good file and a directory", ["--data", txt, P.dir], ["adir"]),
    ):
        add("moe-eval flags", f"moe-eval {cid}", ev + [ck] + args, (2,), cul)
    # a huge evaluation asked for on purpose: done in bounded memory, or refused
    add("moe-eval flags", "moe-eval --batch 2^20 --batches 1", ev + [ck, "--batch", str(1 << 20), "--batches", "1"],
        (0, 2), ["--batch"])
    for cid, args in (("the run's validation set", []), ("--json", ["--json"]),
                      ("--data --format text --batches 2 --batch 2 --capacity-factor 1 --threads 1",
                       ["--data", txt, "--format", "text", "--batches", "2", "--batch", "2", "--capacity-factor", "1",
                        "--threads", "1"]),
                      ("--batch 1 --batches 1 (valid)", ["--batch", "1", "--batches", "1"])):
        add("moe-eval valid", f"moe-eval {cid}", ev + [ck] + args, (0,))
    add("moe-eval valid", "moe-eval the run directory (its latest)", ev + [tmp / "moe", "--batch", "1", "--batches",
                                                                            "1"], (0,))
    for label, path, cul in P.inputs():
        add("moe-eval paths", f"moe-eval on {label}", ev + [path], (2,), [cul, "checkpoint"] if cul else ["checkpoint"])
        if label != "an empty string":
            add("moe-eval paths", f"moe-eval --data {label}", ev + [ck, "--data", path, "--batches", "1"],
                (0, 2) if label in ("/dev/zero", "random bytes") else (2,), [cul or "--data"])
    add("moe-eval paths", "moe-eval --data ''", ev + [ck, "--data", ""], (2,), ["--data"])
    add("moe-eval paths", "moe-eval on a Hugging Face directory", ev + [hf], (2,), ["hf"])
    add("moe-eval paths", "moe-eval on a step's shard file", ev + [ck / "shard_00000.h5"], (2,), ["shard_00000.h5"])
    for label, d, cul in damaged[:2]:
        add("moe-eval paths", f"moe-eval on a Hugging Face directory with {label}", ev + [d], (2,), [d.name])
    add("moe-eval paths", "moe-eval on a consolidated file cut short", ev + [tmp / "cut.h5"], (2,), ["cut.h5"])
    add("moe-eval valid", "moe-eval on an imported Hugging Face model", ev + [tmp / "imported_for_init.h5", "--batch",
                                                                             "1", "--batches", "1"], (0,))

    # ---- moe-ckpt import
    imp = ckpt + ["import"]
    add("moe-ckpt import", "moe-ckpt import without arguments", imp, (2,), ["required", "dir"])
    add("moe-ckpt import", "moe-ckpt import without OUT", imp + [hf], (2,), ["required", "out"])
    add("moe-ckpt import", "moe-ckpt import with an extra argument", imp + [hf, tmp / "i_extra.h5", "more"], (2,),
        ["more"], absent=[tmp / "i_extra.h5"])
    add("moe-ckpt import", "moe-ckpt import with an unknown flag", imp + [hf, tmp / "i_flag.h5", "--bogus"], (2,),
        ["--bogus"], absent=[tmp / "i_flag.h5"])
    add("moe-ckpt import", "moe-ckpt import --format (export's flag)", imp + [hf, tmp / "i_fmt.h5", "--format",
                                                                             "mixtral"], (2,), ["--format"],
        absent=[tmp / "i_fmt.h5"])
    add("moe-ckpt import", "moe-ckpt import (valid)", imp + [hf, tmp / "imported.h5"], (0,))
    add("moe-ckpt import", "moe-ckpt --json import (valid)", ckpt + ["--json", "import", hf, tmp / "imported2.h5"], (0,))
    add("moe-ckpt import", "moe-ckpt import into a new directory (valid)", imp + [hf, tmp / "inew" / "a" / "i.h5"],
        (0,))
    for i, (label, path, cul) in enumerate(P.inputs()):
        add("moe-ckpt import", f"moe-ckpt import from {label}", imp + [path, tmp / f"i_in{i}.h5"], (2,),
            [cul, "import"] if cul else ["import", "directory"], absent=[tmp / f"i_in{i}.h5"])
    add("moe-ckpt import", "moe-ckpt import from a checkpoint (not a Hugging Face directory)",
        imp + [ck, tmp / "i_ck.h5"], (2,), [str(ck), "config.json"], absent=[tmp / "i_ck.h5"])
    for i, (label, d, cul) in enumerate(damaged):
        # a new parent directory too: a refused import must not leave it either
        out = tmp / f"i_dmg{i}" / "out.h5"
        add("moe-ckpt import", f"moe-ckpt import a Hugging Face directory with {label}", imp + [d, out], (2,),
            [f"{d.name}/{c}" for c in cul] + ([f"{d.name}' has both"] if "beside" in label else []),
            absent=[out, out.parent])
    for label, path, cul, _ in P.outputs():
        unchanged = [path] if label in ("an existing file", "an existing directory") else []
        add("moe-ckpt import", f"moe-ckpt import into {label}", imp + [hf, path], (1, 2), [cul, "out"],
            unchanged=unchanged)
    # A leftover OUT.tmp may be another write's or the user's: every writer refuses it and leaves it as it was
    # (consolidate and reshard used to delete it).
    for c, cmd, extra in (("import", imp + [hf], []), ("upcycle", ckpt + ["upcycle", dense], ["--experts", "4", "--top-k", "2"]),
                          ("consolidate", ckpt + ["consolidate", ck], []), ("reshard", ckpt + ["reshard", ck], ["--dp", "2"]),
                          ("grow", ckpt + ["grow", ck], ["--layer", "all", "--add", "2"])):
        out = tmp / f"{c}_interrupted.h5"
        Path(f"{out}.tmp").write_text("what an interrupted write left\n")
        add(f"moe-ckpt {c}", f"moe-ckpt {c} when OUT.tmp exists (an interrupted write)",
            cmd + [out] + extra, (2,), [f"{out.name}.tmp"], unchanged=[f"{out}.tmp"])
    add("moe-ckpt import", "moe-ckpt import into the Hugging Face directory's own config.json",
        imp + [hf, hf / "config.json"], (2,), ["config.json"])

    # ---- moe-ckpt upcycle
    upc = ckpt + ["upcycle"]
    ek = ["--experts", "4", "--top-k", "2"]
    add("moe-ckpt upcycle", "moe-ckpt upcycle without arguments", upc, (2,), ["required", "checkpoint"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle without --experts", upc + [dense, tmp / "u_a.h5", "--top-k", "2"], (2,),
        ["--experts"], absent=[tmp / "u_a.h5"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle without --top-k", upc + [dense, tmp / "u_b.h5", "--experts", "4"], (2,),
        ["--top-k"], absent=[tmp / "u_b.h5"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle without OUT", upc + [dense] + ek, (2,), ["out", "required"])
    for i, (cid, args, cul) in enumerate((
            ("an unknown flag", ek + ["--bogus"], ["--bogus"]),
            ("an extra argument", ek + ["more"], ["more"]),
            ("--experts 0", ["--experts", "0", "--top-k", "1"], ["--experts"]),
            ("--experts -4", ["--experts", "-4", "--top-k", "1"], ["--experts"]),
            ("--experts 2^40", ["--experts", str(1 << 40), "--top-k", "1"], ["--experts"]),
            ("--experts abc", ["--experts", "abc", "--top-k", "1"], ["--experts"]),
            ("--experts nan", ["--experts", "nan", "--top-k", "1"], ["--experts"]),
            ("--experts without a value", ["--top-k", "1", "--experts"], ["--experts"]),
            ("--top-k 0", ["--experts", "4", "--top-k", "0"], ["--top-k"]),
            ("--top-k 5 of 4 experts", ["--experts", "4", "--top-k", "5"], ["--top-k"]),
            ("--top-k -1", ["--experts", "4", "--top-k", "-1"], ["--top-k"]),
            ("--granularity 0", ek + ["--granularity", "0"], ["--granularity"]),
            ("--granularity -2", ek + ["--granularity", "-2"], ["--granularity"]),
            ("--granularity 3 (4 experts)", ek + ["--granularity", "3"], ["--granularity"]),
            ("--granularity 128 (wider than the FFN)", ["--experts", "128", "--top-k", "2", "--granularity", "128"],
             ["--granularity"]),
            ("--granularity 2^40", ek + ["--granularity", str(1 << 40)], ["--granularity"]),
            ("--noise -1", ek + ["--noise", "-1"], ["--noise"]), ("--noise nan", ek + ["--noise", "nan"], ["--noise"]),
            ("--noise inf", ek + ["--noise", "inf"], ["--noise"]),
            ("--noise 1e400", ek + ["--noise", "1e400"], ["--noise"]),
            ("--noise abc", ek + ["--noise", "abc"], ["--noise"]),
            ("--seed -1", ek + ["--seed", "-1"], ["--seed"]), ("--seed abc", ek + ["--seed", "abc"], ["--seed"]),
            ("--seed 2^64", ek + ["--seed", str(1 << 64)], ["--seed"]),
            ("--layers ''", ek + ["--layers", ""], ["--layers"]),
            ("--layers abc", ek + ["--layers", "abc"], ["--layers", "abc"]),
            ("--layers 2-1", ek + ["--layers", "2-1"], ["--layers", "2-1"]),
            ("--layers 0-99", ek + ["--layers", "0-99"], ["--layers", "99"]),
            ("--layers -1", ek + ["--layers", "-1"], ["--layers", "-1"]),
            ("--layers 0 (not up to the last layer)", ek + ["--layers", "0"], ["--layers"]),
            ("--layers 0,2 (a gap)", ek + ["--layers", "0,2"], ["--layers"]),
            ("--layers 1-", ek + ["--layers", "1-"], ["--layers"]),
            ("--layers ',,,'", ek + ["--layers", ",,,"], ["--layers"]),
            ("--layers 2^64", ek + ["--layers", str(1 << 64)], ["--layers"]),
            ("--layers 0-18446744073709551615", ek + ["--layers", "0-18446744073709551615"], ["--layers"]),
            ("--layers invalid UTF-8", ek + ["--layers", BAD_UTF8], ["--layers"]),
            ("--layers 20000 characters", ek + ["--layers", LONG], ["--layers"]),
    )):
        out = tmp / f"u_flag{i}.h5"
        add("moe-ckpt upcycle", f"moe-ckpt upcycle {cid}", upc + [dense, out] + args, (2,), cul, absent=[out])
    for i, (label, path, cul) in enumerate(P.inputs()):
        add("moe-ckpt upcycle", f"moe-ckpt upcycle from {label}", upc + [path, tmp / f"u_in{i}.h5"] + ek, (2,),
            [cul, "checkpoint"] if cul else ["checkpoint"], absent=[tmp / f"u_in{i}.h5"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle a consolidated dense file cut short",
        upc + [tmp / "dense_cut.h5", tmp / "u_cut.h5"] + ek, (2,), ["dense_cut.h5"], absent=[tmp / "u_cut.h5"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle an MoE checkpoint", upc + [ck, tmp / "u_moe" / "u.h5"] + ek, (2,),
        ["dense"], absent=[tmp / "u_moe"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle a Hugging Face directory", upc + [hf, tmp / "u_hf.h5"] + ek, (2,),
        ["hf"], absent=[tmp / "u_hf.h5"])
    for label, path, cul, _ in P.outputs():
        unchanged = [path] if label in ("an existing file", "an existing directory") else []
        add("moe-ckpt upcycle", f"moe-ckpt upcycle into {label}", upc + [dense, path] + ek, (1, 2), [cul, "out"],
            unchanged=unchanged)
    add("moe-ckpt upcycle", "moe-ckpt upcycle into the dense checkpoint's own shard", upc + [dense, dense /
                                                                                          "shard_00000.h5"] + ek,
        (2,), ["shard_00000.h5"])
    add("moe-ckpt upcycle", "moe-ckpt upcycle --granularity 2 --noise 0.1 --seed 3 --layers 1-2 (valid)",
        upc + [dense, tmp / "u_ok.h5", "--experts", "4", "--top-k", "2", "--granularity", "2", "--noise", "0.1",
               "--seed", "3", "--layers", "1-2"], (0,))

    # ---- moe-train checkpoint.init_from and train.lr_groups
    train = [bin_dir / "moe-train"]
    safe = [f'data.train=["{tmp / "corpus.txt"}"]', "train.steps=1", "checkpoint.at_end=false"] + MIXTRAL_OK
    safe_args = [a for s in C.SMALL + safe for a in ("--set", s)]
    for label, path, cul in P.inputs():
        if label == "an empty string":
            continue  # "" = no init_from, the default
        add("moe-train init_from", f"moe-train checkpoint.init_from = {label}",
            train + safe_args + ["--set", b"checkpoint.init_from=" + (path if isinstance(path, bytes) else
                                                                       str(path).encode())],
            (2,), [cul, "init_from"])
    for cid, val, cul in (
            ("a Hugging Face directory", hf, ["hf", "init_from"]),
            ("a dense checkpoint (other shapes)", dense, ["dense", "init_from"]),
            ("a step's shard file", ck / "shard_00000.h5", ["shard_00000.h5"]),
            ("a consolidated file cut short", None, ["cut.h5", "init_from"]),
    ):
        if val is None:
            val = tmp / "cut.h5"
        add("moe-train init_from", f"moe-train checkpoint.init_from = {cid}",
            train + safe_args + ["--set", f"checkpoint.init_from={val}"], (2,), cul)
    add("moe-train init_from", "moe-train checkpoint.init_from = 5 (not a string)",
        train + safe_args + ["--set", "checkpoint.init_from=5"], (2,), ["init_from"])
    add("moe-train init_from", "moe-train checkpoint.init_from = [] (not a string)",
        train + safe_args + ["--set", "checkpoint.init_from=[]"], (2,), ["init_from"])
    add("moe-train init_from", "moe-train checkpoint.init_from = an MoE checkpoint (valid)",
        train + safe_args + ["--set", f"checkpoint.init_from={ck}"], (0,))
    add("moe-train init_from", "moe-train checkpoint.init_from = an imported Hugging Face model (valid)",
        train + safe_args + ["--set", f"checkpoint.init_from={tmp / 'imported_for_init.h5'}"], (0,))
    lr = "train.lr_groups="
    for cid, val, cul in (
            ("not an array", "1", ["train.lr_groups"]), ("a string", '"embed.*"', ["train.lr_groups"]),
            ("an array of numbers", "[1, 2]", ["train.lr_groups[0]"]),
            ("a table without scale", '[{ match = "embed.*" }]', ["train.lr_groups[0]", "scale"]),
            ("a table without match", "[{ scale = 2 }]", ["train.lr_groups[0]", "match"]),
            ("an unknown key", '[{ match = "embed.*", scale = 2, lr = 1 }]', ["lr"]),
            ("match a number", "[{ match = 3, scale = 2 }]", ["match"]),
            ("scale a string", '[{ match = "embed.*", scale = "2" }]', ["scale"]),
            ("scale -1", '[{ match = "embed.*", scale = -1 }]', ["scale"]),
            ("scale nan", '[{ match = "embed.*", scale = nan }]', ["scale"]),
            ("scale inf", '[{ match = "embed.*", scale = inf }]', ["scale"]),
            ("scale 1e400", '[{ match = "embed.*", scale = 1e400 }]', ["scale", "lr_groups"]),
            ("scale 2^63", '[{ match = "embed.*", scale = 9223372036854775807 }]', ["scale"]),
            ("scale 2^64 (not a TOML integer)", '[{ match = "embed.*", scale = 18446744073709551616 }]',
             ["lr_groups", "scale"]),
            ("a pattern '['", '[{ match = "layers.[", scale = 2 }]', ["layers.["]),
            ("a pattern '[7-0]'", '[{ match = "layers.[7-0].**", scale = 2 }]', ["[7-0]"]),
            ("a pattern 'x[0-7]'", '[{ match = "layersx[0-7].**", scale = 2 }]', ["x[0-7]"]),
            ("a pattern '[a-b]'", '[{ match = "layers.[a-b].**", scale = 2 }]', ["[a-b]"]),
            ("a pattern '[0-99999999999999999999]'", '[{ match = "layers.[0-99999999999999999999].**", scale = 2 }]',
             ["99999999999999999999"]),
            ("a pattern '[-1-2]'", '[{ match = "layers.[-1-2].**", scale = 2 }]', ["[-1-2]"]),
            ("an empty pattern", '[{ match = "", scale = 2 }]', ["match"]),
            ("a pattern that matches nothing", '[{ match = "nosuch.**", scale = 2 }]', ["nosuch.**"]),
            ("a pattern shadowed by an earlier one", '[{ match = "**", scale = 2 }, { match = "embed.*", scale = 3 }]',
             ["lr_groups[1]"]),
            ("a 20000-character pattern", '[{ match = "' + LONG + '", scale = 2 }]', ["xxxx"]),
            ("a pattern of 60 '*.' and 'q'", '[{ match = "' + "*." * 60 + 'q", scale = 2 }]', ["match"]),
            ("a pattern of 200 '**' and 'q'", '[{ match = "' + "**" * 200 + 'q", scale = 2 }]', ["match"]),
            ("a pattern of 40 '**.' and 'q'", '[{ match = "' + "**." * 40 + 'q", scale = 2 }]', ["match"]),
            ("a table array garbage", "[{ match = ", ["train.lr_groups"]),
    ):
        add("moe-train lr_groups", f"moe-train train.lr_groups = {cid}", train + safe_args + ["--set", lr + val],
            (2,), cul)
    add("moe-train lr_groups", "moe-train train.lr_groups with invalid UTF-8 in a pattern",
        train + safe_args + ["--set", lr.encode() + b'[{ match = "emb' + BAD_UTF8 + b'", scale = 2 }]'], (2,),
        ["lr_groups", "match", "UTF-8"])
    add("moe-train lr_groups", "moe-train train.lr_groups = [] (valid: none)", train + safe_args + ["--set", lr + "[]"],
        (0,))
    add("moe-train lr_groups", "moe-train train.lr_groups with a range, ** and scale 0 (valid)",
        train + safe_args + ["--set", lr + '[{ match = "layers.[0-1].**", scale = 0.5 }, { match = "**", scale = 0 }]'],
        (0,))

    # inputs of the cases built by runs of their own
    r = C.run(imp + [hf, tmp / "imported_for_init.h5"], 60)
    assert r.rc == 0, r.out[-2000:]
    r = C.run(ckpt + ["consolidate", ck, tmp / "whole.h5"], 60)
    assert r.rc == 0, r.out[-2000:]
    r = C.run(ckpt + ["consolidate", dense, tmp / "dense_whole.h5"], 60)
    assert r.rc == 0, r.out[-2000:]
    for src, dst in (("whole.h5", "cut.h5"), ("dense_whole.h5", "dense_cut.h5")):
        whole = (tmp / src).read_bytes()
        (tmp / dst).write_bytes(whole[:len(whole) // 2])

    def one(w, case):
        group, cid, cmd, allowed, culprits, kw = case
        if group.startswith("moe-train"):
            cmd = cmd[:1] + ["--set", f"run.dir={tmp / 'runs'}_{zlib.crc32(cid.encode()):08x}"] + cmd[1:]
        check(tally, group, cid, cmd, allowed, culprits, timeout=10, cwd=tmp, **kw)

    C.parallel(one, cases, C.workers())
    lost = guard.lost()
    tally.record("moe-ckpt import", "the checkpoints every case read are unchanged", "fail" if lost else "ok", lost)
    tally.record("moe-ckpt import", "the Hugging Face directory every case read is unchanged",
                 "ok" if C.tree_digest(hf) == hf_digest else "fail", f"{hf} was changed")


CASES = {"train_launch_plan": case_train_launch_plan, "ckpt_generate_report": case_ckpt_generate_report,
         "eval_import_upcycle": case_eval_import_upcycle}

if __name__ == "__main__":
    C.main(CASES)
