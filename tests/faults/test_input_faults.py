#!/usr/bin/env python3
"""Fault campaign, inputs: a few hundred seeded mutations of a TOML config
(wrong types, out-of-range and boundary numbers, huge and negative values,
unknown and deleted keys, binary junk, invalid UTF-8, broken syntax, hostile
paths) and of llm.c .bin token shards (header magic, version and count,
truncation, tokens >= vocab_size, files that are not files).

Each config goes to moe-train (a real 2-step run of the small model) and, for a
seeded third, to `moe-launch --dry-run`; each shard to moe-train and
`moe-launch --dry-run` (whose preflight reads the data). A case passes on
exit 0 (accepted), on exit 2 (or 1) with a message naming the culprit (the
key, the config file and line, or the data file), or, for a config that is
valid but needs more than the campaign grants (a huge model), on reaching
the campaign's time or memory budget while busy; it fails on a crash, a
hang, an uncaught exception, an unnamed error, or a silent success on a
corrupt data shard.

usage: test_input_faults.py BIN_DIR CASE     (CASE: configs, data_shards)
"""
import os
import random
import re
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import campaign as C  # noqa: E402

N_CONFIGS = 130

BASE = """# The fault campaign's base config: the small model of tests/ckpt, 2 steps.
[run]
name = "fuzz"
dir = "run"

[model]
vocab_size = 256
seq_len = 32
d_model = 32
n_layers = 3
n_heads = 4
n_kv_heads = 2
dense_layers = 1
dense_hidden = 64

[moe]
experts = 8
top_k = 2
expert_hidden = 24
shared_experts = 1
score = "softmax"
bias_update_rate = 0.01

[data]
format = "text"
train = ["{corpus}"]
val_fraction = 0.05

[train]
steps = 2
global_batch = 8
micro_batch = 0
lr = 0.01
warmup_steps = 2
val_every = 0
log_every = 1
threads = 1

[checkpoint]
interval = 0
at_end = false
"""

# Keys whose values are paths or globs: mutated only to hostile paths inside the
# campaign's directory (a mutation must never make a run write outside it).
PATH_KEYS = {"run.name", "run.dir", "data.train", "data.val", "checkpoint.resume", "checkpoint.dir",
             "launch.hostfile"}


def corpus(path, size=32768, seed=7):
    rng = random.Random(seed)
    words = ("the yard switches wagons along rails while experts route tokens to their own tracks and a train "
             "of thought leaves the station at noon with freight for every layer of the model").split()
    text = ""
    while len(text) < size:
        text += " ".join(rng.choice(words) for _ in range(rng.randrange(4, 14))).capitalize() + ".\n"
    Path(path).write_text(text[:size])


def all_keys(bin_dir, tmp):
    """{dotted key: TOML value text} of every key moe-train knows (its --print-config)."""
    r = C.run([bin_dir / "moe-train", "--print-config"], 60)
    assert r.rc == 0, r.out
    keys, section = {}, ""
    for line in r.out.splitlines():
        m = re.fullmatch(r"\[(\w+)\]", line.strip())
        if m:
            section = m.group(1)
            continue
        m = re.fullmatch(r"(\w+) = (.*)", line.strip())
        if m and section:
            keys[f"{section}.{m.group(1)}"] = m.group(2)
    assert len(keys) > 50, keys
    return keys


def kind_of(value):
    v = value.strip()
    if v in ("true", "false"):
        return "bool"
    if v.startswith("["):
        return "array"
    if v.startswith(("'", '"')):
        return "string"
    if re.fullmatch(r"-?\d+", v):
        return "int"
    return "float"


def set_key(text, key, value_bytes):
    """The config text (bytes) with `key` set to the raw TOML value `value_bytes` (replacing
    its line if present, else appended to its section, else in a new section)."""
    section, leaf = key.split(".", 1)
    lines = text.split(b"\n")
    cur = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith(b"[") and s.endswith(b"]"):
            cur = s[1:-1].decode("latin-1")
        elif cur == section and re.match(rb"%s\s*=" % re.escape(leaf.encode()), s):
            lines[i] = leaf.encode() + b" = " + value_bytes
            return b"\n".join(lines)
    for i, line in enumerate(lines):
        if line.strip() == f"[{section}]".encode():
            lines.insert(i + 1, leaf.encode() + b" = " + value_bytes)
            return b"\n".join(lines)
    return text + f"\n[{section}]\n".encode() + leaf.encode() + b" = " + value_bytes + b"\n"


INTS = [b"0", b"-1", b"1", b"2", b"3", b"7", b"2147483647", b"2147483648", b"-2147483648", b"4294967296",
        b"9007199254740993", b"9223372036854775807", b"-9223372036854775808", b"9223372036854775808",
        b"99999999999999999999999", b"0x7fffffff", b"0o777", b"0b101", b"1_000", b"+5", b"007"]
HUGE = [b"16777216", b"1073741824", b"1099511627776", b"1000000000000000000", b"4096", b"65536", b"1048576"]
FLOATS = [b"0.0", b"-0.0", b"nan", b"+nan", b"-nan", b"inf", b"-inf", b"1e-320", b"5e-324", b"1e308", b"-1e308",
          b"1.7976931348623157e308", b"1e309", b"-0.5", b"0.999999999999", b"1.0000000001", b"3.4e38", b"1e-45"]
WRONG = [b'"12"', b'"true"', b"true", b"false", b"1.5", b"[]", b"[1, 2]", b'["a"]', b"{}", b"{ a = 1 }",
         b"1979-05-27T07:32:00Z", b"07:32:00", b'""', b"''", b"'''multi\nline'''", b'"\\u0000"']
STRINGS = [b'""', b'" "', b'"softmax "', b'"SOFTMAX"', b'"none"', b'"\\u00e9t\\u00e9"', b'"\xff\xfe"',
           b'"a\\nb"', b'"' + b"x" * 5000 + b'"', b'"\\t"', b'"../"', b'"sigmoid\\u0000"']


def hostile_paths(tmp):
    """TOML values of hostile paths, all inside tmp (relative ones resolve under tmp/cwd)."""
    d = Path(tmp)
    return [b'""', b'"."', b'".."', b'"../../.."', b'"/dev/null"', b'"/dev/zero"', f'"{d / "fifo"}"'.encode(),
            f'"{d / "adir"}"'.encode(), f'"{d / "afile" / "x"}"'.encode(), f'"{d / "nowhere" / "x"}"'.encode(),
            b'"\xff\xfe"', b'"' + b"p" * 5000 + b'"', b'"a/b/../../.."', b'"*"', f'"{d / "adir" / "*"}"'.encode(),
            b'"~"', b'"run\\u0000x"', f'["{d / "fifo"}"]'.encode(), b'["/dev/zero"]', f'["{d / "adir"}"]'.encode(),
            f'["{d / "afile" / "x"}"]'.encode(), b"[]", b'["\xff"]']


def mutations(keys, tmp, n, seed="configs"):
    """n seeded (case id, config bytes, culprit key or None, kind) mutations of BASE."""
    rng = random.Random(seed)
    corpus_path = Path(tmp) / "corpus.txt"
    base = BASE.format(corpus=corpus_path).encode()
    numeric = [k for k, v in keys.items() if kind_of(v) in ("int", "float") and k not in PATH_KEYS]
    strings = [k for k, v in keys.items() if kind_of(v) == "string" and k not in PATH_KEYS]
    anykey = [k for k in keys if k not in PATH_KEYS]
    base_lines = [i for i, ln in enumerate(base.split(b"\n")) if b"=" in ln]
    ops = ["type", "int", "huge", "float", "negative", "string", "path", "unknown", "delete", "junk", "utf8",
           "syntax"]
    weights = [3, 3, 2, 2, 2, 1.5, 2, 1.5, 1, 1.5, 1, 1.5]
    out = []
    # Every hostile path for the data files, a sample for the other path keys.
    paths = hostile_paths(tmp)
    systematic = [(k, v) for v in paths for k in ("data.train", "data.val") if k == "data.train" or
                  v.startswith(b"[") or v in (b'"."', b'"/dev/null"')]
    systematic += [(k, v) for k in sorted(PATH_KEYS - {"data.train", "data.val"}) for v in rng.sample(paths, 5)]
    for i, (key, value) in enumerate(systematic):
        what = f"{key} = {value[:60]!r}"
        out.append((f"config p{i:03d} path: {what}", set_key(base, key, value), key, "path",
                    value.decode("utf-8", "replace").strip('"[]')[:200]))
    ops.remove("path")
    weights.pop(6)
    for i in range(n):
        op = rng.choices(ops, weights)[0]
        culprit, text, what = None, base, ""
        if op in ("type", "int", "huge", "float", "negative", "string"):
            key = rng.choice(numeric if op in ("int", "huge", "float", "negative") else
                             strings if op == "string" else anykey)
            if op == "type":
                pool = WRONG
            elif op == "int":
                pool = INTS
            elif op == "huge":
                pool = HUGE
            elif op == "float":
                pool = FLOATS
            elif op == "negative":
                pool = [b"-1", b"-2", b"-1000000", b"-2147483648", b"-0.5", b"-1e-9", b"-inf"]
            else:
                pool = STRINGS
            value = rng.choice(pool)
            text, culprit, what = set_key(base, key, value), key, f"{key} = {value[:40]!r}"
        elif op == "path":
            key = rng.choice(sorted(PATH_KEYS))
            value = rng.choice(hostile_paths(tmp))
            text, culprit, what = set_key(base, key, value), key, f"{key} = {value[:60]!r}"
            what += "\0" + value.decode("utf-8", "replace").strip('"[]')[:200]
        elif op == "unknown":
            key = rng.choice(anykey)
            section, leaf = key.split(".", 1)
            j = rng.randrange(len(leaf))
            kind = rng.choice(["typo", "new", "section", "top", "nested"])
            if kind == "typo" and len(leaf) > 2:
                leaf2 = leaf[:j] + leaf[j + 1:] if rng.random() < 0.5 else leaf[:j] + "x" + leaf[j:]
                new = f"{section}.{leaf2}"
                text = set_key(base, new, b"1")
            elif kind == "section":
                new = f"{section}s.{leaf}"
                text = base + f"\n[{section}s]\n{leaf} = 1\n".encode()
            elif kind == "top":
                new = leaf
                text = f"{leaf} = 1\n".encode() + base
            elif kind == "nested":
                new = f"{section}.extra.{leaf}"
                text = base + f"\n[{section}.extra]\n{leaf} = 1\n".encode()
            else:
                new = f"{section}.zz_{leaf}"
                text = set_key(base, new, b"2")
            culprit, what = (new if kind != "top" else None), f"unknown key {new!r} ({kind})"
        elif op == "delete":
            lines = base.split(b"\n")
            j = rng.choice(base_lines)
            what = f"line {j + 1} deleted ({lines[j][:40]!r})"
            del lines[j]
            text = b"\n".join(lines)
            # Deleting a key leaves its default: usually valid, so no culprit is required on success.
            culprit = None
        elif op == "junk":
            j = rng.randrange(len(base))
            junk = bytes(b for b in rng.randbytes(rng.choice([1, 3, 16, 200])) if b != ord("/")) or b"\x00"
            if rng.random() < 0.5:
                text = base[:j] + junk + base[j:]
                what = f"{len(junk)} junk bytes inserted at byte {j}"
            else:
                text = base[:j] + junk + base[j + len(junk):]
                what = f"{len(junk)} bytes overwritten with junk at byte {j}"
        elif op == "utf8":
            where = rng.choice(["value", "key", "comment", "section"])
            bad = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"])
            if where == "value":
                key = rng.choice(strings)
                text, culprit = set_key(base, key, b'"x' + bad + b'y"'), key
            elif where == "key":
                text = base.replace(b"[model]\n", b"[model]\nsize" + bad + b" = 3\n")
            elif where == "comment":
                text = base.replace(b"[train]\n", b"[train]\n# caf" + bad + b"\n")
            else:
                text = base + b"\n[sec" + bad + b"]\nx = 1\n"
            what = f"invalid UTF-8 {bad!r} in a {where}"
        else:
            kind = rng.choice(["dup key", "dup section", "unterminated string", "unterminated array", "no value",
                               "truncated", "empty", "bom", "crlf", "long line", "deep array", "no equals",
                               "key only", "bad section"])
            what = kind
            if kind == "dup key":
                text = base.replace(b"d_model = 32\n", b"d_model = 32\nd_model = 48\n")
                culprit = "d_model"
            elif kind == "dup section":
                text = base + b"\n[model]\nseq_len = 16\n"
            elif kind == "unterminated string":
                text = base.replace(b'name = "fuzz"', b'name = "fuzz')
            elif kind == "unterminated array":
                text = base.replace(b'.txt"]', b'.txt",')
            elif kind == "no value":
                text = base.replace(b"steps = 2", b"steps =")
            elif kind == "truncated":
                text = base[:rng.randrange(len(base))]
                what = f"truncated at byte {len(text)}"
            elif kind == "empty":
                text = b""
            elif kind == "bom":
                text = b"\xef\xbb\xbf" + base
            elif kind == "crlf":
                text = base.replace(b"\n", b"\r\n")
            elif kind == "long line":
                text = base + b"\n# " + b"y" * (1 << 20) + b"\n"
            elif kind == "deep array":
                text = base.replace(b"lr = 0.01", b"lr = " + b"[" * 5000 + b"]" * 5000)
                culprit = "lr"
            elif kind == "no equals":
                text = base.replace(b"steps = 2", b"steps 2")
            elif kind == "key only":
                text = base + b"\n[train]\n"
            else:
                text = base.replace(b"[moe]", b"[moe")
        what, _, value = what.partition("\0")
        out.append((f"config {i:03d} {op}: {what}", text, culprit, op, value or None))
    return out


def judge_config(res, culprit, cfg_name, op, value=None):
    """(verdict, why) of moe-train / moe-launch on a mutated config."""
    why = C.crash(res)
    if why and res.timed_out and op in ("int", "huge", "float", "type", "negative"):
        return "ok", ""  # a valid but big config, still computing at the deadline (a FIFO is a path case)
    if why and res.memory_blowup and op in ("int", "huge", "float", "type", "negative"):
        return "ok", ""  # a valid config whose model needs more than the campaign grants
    if why:
        return "fail", why
    if res.rc == 0:
        return "ok", ""
    # A bad value must be named by its key (or, for a path, by the path); what is not TOML at all
    # (a syntax error, invalid UTF-8, an unrepresentable number) and unknown keys by file:line.
    names = ([culprit] if culprit else [cfg_name]) + ([value] if value else [])
    at_line = re.search(re.escape(cfg_name) + r":\d+", res.out) is not None
    if res.rc in (1, 2) and (C.names_any(res.out, names) or at_line and (
            "TOML syntax error" in res.out or op == "unknown" and "unknown" in res.out)):
        return "clean", ""
    return "fail", f"exit {res.rc} without naming {names}: {' '.join(res.out.split())[-500:]}"


def case_configs(bin_dir, tmp, tally):
    tmp = Path(tmp)
    corpus(tmp / "corpus.txt")
    os.mkfifo(tmp / "fifo")
    (tmp / "adir").mkdir()
    (tmp / "afile").write_text("a regular file\n")
    keys = all_keys(bin_dir, tmp)
    cases = mutations(keys, tmp, N_CONFIGS)
    rng = random.Random("configs: which also go to moe-launch")
    cases = [(cid, text, culprit, op, value, rng.randrange(3) == 0) for cid, text, culprit, op, value in cases]

    def one(w, case):
        cid, text, culprit, op, value, launch = case
        n = cid.split()[1]
        # A deep working directory: relative hostile paths (../../..) stay inside tmp.
        cwd = tmp / f"w{n}" / "a" / "b" / "c" / "d"
        cwd.mkdir(parents=True)
        cfg = cwd / f"c{n}.toml"
        cfg.write_bytes(text)
        group = f"config {op}"
        # Stop after 2 steps whatever train.steps says (unless that key is the one mutated).
        cmd = [bin_dir / "moe-train", cfg] + ([] if culprit == "train.stop_after" else
                                               ["--set", "train.stop_after=2"])
        res = C.run(cmd, 8, cwd=cwd, max_mb=2048)
        tally.record(group, cid + " / moe-train", *judge_config(res, culprit, cfg.name, op, value), cmd)
        if launch:
            cmd = [bin_dir / "moe-launch", cfg, "--np", "1", "--dry-run"]
            res = C.run(cmd, 8, cwd=cwd, max_mb=2048)
            tally.record(group, cid + " / moe-launch --dry-run", *judge_config(res, culprit, cfg.name, op, value),
                         cmd)

    C.parallel(one, cases, C.workers())


# ---------------------------------------------------------------- data shards

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
BIN_BASE = BASE.replace('format = "text"', 'format = "bin"')


def shard_bytes(tokens, magic=MAGIC, version=VERSION, count=None):
    h = [0] * HEADER_INTS
    h[0], h[1], h[2] = magic, version, len(tokens) if count is None else count
    return struct.pack("<256i", *h) + struct.pack(f"<{len(tokens)}H", *tokens)


def shard_cases(tmp):
    """(case id, builder(path) -> None, expect 'good'/'bad', train list, val list) per case."""
    rng = random.Random("shards")
    tokens = [rng.randrange(256) for _ in range(20000)]
    val = [rng.randrange(256) for _ in range(4000)]
    good = shard_bytes(tokens)
    cases = []

    def put(data):
        return lambda p: p.write_bytes(data)

    def header(i, value):
        h = bytearray(good)
        struct.pack_into("<i", h, 4 * i, value)
        return bytes(h)
    cases.append(("valid shard (control)", put(good), "good"))
    cases.append(("valid: every token vocab_size - 1", put(shard_bytes([255] * 20000)), "good"))
    for v in (0, 20240519, 20240521, -1, 0x20240520, int.from_bytes(MAGIC.to_bytes(4, "little"), "big", signed=True)):
        cases.append((f"magic {v}", put(header(0, v)), "bad"))
    for v in (0, 2, -1, 2 ** 31 - 1, 7):
        cases.append((f"version {v}", put(header(1, v)), "bad"))
    for v in (0, -1, 1, len(tokens) - 1, len(tokens) + 1, 2 ** 31 - 1, -2 ** 31, 2 * len(tokens)):
        cases.append((f"count {v} (file holds {len(tokens)})", put(header(2, v)), "bad"))
    for at in (0, 1, 3, 1023, 1024, 1025, 1024 + len(tokens), len(good) - 1, len(good) // 2):
        cases.append((f"truncated to {at} of {len(good)} bytes", put(good[:at]), "bad"))
    cases.append(("one extra byte", put(good + b"\x00"), "bad"))
    cases.append(("extra tokens beyond count", put(good + b"\x01\x00" * 10), "bad"))
    for pos in (0, 1, 10000, len(tokens) - 2, len(tokens) - 1):
        for v in (256, 257, 65535):
            t = list(tokens)
            t[pos] = v
            cases.append((f"token {v} (>= vocab 256) at {pos}", put(shard_bytes(t)), "bad"))
    for k in range(12):
        h = bytearray(good)
        i = rng.randrange(12)  # the first three header ints
        h[i] ^= 1 << rng.randrange(8)
        cases.append((f"header byte {i} flipped ({k})", put(bytes(h)), "bad"))
    cases.append(("empty file", put(b""), "bad"))
    cases.append(("a directory", lambda p: p.mkdir(), "bad"))
    cases.append(("a FIFO", lambda p: os.mkfifo(p), "bad"))
    cases.append(("a symlink to /dev/zero", lambda p: p.symlink_to("/dev/zero"), "bad"))
    cases.append(("a symlink to /dev/null", lambda p: p.symlink_to("/dev/null"), "bad"))
    cases.append(("a dangling symlink", lambda p: p.symlink_to(p.parent / "nowhere"), "bad"))
    cases.append(("a text file", put(b"hello world\n" * 100), "bad"))
    cases.append(("only the header, count 0", put(shard_bytes([])), "bad"))
    cases.append(("val shard: token 300 at 5", put(good), "bad-val"))
    return cases, shard_bytes(val), shard_bytes([v if i != 5 else 300 for i, v in enumerate(val)])


def case_data_shards(bin_dir, tmp, tally):
    tmp = Path(tmp)
    cases, val_good, val_bad = shard_cases(tmp)

    def one(w, case):
        (name, build, expect), idx = case
        d = tmp / f"s{idx:03d}"
        d.mkdir()
        shard = d / "train_000.bin"
        build(shard)
        val = d / "val_000.bin"
        val.write_bytes(val_bad if expect == "bad-val" else val_good)
        culprit = val.name if expect == "bad-val" else shard.name
        cfg = d / "c.toml"
        text = BIN_BASE.replace('train = ["{corpus}"]', f'train = ["{shard}"]\nval = ["{val}"]')
        cfg.write_text(text)
        for tool, cmd in (("moe-train", [bin_dir / "moe-train", cfg]),
                          ("moe-launch --dry-run", [bin_dir / "moe-launch", cfg, "--np", "1", "--dry-run"])):
            res = C.run(cmd, 8, cwd=d, max_mb=1024)
            why = C.crash(res)
            if why:
                verdict = "fail"
            elif expect == "good":
                verdict, why = ("ok", "") if res.rc == 0 else ("fail", f"a valid shard refused: exit {res.rc}: "
                                                                       f"{res.out[-400:]}")
            elif res.rc == 2 and culprit in res.out:
                verdict = "clean"
            elif res.rc == 0:
                verdict, why = "fail", f"silent success on a bad shard: {' '.join(res.out.split())[-300:]}"
            else:
                verdict, why = "fail", f"exit {res.rc} (want 2 naming {culprit}): {' '.join(res.out.split())[-400:]}"
            tally.record("data shard" if tool == "moe-train" else "data shard (dry run)", f"shard: {name} / {tool}",
                         verdict, why, cmd)

    C.parallel(one, [(c, i) for i, c in enumerate(cases)], C.workers())


CASES = {"configs": case_configs, "data_shards": case_data_shards}

if __name__ == "__main__":
    C.main(CASES)
