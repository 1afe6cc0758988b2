#!/usr/bin/env python3
"""Fault campaign, checkpoints: a flipped byte inside every dataset and every
attribute of a checkpoint's manifest and shard (values and names), files
truncated, missing, swapped in from another step or run, a damaged
`latest`, SIGKILL during synchronous and asynchronous saves, a full disk.

usage: test_ckpt_faults.py BIN_DIR CASE     (see CASES at the bottom; campaign.py has the rules)
       test_ckpt_faults.py BIN_DIR repro "CASE ID" OUT_DIR   (rebuild one failing case in OUT_DIR)
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import campaign as C  # noqa: E402
import h5map  # noqa: E402

STEP2, STEP4 = "step_00000002", "step_00000004"
# Every tool stays under 40 MB resident on the small model's 1 MB checkpoint: far more is a blow-up.
SMALL_MB = 200


def corpus(path, size=32768, seed=7):
    """Deterministic English-like bytes for data.train (a small file keeps every run's start cheap)."""
    rng = random.Random(seed)
    words = ("the yard switches wagons along rails while experts route tokens to their own tracks and a train "
             "of thought leaves the station at noon with freight for every layer of the model").split()
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randrange(4, 14))).capitalize() + ".\n"
        out.append(line)
        n += len(line)
    Path(path).write_text("".join(out)[:size])
    return path


def data_sets(tmp):
    text = Path(tmp) / "corpus.txt"
    if not text.exists():
        corpus(text)
    return [f'data.train=["{text}"]']


def train(bin_dir, run_dir, tmp, sets, timeout=120):
    return C.run(C.moe_train_cmd(bin_dir, run_dir, data_sets(tmp) + list(sets)), timeout)


def make_run(bin_dir, tmp, name, seed=1337, steps=4):
    """A run with checkpoints at steps 2 and 4 (latest: 4)."""
    run = Path(tmp) / name
    r = train(bin_dir, run, tmp, [f"train.steps={steps}", "checkpoint.interval=2", "checkpoint.keep=10",
                                  f"train.seed={seed}"])
    assert r.rc == 0, f"setup run failed:\n{r.out[-3000:]}"
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    return run


# A resume that writes nothing (no interval, no final save): the run dir stays as it was.
RESUME = ["train.steps=5", "checkpoint.interval=0", "checkpoint.at_end=false"]
FALLBACK = RESUME + ["checkpoint.fallback=true"]


def sig(p):
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def remove(p):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def sync_tree(src, dst):
    """Makes dst a copy of src again, touching only what differs (by size and mtime)."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        remove(dst)
    dst.mkdir(exist_ok=True)
    for q in list(dst.iterdir()):
        p = src / q.name
        if not p.exists() or q.is_symlink() or p.is_dir() != q.is_dir():
            remove(q)
    for p in src.iterdir():
        q = dst / p.name
        if p.is_dir():
            sync_tree(p, q)
        elif not q.exists() or not q.is_file() or sig(q) != sig(p):
            if q.exists() or q.is_symlink():
                remove(q)
            shutil.copy2(p, q)


class Scratch:
    """A worker's copy of a pristine run, put back after every case."""

    def __init__(self, src, dst):
        self.src, self.dst = Path(src), Path(dst)
        shutil.copytree(self.src, self.dst)

    def reset(self):
        sync_tree(self.src / "checkpoints", self.dst / "checkpoints")
        for name in ("metrics.jsonl", "config.toml"):
            if (self.src / name).exists():
                shutil.copy2(self.src / name, self.dst / name)


# ---------------------------------------------------------------- judging checkpoint cases

def judge_verify(res, files, culprits):
    """moe-ckpt verify on a damaged checkpoint: exit 1 naming the file and the item."""
    why = C.crash(res)
    if why:
        return "fail", why
    if res.rc == 1 and C.names_any(res.out, files) and C.names_any(res.out, culprits):
        return "clean", ""
    if res.rc == 0:
        return "fail", f"silent success: verify says OK on a damaged checkpoint: {res.out[-300:]}"
    if res.rc == 1:
        return "fail", f"the message does not name {files} and one of {culprits}: {res.out[-600:]}"
    return "fail", f"exit {res.rc} (want 1): {res.out[-600:]}"


def judge_resume(res, files, culprits, fallback, fallback_step):
    """moe-train resuming from a damaged latest checkpoint: exit 2 naming the culprit, or (with
    checkpoint.fallback) resuming from this run's older intact checkpoint and saying why."""
    why = C.crash(res)
    if why:
        return "fail", why
    if not fallback:
        if res.rc == 2 and C.names_any(res.out, files) and C.names_any(res.out, culprits):
            return "clean", ""
        if res.rc == 0:
            return "fail", f"silent success: resumed from a damaged checkpoint without fallback: {res.out[-400:]}"
        return "fail", f"exit {res.rc} (want 2 naming {files} and one of {culprits}): {res.out[-600:]}"
    want = f"(step {fallback_step})"
    if res.rc == 0 and "falling back" in res.out and want in res.out and C.names_any(res.out, files):
        return "fallback", ""
    if res.rc == 0:
        return "fail", f"exit 0 but not a fallback to step {fallback_step} naming {files}: {res.out[-600:]}"
    return "fail", f"exit {res.rc} with checkpoint.fallback = true (want a fallback to step {fallback_step}): " \
                   f"{res.out[-600:]}"


def judge_generate(res, files, culprits, may_succeed=False):
    why = C.crash(res)
    if why:
        return "fail", why
    if res.rc in (1, 2) and C.names_any(res.out, files) and C.names_any(res.out, culprits):
        return "clean", ""
    if res.rc == 0:
        return ("ok", "") if may_succeed else ("fail", f"silent success on a damaged checkpoint: {res.out[-300:]}")
    return "fail", f"exit {res.rc} (want 1 or 2 naming {files} and one of {culprits}): {res.out[-600:]}"


def item_unchanged(path, region_json):
    """Whether h5py still reads the flipped item as it was (the flip was inert), checked in a child
    process because HDF5 may crash on damaged metadata. None when the child crashed."""
    code = ("import sys, json; sys.path.insert(0, %r); import h5map, h5py\n"
            "r = h5map.Region(**json.loads(sys.argv[2])); before = json.loads(sys.argv[3])\n"
            "print('UNCHANGED' if not h5map.changed(sys.argv[1], r, before) else 'CHANGED')" % str(C.HERE))
    r = C.run([C.PY, "-c", code, path, region_json[0], region_json[1]], 60, max_mb=SMALL_MB)
    if r.rc != 0:
        return None
    return "UNCHANGED" in r.out


# ---------------------------------------------------------------- flipped bytes

def flip_campaign(bin_dir, tmp, tally, which, kinds, resume_every, group_of):
    """Flips one byte (a seeded byte of the item, a seeded bit) inside each item (of `kinds`) of
    step 4's `which` file. Every case runs `moe-ckpt verify`, which must exit 1 naming the file
    and the item. A seeded sample (every item of the file's root, 1 in `resume_every` of the
    rest) also resumes with moe-train (without or with checkpoint.fallback: exit 2 naming the
    culprit, or a fallback to step 2) and runs moe-generate on the run directory.

    To keep the campaign fast, flips of the per-tensor items (an attribute or the values of one
    tensor's dataset, a tensor's name) that need no resume are checked up to 8 at a time, in
    distinct objects, with one `moe-ckpt verify`, which reports every problem it finds: each
    flip's line must name the file and the item. A batch that fails is re-run one flip at a
    time, so every failure is reported for one flip with its own reproduction."""
    base = make_run(bin_dir, tmp, "base")
    target_rel = Path("checkpoints") / STEP4 / which
    regions = [r for r in h5map.regions(str(base / target_rel)) if r.kind in kinds]
    assert regions, f"no items of kinds {kinds} in {which}"
    with __import__("h5py").File(base / target_rel, "r") as f:
        befores = [h5map.snapshot(f, r) for r in regions]
    plan = []
    for r, before in zip(regions, befores):
        # Each item's flip depends only on the item (the list of expected failures names them).
        rng = random.Random(f"flip:{which}:{r.kind}:{r.item}")
        at = rng.randrange(r.length)
        bit = rng.randrange(8)
        if r.kind == "dset-shape" and which.startswith("shard") and rng.randrange(8):
            continue  # a shape flip is beyond values and names: a sample of the shard's 166
        if r.kind == "attr-ref" and "/" in r.obj and rng.randrange(3):
            continue  # a heap reference is HDF5's pointer, not a value: a third of the tensors' ones
        # Items at the file's root are few and each different: values always resume, names often.
        root = "/" not in r.obj and r.kind != "dset-shape" and r.obj not in ("seal",)
        root = root and (r.kind in ("attr-value", "dset-value", "group-name") or rng.randrange(3) == 0)
        plan.append(dict(r=r, before=before, at=at, bit=bit, resume=root or rng.randrange(resume_every) == 0,
                         fallback=rng.random() < 0.5))
    # Units of work: single cases, and batches of verify-only per-tensor flips in distinct objects.
    units, pool = [], {}
    for c in plan:
        r = c["r"]
        batchable = not c["resume"] and r.obj != "/" and "/" in r.obj and r.kind in ("attr-name", "attr-value", "dset-value",
                                                                     "dset-name")
        if batchable:
            # names share their group's heap (a flip can hide its neighbours): one per group in a batch
            key = ("name", r.obj.split("/")[0]) if r.kind == "dset-name" else ("item", r.obj)
            pool.setdefault(r.kind == "dset-name", []).append((key, c))
        else:
            units.append([c])
    rng = random.Random(f"batches:{which}")
    for _, items in sorted(pool.items()):
        rng.shuffle(items)
        while items:
            batch, keys, rest = [], set(), []
            for key, c in items:
                (rest if key in keys or len(batch) == 8 else batch).append((key, c))
                keys.add(key)
            units.append([c for _, c in batch])
            items = rest
    scratch = [Scratch(base, Path(tmp) / f"w{w}") for w in range(C.workers())]
    intact = [C.Guard(bin_dir, [s.dst / "checkpoints" / STEP2]) for s in scratch]
    raw = (base / target_rel).read_bytes()

    def case_id(c):
        r = c["r"]
        return f"{which}: {r.kind} {r.item} byte {c['at']} bit {c['bit']}"

    def flipped(cases):
        data = bytearray(raw)
        for c in cases:
            data[c["r"].start + c["at"]] ^= 1 << c["bit"]
        return bytes(data)

    def batch(w, cases):
        s = scratch[w]
        path = s.dst / target_rel
        path.write_bytes(flipped(cases))
        cmd = [bin_dir / "moe-ckpt", "verify", s.dst / "checkpoints" / STEP4]
        try:
            res = C.run(cmd, 60, max_mb=SMALL_MB)
        finally:
            s.reset()
        lines = res.out.splitlines()
        named = lambda r: any(which in ln and f"'{r.obj}'" in ln and (not r.key or f"'{r.key}'" in ln)  # noqa: E731
                              for ln in lines)
        if not C.crash(res) and res.rc == 1 and all(named(c["r"]) for c in cases):
            for c in cases:
                tally.record(group_of(c["r"]), case_id(c) + " / verify", "clean", "", cmd)
        else:
            missing = [c["r"].item for c in cases if not named(c["r"])]
            print(f"a batch of {len(cases)} flips is re-run one by one (exit {res.rc}"
                  f"{', ' + C.crash(res) if C.crash(res) else ''}; not named: {missing[:3]})", flush=True)
            for c in cases:
                one(w, c)

    def one(w, c):
        r, before, resume, fallback = c["r"], c["before"], c["resume"], c["fallback"]
        s = scratch[w]
        path = s.dst / target_rel
        data = flipped([c])
        path.write_bytes(data)
        cid = case_id(c)
        group = group_of(r)
        files, culprits = [which], r.culprit
        # A flipped name can break HDF5's ordered lookups of its neighbours: a tool that stops at the
        # first problem may name one of those; it must still name the file and call it corrupt.
        first = culprits + ["corrupt"] if r.kind.endswith("name") else culprits
        inert = None

        def is_inert():
            nonlocal inert
            if inert is None:
                inert = item_unchanged(str(path), (json.dumps(r.__dict__), json.dumps(before)))
            return inert

        try:
            cmd = [bin_dir / "moe-ckpt", "verify", s.dst / "checkpoints" / STEP4]
            res = C.run(cmd, 60, max_mb=SMALL_MB)
            verdict, why = judge_verify(res, files, culprits)
            if res.rc == 0 and not C.crash(res):
                if r.kind == "attr-ref" and is_inert():
                    verdict, why = "ok", ""  # e.g. the length word of a heap reference, which HDF5 ignores
                elif is_inert():
                    why = "harness: the flip did not change what h5py reads (h5map located the item wrongly)"
            tally.record(group, cid + " / verify", verdict, why, cmd)
            if not resume:
                return
            cmd = C.moe_train_cmd(bin_dir, s.dst, data_sets(tmp) + (FALLBACK if fallback else RESUME))
            res = C.run(cmd, 120, max_mb=SMALL_MB)
            if res.rc == 0 and not fallback and r.kind == "attr-ref" and is_inert():
                verdict, why = "ok", ""
            elif fallback and res.rc == 0 and r.kind == "attr-ref" and "(step 4)" in res.out and is_inert():
                verdict, why = "ok", ""
            else:
                verdict, why = judge_resume(res, files, first, fallback, 2)
            lost = intact[w].lost()
            if lost:
                verdict, why = "fail", f"lost checkpoint: {lost}"
            tally.record(group, cid + (" / resume with fallback" if fallback else " / resume"), verdict, why, cmd)
            s.reset()
            path.write_bytes(data)
            cmd = [bin_dir / "moe-generate", s.dst, "--prompt", "a", "--max-new", "2", "--quiet"]
            res = C.run(cmd, 60, max_mb=SMALL_MB)
            moments_only = r.kind == "dset-value" and r.obj.split("/")[0] in ("adam_m", "adam_v")
            verdict, why = judge_generate(res, files, first,
                                          may_succeed=moments_only or (r.kind == "attr-ref" and is_inert()))
            tally.record(group, cid + " / moe-generate", verdict, why, cmd)
        finally:
            s.reset()

    C.parallel(lambda w, u: batch(w, u) if len(u) > 1 else one(w, u[0]), units, len(scratch))
    print(f"{which}: {len(plan)} flips in {len(units)} runs of moe-ckpt verify (batches of up to 8 per-tensor "
          f"flips), {sum(c['resume'] for c in plan)} also resumed and generated from")


def case_flip_manifest(bin_dir, tmp, tally):
    flip_campaign(bin_dir, tmp, tally, "manifest.h5",
                  ("attr-value", "attr-name", "attr-ref", "dset-value", "dset-name", "dset-shape", "group-name"),
                  resume_every=15, group_of=lambda r: f"manifest {r.kind}")


def case_flip_shard_attributes(bin_dir, tmp, tally):
    flip_campaign(bin_dir, tmp, tally, "shard_00000.h5", ("attr-value", "attr-name", "attr-ref"),
                  resume_every=30, group_of=lambda r: f"shard {r.kind}")


def case_flip_shard_datasets(bin_dir, tmp, tally):
    flip_campaign(bin_dir, tmp, tally, "shard_00000.h5", ("dset-value", "dset-name", "dset-shape", "group-name"),
                  resume_every=20, group_of=lambda r: f"shard {r.kind}")


# ---------------------------------------------------------------- damaged files, swaps, latest

def damaged_cases(base, other):
    """(name, mutate(run), files named, culprits, checkpoint to verify or None, fallback step) per case."""
    ck = lambda run: run / "checkpoints"  # noqa: E731
    cases = []
    for fname in ("manifest.h5", "shard_00000.h5"):
        size = (base / "checkpoints" / STEP4 / fname).stat().st_size
        for label, at in (("0", 0), ("8", 8), ("512", 512), ("25%", size // 4), ("50%", size // 2),
                          ("75%", 3 * size // 4), ("size-1", size - 1)):
            def trunc(run, fname=fname, at=at):
                with open(ck(run) / STEP4 / fname, "r+b") as f:
                    f.truncate(at)
            cases.append((f"{fname} truncated at {label} ({at} of {size} bytes)", trunc, [fname], [fname],
                          STEP4, 2))
    def rm(rel):
        return lambda run: (ck(run) / STEP4 / rel).unlink()
    cases.append(("shard_00000.h5 missing", rm("shard_00000.h5"), ["shard_00000.h5"], ["missing"], STEP4, 2))
    cases.append(("manifest.h5 missing", rm("manifest.h5"), [STEP4], [STEP4], None, 2))

    def swap(src_run, step, fname):
        return lambda run: shutil.copy2(src_run / "checkpoints" / step / fname, ck(run) / STEP4 / fname)
    cases.append(("shard from step 2 of the same run", swap(base, STEP2, "shard_00000.h5"), ["shard_00000.h5"],
                  ["belong"], STEP4, 2))
    cases.append(("shard from step 4 of another run", swap(other, STEP4, "shard_00000.h5"), ["shard_00000.h5"],
                  ["belong"], STEP4, 2))
    cases.append(("shard from step 2 of another run", swap(other, STEP2, "shard_00000.h5"), ["shard_00000.h5"],
                  ["belong"], STEP4, 2))
    cases.append(("manifest from step 2 of the same run", swap(base, STEP2, "manifest.h5"), ["manifest.h5", STEP4],
                  ["belong", "step 2", "directory name"], STEP4, 2))
    cases.append(("manifest from step 4 of another run", swap(other, STEP4, "manifest.h5"),
                  ["manifest.h5", "shard_00000.h5"], ["belong", "another run"], STEP4, 2))

    def replace_with(rel, kind):
        def f(run):
            p = ck(run) / STEP4 / rel
            p.unlink()
            if kind == "dir":
                p.mkdir()
            elif kind == "fifo":
                os.mkfifo(p)
            elif kind == "zero":
                p.symlink_to("/dev/zero")
            elif kind == "empty":
                p.write_bytes(b"")
            elif kind == "garbage":
                p.write_bytes(random.Random(rel).randbytes(4096))
        return f
    for rel in ("manifest.h5", "shard_00000.h5"):
        for kind in ("dir", "fifo", "zero", "empty", "garbage"):
            cases.append((f"{rel} replaced by {kind}", replace_with(rel, kind), [rel], [rel], STEP4, 2))

    def step_dir_is_file(run):
        shutil.rmtree(ck(run) / STEP4)
        (ck(run) / STEP4).write_text("not a directory\n")
    cases.append(("step_00000004 is a regular file", step_dir_is_file, [STEP4], [STEP4], None, 2))

    def latest(content):
        def f(run):
            p = ck(run) / "latest"
            p.unlink()
            if content == "dir":
                p.mkdir()
            elif content == "fifo":
                os.mkfifo(p)
            elif content == "symlink-out":
                p.symlink_to("/etc/hostname")
            elif content == "symlink-dangling":
                p.symlink_to(ck(run) / "nowhere")
            elif content is not None:
                p.write_bytes(content)
        return f
    rnd = random.Random("latest")
    for name, content in (("empty", b""), ("whitespace", b" \n\t\n"), ("garbage", rnd.randbytes(64)),
                          ("invalid UTF-8", b"step_\xff\xfe0004\n"), ("NUL inside", b"step_000\x0000004\n"),
                          ("dangling", b"step_00000008\n"), ("a .tmp directory", b"step_00000006.tmp\n"),
                          ("outside ../../x", b"../../x\n"), ("absolute /etc", b"/etc\n"),
                          ("relative ../checkpoints/step", b"../checkpoints/step_00000004\n"),
                          ("dot", b".\n"), ("dotdot", b"..\n"), ("two names", b"step_00000002\nstep_00000004\n"),
                          ("1 MiB", b"step_00000004" + b"x" * (1 << 20)), ("deleted", None), ("directory", "dir"),
                          ("FIFO", "fifo"), ("symlink outside", "symlink-out"),
                          ("dangling symlink", "symlink-dangling")):
        def mut(run, content=content, name=name):
            if name == "a .tmp directory":
                shutil.copytree(ck(run) / STEP4, ck(run) / "step_00000006.tmp")
            latest(content)(run)
        cases.append((f"latest {name}", mut, ["latest"], ["latest"], None, 4))
    return cases


def case_damaged_files(bin_dir, tmp, tally):
    base = make_run(bin_dir, tmp, "base")
    other = make_run(bin_dir, tmp, "other", seed=99)
    cases = damaged_cases(base, other)
    scratch = [Scratch(base, Path(tmp) / f"w{w}") for w in range(C.workers())]

    def one(w, case):
        name, mutate, files, culprits, verify_dir, fb_step = case
        s = scratch[w]
        group = "latest" if name.startswith("latest") else "swapped" if "from step" in name else \
            "truncated" if "truncated" in name else "missing/replaced"
        try:
            mutate(s.dst)
            # Checkpoints this case did not touch must survive it.
            keep = [s.dst / "checkpoints" / STEP2] + ([s.dst / "checkpoints" / STEP4] if fb_step == 4 else [])
            guard = C.Guard(bin_dir, [d for d in keep if d.is_dir()])
            if verify_dir:
                cmd = [bin_dir / "moe-ckpt", "verify", s.dst / "checkpoints" / verify_dir]
                res = C.run(cmd, 60, max_mb=SMALL_MB)
                tally.record(group, f"{name} / verify", *judge_verify(res, files, culprits), cmd)
            else:
                # moe-ckpt on the run directory resolves `latest` like moe-generate does.
                cmd = [bin_dir / "moe-ckpt", "verify", s.dst]
                res = C.run(cmd, 60, max_mb=SMALL_MB)
                why = C.crash(res)
                ok = not why and res.rc in (1, 2) and C.names_any(res.out, files + culprits)
                tally.record(group, f"{name} / verify run dir", "clean" if ok else "fail",
                             why or f"exit {res.rc} (want 1 or 2 naming {files}): {res.out[-500:]}", cmd)
            for fallback in (False, True):
                cmd = C.moe_train_cmd(bin_dir, s.dst, data_sets(tmp) + (FALLBACK if fallback else RESUME))
                res = C.run(cmd, 120, max_mb=SMALL_MB)
                verdict, why = judge_resume(res, files, culprits, fallback, fb_step)
                if fallback and fb_step == 4 and verdict == "fail" and res.rc == 0 and "(step 4)" in res.out:
                    # a damaged latest beside an intact step 4: fallback resumes step 4, naming latest
                    verdict, why = ("fallback", "") if "latest" in res.out else (verdict, why)
                lost = guard.lost()
                if lost:
                    verdict, why = "fail", f"lost checkpoint: {lost}"
                tally.record(group, f"{name} / resume" + (" with fallback" if fallback else ""), verdict, why, cmd)
                s.reset()
                mutate_again(s, mutate)
            cmd = [bin_dir / "moe-generate", s.dst, "--prompt", "a", "--max-new", "2", "--quiet"]
            res = C.run(cmd, 60, max_mb=SMALL_MB)
            tally.record(group, f"{name} / moe-generate", *judge_generate(res, files, culprits), cmd)
        finally:
            s.reset()

    C.parallel(one, cases, len(scratch))


def mutate_again(s, mutate):
    try:
        mutate(s.dst)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- SIGKILL during saves

BIG = ["model.d_model=256", "model.dense_hidden=768", "moe.expert_hidden=384", "train.global_batch=2",
       "model.seq_len=16", "checkpoint.keep=2"]


def kill_campaign(bin_dir, tmp, tally, mode, kills=12):
    """Kills moe-train (a model whose checkpoint takes a moment, ~65 MB) at seeded random
    moments while it saves every step (keeping 2), `kills` times in a row, each run resuming
    from what the last kill left. After every kill: the run had resumed from the `latest` the
    previous kill left (if it got that far); `latest` names a checkpoint that verifies and did
    not go back; every checkpoint committed before the kill is intact, or was retired whole by
    retention (never the one `latest` named while it still did); at most one interrupted .tmp
    is left. At the end a run completes and leaves no .tmp."""
    run = Path(tmp) / "run"
    ck = run / "checkpoints"
    rng = random.Random(f"kill:{mode}")
    sets = data_sets(tmp) + BIG + [f"checkpoint.async={'true' if mode == 'async' else 'false'}",
                                   "checkpoint.interval=1"]
    group = f"sigkill {mode}"
    r = train(bin_dir, run, tmp, sets + ["train.steps=1"])
    assert r.rc == 0, r.out[-2000:]
    digests = {}
    during_save = 0
    half = set()  # half-deleted checkpoints already reported

    def problem_with(d):
        """"" if checkpoint d verifies (checked once per content), else what is wrong."""
        dg = C.tree_digest(ck / d)
        if digests.get(d) != dg:
            v = C.run([bin_dir / "moe-ckpt", "verify", ck / d], 120)
            if v.rc != 0:
                return f"{d} does not verify: {' '.join(v.out.split())[-300:]}"
            digests[d] = dg
        return ""

    for k in range(kills):
        before = (ck / "latest").read_text().strip()
        step = int(before[5:])
        committed = sorted(p.name for p in ck.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))
        cmd = C.moe_train_cmd(bin_dir, run, sets + [f"train.steps={step + 1000}"])
        delay = rng.uniform(0.4, 2.2) * C.SLOW
        p = subprocess.Popen([str(a) for a in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=C.ENV,
                             start_new_session=True, preexec_fn=C.resource_core)
        t0 = time.time()
        while time.time() - t0 < delay and p.poll() is None:
            time.sleep(0.01)
        in_save = any(ck.glob("*.tmp"))
        C.kill_group(p)
        out = p.communicate()[0].decode("utf-8", "replace")
        cid = f"{mode} kill {k + 1} at {delay:.2f} s (from step {step})"
        if p.returncode != -signal.SIGKILL:
            tally.record(group, cid, "fail", f"moe-train ended before the kill (exit {p.returncode}): {out[-800:]}",
                         cmd)
            continue
        during_save += in_save
        problems = []
        if "resumed from" in out and f"{before} (step {step})" not in out:
            problems.append(f"the run did not resume from latest ({before}): "
                            f"{[ln for ln in out.splitlines() if 'resumed' in ln]}")
        name = (ck / "latest").read_text().strip() if (ck / "latest").is_file() else ""
        if not name or not (ck / name).is_dir():
            problems.append(f"latest ('{name}') does not name a checkpoint")
        else:
            problems.append(problem_with(name))
            if int(name[5:]) < step:
                problems.append(f"latest went back from {before} to {name}")
        for d in committed:
            if not (ck / d).exists():
                if d == name or (d == before and name == before):
                    problems.append(f"{d} is gone although latest names it")
                continue  # retired by retention
            bad = problem_with(d)
            if bad and d != name and (not name or int(d[5:]) < int(name[5:])):
                if d not in half:
                    problems.append(f"half-deleted: {bad} (retention was interrupted: {d} is neither whole nor gone)")
                half.add(d)
            elif bad:
                problems.append(bad)
        tmps = [p.name for p in ck.glob("*.tmp")]
        if len(tmps) > 1:
            problems.append(f"interrupted saves pile up: {tmps}")
        problems = [x for x in problems if x]
        tally.record(group, cid + (" during a save" if in_save else ""), "fail" if problems else "ok",
                     "; ".join(problems), cmd)
    # The run completes: one more step and its save; nothing interrupted is left.
    name = (ck / "latest").read_text().strip()
    cmd = C.moe_train_cmd(bin_dir, run, sets + [f"train.steps={int(name[5:]) + 1}"])
    res = C.run(cmd, 180)
    problems = [] if res.rc == 0 and not C.crash(res) else [f"exit {res.rc}: {res.out[-800:]}"]
    if f"{name} (step {int(name[5:])})" not in res.out:
        problems.append(f"it did not resume from latest ({name}): {res.out[-500:]}")
    if list(ck.glob("*.tmp")):
        problems.append(f"interrupted saves left after a completed save: {[p.name for p in ck.glob('*.tmp')]}")
    left = sorted(d for d in half if (ck / d).exists())
    if left:
        problems.append(f"half-deleted checkpoints are still there after a completed save and its retention: {left}")
    new = (ck / "latest").read_text().strip()
    if new != f"step_{int(name[5:]) + 1:08d}" or problem_with(new):
        problems.append(f"latest is {new} after the final save: {problem_with(new)}")
    tally.record(group, f"{mode}: the run completes after {kills} kills", "fail" if problems else "ok",
                 "; ".join(problems), cmd)
    # A campaign that never caught a save in progress tests nothing.
    ok = during_save >= kills // 3
    tally.record(group, f"{mode}: kills that landed during a save", "ok" if ok else "fail",
                 f"only {during_save} of {kills} kills landed during a save (want >= {kills // 3}): the "
                 f"model saves too fast for this machine", None)
    print(f"{mode}: {during_save} of {kills} kills landed while a save was in progress")


def case_sigkill_sync(bin_dir, tmp, tally):
    kill_campaign(bin_dir, tmp, tally, "sync")


def case_sigkill_async(bin_dir, tmp, tally):
    kill_campaign(bin_dir, tmp, tally, "async")


# ---------------------------------------------------------------- a full disk

def case_full_disk(bin_dir, tmp, tally):
    """A small tmpfs holds the run: with the disk filled to leave a seeded range of free
    bytes, a save fails cleanly (exit 1, 'no space left on device', naming where), the
    previous checkpoint and latest stay, no .tmp is left, and with room again the run resumes."""
    mnt = Path(tmp) / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        print(f"skipped: cannot mount a tmpfs here ({r.stderr.strip()})")
        return 77
    try:
        text = corpus(Path(tmp) / "corpus.txt")
        del text
        run = mnt / "run"
        res = train(bin_dir, run, tmp, ["train.steps=2", "checkpoint.interval=2"])
        assert res.rc == 0, res.out[-2000:]
        rng = random.Random("full disk")
        leaves = [0, 1, 4096, 65536] + sorted(rng.randrange(100_000, 1_300_000) for _ in range(8))
        step, full = 2, 0
        for mode in ("sync", "async"):
            for leave in leaves:
                cid = f"{mode} save with {leave} bytes free (from step {step})"
                filler = mnt / "filler"
                free = shutil.disk_usage(mnt).free
                with open(filler, "wb") as f:
                    try:
                        f.write(b"\0" * max(0, free - leave))
                    except OSError:
                        pass
                latest_before = (run / "checkpoints" / "latest").read_text().strip()
                guard = C.Guard(bin_dir, [run / "checkpoints" / latest_before])
                cmd = C.moe_train_cmd(bin_dir, run, data_sets(tmp) + [
                    f"train.steps={step + 2}", "checkpoint.interval=2", f"checkpoint.async={mode == 'async'}".lower()])
                res = C.run(cmd, 120, max_mb=SMALL_MB)
                why = C.crash(res)
                problems = [why] if why else []
                latest_after = (run / "checkpoints" / "latest").read_text().strip() \
                    if (run / "checkpoints" / "latest").is_file() else "(none)"
                verdict = "clean"
                if res.rc == 1:
                    if "no space left on device" not in res.out.lower():
                        problems.append(f"the message does not say the disk is full: {res.out[-600:]}")
                    if latest_after != latest_before:
                        problems.append(f"latest moved from {latest_before} to {latest_after} on a failed save")
                elif res.rc == 0:
                    verdict = "ok"  # it fitted: the new checkpoint must be whole
                    v = C.run([bin_dir / "moe-ckpt", "verify", run / "checkpoints" / latest_after], 60)
                    if latest_after != f"step_{step + 2:08d}" or v.rc != 0:
                        problems.append(f"exit 0 but latest is {latest_after} (verify exit {v.rc}: {v.out[-300:]})")
                elif not why:
                    problems.append(f"exit {res.rc} (want 1 naming the full disk, or 0): {res.out[-600:]}")
                if list((run / "checkpoints").glob("*.tmp")):
                    problems.append("a .tmp directory was left behind")
                lost = guard.lost()
                if lost:
                    problems.append(f"lost checkpoint: {lost}")
                filler.unlink()
                # With room again, the run resumes from latest and completes.
                res2 = C.run(C.moe_train_cmd(bin_dir, run, data_sets(tmp) + [
                    f"train.steps={step + 2}", "checkpoint.interval=2"]), 120)
                if res2.rc != 0 or C.crash(res2):
                    problems.append(f"with room again the run failed: exit {res2.rc}: {res2.out[-600:]}")
                else:
                    step += 2
                tally.record(f"full disk {mode}", cid, "fail" if problems else verdict, "; ".join(problems), cmd)
                full += res.rc == 1
                # Keep the disk small: only the newest two checkpoints stay (retention).
        # A campaign whose disk never filled tested nothing.
        tally.record("full disk", "saves that met a full disk", "ok" if full >= len(leaves) else "fail",
                     f"only {full} of {2 * len(leaves)} saves met a full disk", None)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
    return 0


CASES = {
    "flip_manifest": case_flip_manifest,
    "flip_shard_attributes": case_flip_shard_attributes,
    "flip_shard_datasets": case_flip_shard_datasets,
    "damaged_files": case_damaged_files,
    "sigkill_sync": case_sigkill_sync,
    "sigkill_async": case_sigkill_async,
    "full_disk": case_full_disk,
}

def repro(bin_dir, case, out):
    """Rebuilds one checkpoint case in directory `out` (kept) and prints the commands that show
    it: `test_ckpt_faults.py BIN_DIR repro "CASE" OUT`, CASE a case id from a table without its
    " / tool" suffix, e.g. "manifest.h5: attr-ref attribute 'file' of 'tensors/lm_head.weight'
    byte 15 bit 5" or "latest FIFO"."""
    import re
    bin_dir, out = Path(bin_dir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=False)
    base = make_run(bin_dir, out, "run")
    m = re.fullmatch(r"(manifest\.h5|shard_00000\.h5): (\S+) (.*) byte (\d+) bit (\d+)", case)
    if m:
        which, kind, item, at, bit = m.group(1), m.group(2), m.group(3), int(m.group(4)), int(m.group(5))
        path = base / "checkpoints" / STEP4 / which
        hits = [r for r in h5map.regions(str(path)) if r.kind == kind and r.item == item]
        assert len(hits) == 1, f"no single item {kind} {item} in {which}: {hits}"
        data = bytearray(path.read_bytes())
        data[hits[0].start + at] ^= 1 << bit
        path.write_bytes(bytes(data))
        print(f"flipped bit {bit} of byte {hits[0].start + at} of {path} ({kind} {item})")
    else:
        other = make_run(bin_dir, out, "other", seed=99)
        named = {name: mutate for name, mutate, *_ in damaged_cases(base, other)}
        assert case in named, f"unknown case {case!r}; damaged-file cases: {sorted(named)}"
        named[case](base)
        print(f"applied '{case}' to {base}")
    env = " ".join(f"{k}={v}" for k, v in C.ENV.items() if k.startswith("OMPI_"))
    print("reproduce with:")
    print(f"  {bin_dir}/moe-ckpt verify {base / 'checkpoints' / STEP4}")
    for sets in (RESUME, FALLBACK):
        print(f"  {env} {C.shell_words(C.moe_train_cmd(bin_dir, base, data_sets(out) + sets))}")
    print(f"  {bin_dir}/moe-generate {base} --prompt a --max-new 2")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[2] == "repro":
        repro(sys.argv[1], sys.argv[3], sys.argv[4])
    else:
        C.main(CASES)
