#!/usr/bin/env python3
"""End-to-end tests of moe-train as a user runs it.

usage: test_cli.py BUILD_BIN_DIR CASE      (CASE = one of the test_* names below)
Each case runs the real binary in a temporary directory and checks its exit
code, its message and what it wrote.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BIN = Path(sys.argv[1])
TRAIN = BIN / "moe-train"
# A model small enough that a few steps take a second.
SMALL = ["--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
         "--set", "model.n_kv_heads=1", "--set", "model.seq_len=32", "--set", "moe.experts=4",
         "--set", "moe.expert_hidden=32", "--set", "model.dense_hidden=64", "--set", "train.global_batch=4",
         "--set", "train.val_every=0", "--set", "train.log_every=1"]


def run(args, cwd, expect_rc, *needles):
    p = subprocess.run([str(TRAIN)] + args, cwd=cwd, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == expect_rc, f"exit {p.returncode}, expected {expect_rc}; output:\n{out}"
    for n in needles:
        assert n in out, f"expected {n!r} in output:\n{out}"
    return out


def write_config(d, text, name="c.toml"):
    path = Path(d) / name
    path.write_text(text)
    return str(path)


def write_shard(path, tokens, magic=20240520, version=1, count=None):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [magic, version, len(tokens) if count is None else count]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def step_rows(run_dir):
    """metrics.jsonl's per-step rows: those with a loss (event lines such as a start marker are skipped)."""
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in rows if isinstance(r, dict) and "loss" in r]


def losses(run_dir):
    return [r["loss"] for r in step_rows(run_dir)]


# ---------------------------------------------------------------- bad input

def test_unknown_key(d):
    c = write_config(d, "[moe]\nexperts = 4\ntopk = 2\n")
    run([c], d, 2, f"{c}:3", "unknown key 'moe.topk'", "did you mean 'moe.top_k'")


def test_unknown_section(d):
    c = write_config(d, "[trian]\nsteps = 3\n")
    run([c], d, 2, "unknown section [trian]", "did you mean '[train]'")


def test_wrong_type(d):
    c = write_config(d, '[model]\nd_model = "wide"\n')
    run([c], d, 2, f"{c}:2", "model.d_model must be an integer, got 'wide' (a string)")


def test_out_of_range(d):
    c = write_config(d, "[train]\nlr = -1.0\n")
    run([c], d, 2, "train.lr = -1 is out of range")


def test_bad_enum(d):
    run(["--set", "moe.score=relu"], d, 2, 'moe.score = "relu" is not one of "softmax", "sigmoid"')


def test_bad_override(d):
    run(["--set", "train.steps"], d, 2, "--set train.steps", "expected section.key=value")
    run(["--set", "train.stepz=3"], d, 2, "unknown key 'train.stepz'", "did you mean 'train.steps'")


def test_cross_key(d):
    run(["--set", "model.n_kv_heads=3"], d, 2, "model.n_kv_heads = 3 must divide model.n_heads = 4")
    run(["--set", "moe.top_k=9"], d, 2, "moe.top_k = 9 exceeds moe.experts = 8")


def test_toml_syntax(d):
    c = write_config(d, "[train\nsteps = 3\n")
    run([c], d, 2, f"{c}:1", "TOML syntax error")


def test_missing_config(d):
    run(["nope.toml"], d, 2, "cannot read config file 'nope.toml'")


def test_missing_data(d):
    run(SMALL + ["--set", 'data.train="/nonexistent/*.txt"'], d, 2, "data.train: no file matches '/nonexistent/*.txt'")


def test_empty_data(d):
    (Path(d) / "empty.txt").write_text("")
    run(SMALL + ["--set", "data.train=empty.txt"], d, 2, "data file 'empty.txt' is empty")


def test_data_too_short(d):
    (Path(d) / "short.txt").write_text("hello")
    run(SMALL + ["--set", "data.train=short.txt"], d, 2, "has no file with at least model.seq_len + 1 = 33 tokens")


def test_bad_shard_magic(d):
    write_shard(Path(d) / "bad.bin", [1, 2, 3] * 100, magic=1234)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=bad.bin"], d, 2,
        "data shard 'bad.bin': bad magic 1234")


def test_bad_shard_version(d):
    write_shard(Path(d) / "v7.bin", [1, 2, 3] * 100, version=7)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=v7.bin"], d, 2, "header version 7 is not supported")


def test_truncated_shard(d):
    write_shard(Path(d) / "cut.bin", [1, 2, 3] * 100, count=1000)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=cut.bin"], d, 2,
        "header says 1000 tokens", "truncated?")


def test_vocab_mismatch(d):
    write_shard(Path(d) / "big.bin", [5] * 200 + [300] + [5] * 200)
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=big.bin", "--set", "train.steps=50"], d, 2,
        "data file 'big.bin': token 300", "outside the vocabulary (model.vocab_size = 256)")
    run(SMALL + ["--set", "model.vocab_size=100"], d, 2, 'data.format = "text" has byte tokens 0..255')


def test_wrong_world_size(d):
    run(SMALL + ["--set", "parallel.dp=2"], d, 2, "parallel.pp x parallel.dp = 1 x 2 = 2 ranks, but the job has 1 rank")


# ---------------------------------------------------------------- inputs refused before anything runs

def quick(args, cwd, expect_rc, *needles, env=None, timeout=60):
    """run() with a short timeout: a case that blocks or allocates its way to a crash fails fast."""
    p = subprocess.run([str(TRAIN)] + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    out = p.stdout + p.stderr
    assert p.returncode == expect_rc, f"{args}: exit {p.returncode}, expected {expect_rc}; output:\n{out}"
    for n in needles:
        assert n in out, f"{args}: expected {n!r} in output:\n{out}"
    assert "bad_alloc" not in out and "underflow" not in out, out
    return out


def test_shard_tokens_checked_at_open(d):
    # The bad token sits where a short run never reads (60000 tokens, 2 steps of
    # 4 x 33-token windows): it must fail before step 1, not when a window hits it.
    toks = [5] * 60000
    toks[51234] = 700
    write_shard(Path(d) / "late.bin", toks)
    quick(SMALL + ["--set", "data.format=bin", "--set", "data.train=late.bin", "--set", "train.steps=2",
                   "--set", "run.dir=r"], d, 2,
          "data file 'late.bin': token 700 at position 51234", "model.vocab_size = 256")
    assert not (Path(d) / "r" / "metrics.jsonl").exists() or not [
        l for l in (Path(d) / "r" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l], "it trained"
    quick(SMALL + ["--set", "data.format=bin", "--set", "data.train=late.bin", "--set", "model.vocab_size=701",
                   "--set", "train.steps=1", "--set", "run.dir=ok"], d, 0, "step 1/1")


def test_only_regular_files(d):
    fifo = Path(d) / "fifo"
    os.mkfifo(fifo)
    (Path(d) / "adir").mkdir()
    for path, kind in ((str(fifo), "a FIFO (named pipe)"), ("adir", "a directory"), ("/dev/zero", "a character device")):
        for fmt_, what in (("text", "data file"), ("bin", "data shard")):
            quick(SMALL + ["--set", f"data.format={fmt_}", "--set", f"data.train={path}"], d, 2,
                  f"{what} '{path}' is {kind}, not a regular file")
        quick([path], d, 2, f"config file '{path}' is {kind}, not a regular file")


def test_sizes_that_cannot_fit(d):
    # In range, but far beyond this machine: refused at once, naming the largest
    # part and its keys, instead of a bare std::bad_alloc after allocating.
    for key, part, named in (("model.vocab_size=16777216", "activations need", "model.vocab_size = 16777216"),
                             ("moe.expert_hidden=1048576", "expert rows need", "moe.expert_hidden = 1048576"),
                             ("train.global_batch=1073741824", "activations need", "train.global_batch = 1073741824"),
                             ("model.seq_len=1048576", "activations need", "model.seq_len = 1048576"),
                             ("model.d_model=65536", "AdamW moments need", "model.d_model = 65536")):
        out = quick(["--set", key, "--set", "run.dir=r"], d, 2, "not enough memory: " + part, named, "available (")
        assert "(raised at src/estimate/memory.cpp" in out, out


def test_ranges_that_would_give_nan(d):
    quick(["--set", "train.eps=0"], d, 2, "train.eps = 0 is out of range (0, 1]")
    quick(["--set", "model.norm_eps=0"], d, 2, "model.norm_eps = 0 is out of range (0, 1]")


def test_run_name_is_one_path_component(d):
    escape = f"{Path(d).name}_escaped"  # runs/../../<escape> would land beside this test's directory
    for name in (f"../../{escape}", "..", "", "a/b", "."):
        quick(["--set", f"run.name={name}", "--set", "train.steps=1"], d, 2, "is not a single path component")
    assert not (Path(d).parent / escape).exists()


def test_threads(d):
    quick(["--set", "train.threads=4096"], d, 2, "train.threads = 4096 threads per rank is more than this machine can use")
    # 0 (the default): OMP_NUM_THREADS when set, else the affinity share; the banner says which.
    base = SMALL + ["--set", "train.steps=1", "--set", "run.dir=r"]
    quick(base, d, 0, "1 thread per rank (OMP_NUM_THREADS)", env={"OMP_NUM_THREADS": "1"})
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    p = subprocess.run([str(TRAIN)] + base, cwd=d, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and "per rank (affinity share)" in p.stdout, p.stdout + p.stderr
    quick(base, d, 2, "OMP_NUM_THREADS = 'lots' is not a positive integer", env={"OMP_NUM_THREADS": "lots"})


# ---------------------------------------------------------------- good runs

def test_metrics_and_log(d):
    out = run(SMALL + ["--set", "train.steps=4", "--set", "train.val_every=2", "--set", "run.dir=r"], d, 0,
              "step 1/4 | loss ", "tok/s", "GFLOP/s", "| imb ", "| drop ", "| eta ", "| val ")
    rows = step_rows(Path(d) / "r")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for k in ("loss", "lr", "grad_norm", "tokens_per_s", "expert_load", "dropped_frac", "gflops"):
            assert k in r, (k, r)
        assert len(r["expert_load"]) == 1 and len(r["expert_load"][0]) == 4  # 1 MoE layer, 4 experts
        assert sum(r["expert_load"][0]) == 2 * 4 * 32  # top-2 of B*T tokens
        # Where the step went: disjoint parts of one rank's step, so they fit in it
        # (1e-6 s: the rounding of the printed figures).
        t = r["times"]
        assert set(t) == {"forward", "backward", "grad_wait", "optimizer", "moe_wait", "moe_plan", "moe_permute"}, t
        assert all(v >= 0 for v in t.values()) and t["forward"] > 0 and t["backward"] > 0, t
        assert t["forward"] + t["backward"] + t["grad_wait"] + t["optimizer"] <= r["step_seconds"] + 1e-6, (t, r)
        assert t["moe_wait"] + t["moe_plan"] + t["moe_permute"] <= t["forward"] + t["backward"] + 1e-6, t
    assert "val_loss" in rows[1] and "val_loss" in rows[3] and "val_loss" not in rows[0]
    resolved = (Path(d) / "r" / "config.toml").read_text()
    assert "d_model = 32" in resolved


def test_same_seed_same_bits(d):
    # The same thread count on both runs (OpenBLAS's rounding can depend on it), set explicitly.
    common = SMALL + ["--set", "train.steps=6", "--set", "moe.capacity_factor=1.0", "--set", "train.threads=2"]
    run(common + ["--set", "run.dir=a"], d, 0)
    run(common + ["--set", "run.dir=b"], d, 0)
    run(common + ["--set", "run.dir=c", "--set", "train.seed=7"], d, 0)
    a, b, c = losses(Path(d) / "a"), losses(Path(d) / "b"), losses(Path(d) / "c")
    assert a == b, (a, b)
    assert a != c


def test_bin_shards_train_and_validate(d):
    rng = np.random.default_rng(0)
    # A learnable stream: token i+1 = (token i * 3 + 1) mod 500, with 10% noise.
    toks = [1]
    for _ in range(20000):
        toks.append(int(rng.integers(0, 500)) if rng.random() < 0.1 else (toks[-1] * 3 + 1) % 500)
    write_shard(Path(d) / "train_000.bin", toks[:15000])
    write_shard(Path(d) / "train_001.bin", toks[15000:18000])
    write_shard(Path(d) / "val_000.bin", toks[18000:])
    run(SMALL + ["--set", "data.format=bin", "--set", "data.train=train_*.bin", "--set", "data.val=val_*.bin",
                 "--set", "model.vocab_size=512", "--set", "train.steps=60", "--set", "train.val_every=60",
                 "--set", "train.lr=1e-2", "--set", "run.dir=r"], d, 0, "18000 tokens in 2 files", "val 2001 tokens in 1 file")
    rows = step_rows(Path(d) / "r")
    assert rows[-1]["val_loss"] < 0.6 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["val_loss"])


def test_print_config_round_trips(d):
    out = run(["--print-config", "--set", "moe.score=sigmoid", "--set", "run.name=x y"], d, 0, 'score = "sigmoid"')
    c = write_config(d, out)
    again = run([c, "--print-config"], d, 0)
    assert again == out


def test_help_config_lists_keys(d):
    run(["--help-config"], d, 0, "moe.capacity_factor", "train.grad_accum", "data.format")


def test_default_run_learns(d):
    # The main job as the quickstart runs it: the built-in tiny config, 300 steps.
    out = run(["--set", "run.dir=r"], d, 0, "step 300/300")
    rows = step_rows(Path(d) / "r")
    first, last = rows[0]["loss"], rows[-1]
    print(f"loss {first:.3f} -> {last['loss']:.3f}, val {last['val_loss']:.3f}, "
          f"{sum(r['step_seconds'] for r in rows):.1f} s of steps")
    assert first > 5.0 and last["val_loss"] < 2.6, out[-2000:]


# ---------------------------------------------------------------- every tool's command line

TOOLS = ["moe-train", "moe-ckpt", "moe-generate", "moe-eval", "moe-launch", "moe-plan"]


def tool(name, args, cwd, expect_rc, *needles, stream="both"):
    p = subprocess.run([str(BIN / name)] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       errors="replace", timeout=300)
    out = {"both": p.stdout + p.stderr, "stdout": p.stdout, "stderr": p.stderr}[stream]
    assert p.returncode == expect_rc, f"{name} {args}: exit {p.returncode}, expected {expect_rc}:\n{p.stdout}{p.stderr}"
    for n in needles:
        assert n in out, f"{name} {args}: expected {n!r} in:\n{out}"
    assert "Traceback" not in out and "terminate called" not in out, out
    return out


def test_usage_errors_exit_2(d):
    # CLI11's own exit codes (105, 106, 109, ...) never leak: a usage error is 2 with a message.
    cases = [
        ("moe-train", ["--bogus"], "--bogus"),
        ("moe-train", ["a.toml", "b.toml"], "b.toml"),
        ("moe-generate", ["x", "--max-new", "-1"], "--max-new"),
        ("moe-generate", ["x", "--top-p", "2"], "--top-p"),
        ("moe-generate", [], "checkpoint is required"),
        ("moe-eval", [], "checkpoint is required"),
        ("moe-eval", ["x", "--batches", "0"], "--batches"),
        ("moe-ckpt", [], "subcommand is required"),
        ("moe-ckpt", ["export", "a", "b", "--format", "gguf"], "gguf"),
        ("moe-ckpt", ["show", "a", "t", "--bins", "0"], "--bins"),
        ("moe-ckpt", ["reshard", "a", "b", "--dp", "-2"], "--dp"),
        ("moe-ckpt", ["info"], "checkpoint is required"),
        ("moe-launch", ["--np", "0"], "--np"),
        ("moe-launch", ["--json"], "--json needs --dry-run"),
        ("moe-plan", ["--width", "5"], "--width"),
        ("moe-plan", ["--pp", "x"], "--pp"),
    ]
    for name, args, needle in cases:
        out = tool(name, args, d, 2, needle, stream="stderr")
        assert out.startswith(f"{name}: bad "), out


def test_help_and_version(d):
    for name in TOOLS:
        tool(name, ["--version"], d, 0, f"{name} 0.", stream="stdout")
        tool(name, ["--help"], d, 0, "Usage:", "--version", stream="stdout")
    # --help shows the defaults.
    tool("moe-generate", ["--help"], d, 0, "--max-new INT:INT in [0 - 1073741824]=200", "--top-p FLOAT:FLOAT in [0 - 1]=1")
    tool("moe-plan", ["--help"], d, 0, "=100")
    tool("moe-ckpt", ["show", "--help"], d, 0, "=20", "=params")


def test_plan_json(d):
    j = json.loads(tool("moe-plan", ["--pp", "2", "--schedule", "1f1b", "--microbatches", "4", "--json", "--ops"], d, 0,
                        stream="stdout"))
    assert j["schedule"] == "1f1b" and j["pp"] == 2 and j["microbatches"] == 4 and not j["split_backward"]
    assert [s["rank"] for s in j["stages"]] == [0, 1] and j["stages"][0]["first_layer"] == 0
    assert j["stages"][-1]["last_layer"] == 3 and abs(sum(s["forward_flops_share"] for s in j["stages"]) - 1) < 1e-9
    assert len(j["ranks"]) == 2
    for r in j["ranks"]:
        assert 0 <= r["bubble_simulated"] < 1 and r["bubble_textbook"] == j["bubble"]["textbook"]
        assert r["activations_held"] >= 1
        ops = [o["op"] for o in r["ops"]]
        assert ops.count("F") == 4 and "W" not in ops, ops
    assert abs(j["bubble"]["textbook"] - 1 / 5) < 1e-12  # (p-1)/(m+p-1)
    # The same numbers as the text output.
    text = tool("moe-plan", ["--pp", "2", "--schedule", "1f1b", "--microbatches", "4"], d, 0)
    assert f"simulated {100 * j['bubble']['simulated_mean']:.1f}% mean" in text, text
    assert "ops" not in json.loads(tool("moe-plan", ["--pp", "2", "--json"], d, 0, stream="stdout"))["ranks"][0]


def svg_checks(path):
    """(width, texts) of an SVG, with every text's estimated right edge."""
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    width, size = float(root.get("width")), float(root.get("font-size"))
    texts = []
    for t in root.iter(ns + "text"):
        fs = float(t.get("font-size", size))
        # Monospace: 0.6 em per character is a common upper bound (DejaVu Sans Mono 0.602).
        texts.append((t.text, float(t.get("x")) + 0.6 * fs * len(t.text)))
    return width, texts


def test_plan_svg(d):
    for sched, pp, m, has_w in (("1f1b", 4, 8, False), ("zb", 4, 8, True), ("gpipe", 2, 4, False)):
        svg = Path(d) / f"{sched}.svg"
        tool("moe-plan", ["--pp", pp, "--schedule", sched, "--microbatches", m, "--svg", svg], d, 0, f"wrote {svg}")
        width, texts = svg_checks(svg)
        for text, right in texts:
            assert right <= width, f"{sched}: '{text}' ends at {right:.0f}, beyond the picture's width {width:.0f}"
        labels = [t for t, _ in texts]
        assert sum(t.endswith("%") and t[:-1].replace(".", "").isdigit() for t in labels) == pp, labels
        assert any("forward" in t for t in labels)
        assert any("weight gradient (W)" in t for t in labels) == has_w, (sched, labels)
        assert any("input gradient (B)" in t for t in labels) == has_w, (sched, labels)
        assert any("backward (B)" in t for t in labels) != has_w, (sched, labels)
        assert ("#e6550d" in svg.read_text()) == has_w  # W boxes are drawn only when there are W ops
    tool("moe-plan", ["--svg", Path(d) / "nodir" / "x.svg"], d, 2, "--svg")


def test_launch_dry_run_json(d):
    j = json.loads(tool("moe-launch", ["--dry-run", "--json", "--np", "2", "--set", "run.dir=r"], d, 0,
                        stream="stdout"))
    assert j["world"]["ranks"] == 2 and j["world"]["source"] == "--np"
    assert j["layout"] == {"pp": 1, "dp": 2, "ep": 2, "expert_dp": 1, "experts_per_rank": 4, "zero1": False}, j
    mem = j["memory_bytes_per_rank"]
    assert abs(sum(v for k, v in mem.items() if k != "total") - mem["total"]) < 1 and mem["weights"] > 0
    assert j["compute"]["flops_per_step"] > 0 and j["compute"]["steps"] == 300
    assert j["checkpoint"]["dir"] == "r/checkpoints" and j["checkpoint"]["bytes"] > 0
    assert j["argv"][-2:] == ["--set", "run.dir=r"] and j["argv"][-3].endswith("/moe-train"), j["argv"]
    assert j["resume"] is None
    # pp > 1 adds the schedule.
    j = json.loads(tool("moe-launch", ["--dry-run", "--json", "--np", "2", "--set", "parallel.pp=2", "--set",
                                       "run.dir=r"], d, 0, stream="stdout"))
    assert j["schedule"]["pp"] == 2 and j["schedule"]["name"] == "1f1b" and 0 < j["schedule"]["simulated_bubble"] < 1


REPORT = Path(__file__).resolve().parents[2] / "tools" / "moe_report.py"


def test_report_skips_bad_lines(d):
    # metrics.jsonl as a crashed and resumed run leaves it, with lines that are not step records.
    run = Path(d) / "run"
    run.mkdir()
    lines = [json.dumps({"event": "start", "from_step": 0})]
    lines += [json.dumps({"step": s, "loss": 5.0 - 0.1 * s, "tokens_per_s": 1000.0, "expert_load": [[1, 2, 3, 4]],
                          "imbalance": [1.6], "dropped_frac": 0.0}) for s in range(1, 9)]
    lines += ['{"step": 9, "lo']  # a partial line: the crash
    lines += [json.dumps({"event": "resume", "from_step": 6})]
    lines += [json.dumps({"step": s, "loss": 3.0 - 0.1 * s, "tokens_per_s": 1000.0}) for s in range(7, 11)]
    bad = ["[1, 2]", '"text"', "7", "null", json.dumps({"step": "11", "loss": 1.0}), json.dumps({"step": 12}),
           json.dumps({"step": 13, "loss": "low"}), json.dumps({"step": True, "loss": 1.0}), json.dumps({"other": 1}),
           json.dumps({"step": 14, "loss": None}), json.dumps({"step": 15, "loss": 1.0, "expert_load": "x",
                                                                "imbalance": [None], "val_loss": "n/a"})]
    data = "\n".join(lines + bad).encode() + b'\n{"step": 16, "loss": 1.0, "note": "\xff\xfe"}\n'
    (run / "metrics.jsonl").write_bytes(data)
    p = subprocess.run(["/usr/bin/python3", str(REPORT), str(run)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    summary = (run / "report" / "summary.txt").read_text()
    # 1..10 and 15: the last record of steps 7 and 8 (after the resume) is used.
    assert "steps        1 .. 15 (11 logged; 2 repeated after a resume" in summary, summary
    assert "loss         4.9000 -> 1.0000 (min 1.0000)" in summary, summary
    assert "resumes      from step 6" in summary, summary
    assert "skipped      12 lines" in summary and "1 invalid UTF-8" in summary and "1 not JSON" in summary, summary
    for png in ("loss.png", "throughput.png", "expert_load.png"):
        assert (run / "report" / png).stat().st_size > 1000
    # The last record of a repeated step wins.
    import importlib.util
    spec = importlib.util.spec_from_file_location("moe_report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, events, skipped, repeats = mod.read_metrics(run / "metrics.jsonl")
    by_step = {r["step"]: r["loss"] for r in rows}
    assert abs(by_step[7] - 2.3) < 1e-12 and abs(by_step[6] - 4.4) < 1e-12 and repeats == 2, by_step
    assert [e["event"] for e in events] == ["start", "resume"] and sum(skipped.values()) == 12
    # Nothing usable: a message and exit 1, no traceback.
    (run / "metrics.jsonl").write_bytes(b'{"event": "start", "from_step": 0}\n\xff\n')
    p = subprocess.run(["/usr/bin/python3", str(REPORT), str(run)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "no step records" in p.stderr and "Traceback" not in p.stderr, p.stderr


if __name__ == "__main__":
    case = sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        globals()[case](d)
    print(f"{case}: ok")
