#!/usr/bin/env python3
"""moe-generate as users meet it: any checkpoint layout, greedy and seeded
sampling, training-time samples, the KV cache against recomputation, and
bad inputs.

usage: test_generate.py BIN_DIR WORK_DIR CASE   (CASE "setup" trains the model)
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
# One thread everywhere: moe-generate takes its thread count from OMP_NUM_THREADS, training from
# train.threads. Runs whose tokens are compared (another layout of the same weights, the trainer's own
# sample) then do the same GEMMs on the same thread count.
THREADS = 1
ENV = mpi_env(OMP_NUM_THREADS=str(THREADS))
RUN = WORK / "run"
CONSOLIDATED = WORK / "consolidated.h5"
STEPS = 40


def run(cmd, expect=0, timeout=300, env=ENV):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", env=env,
                       timeout=timeout)
    assert p.returncode == expect, f"{cmd}: exit {p.returncode}, expected {expect}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


def generate(ckpt, *args, expect=0):
    return run([BIN / "moe-generate", ckpt, *args], expect=expect)


def gen_json(ckpt, *args):
    return json.loads(generate(ckpt, "--json", "--quiet", *args).stdout)


def checkpoint_dir():
    d = RUN / "checkpoints"
    return d / (d / "latest").read_text().strip()


def setup():
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    sets = [f"run.dir={RUN}", f"train.steps={STEPS}", "train.sample_every=20", "train.val_every=0",
            f"checkpoint.interval={STEPS}", "parallel.ep=2", "moe.bias_update_rate=0.01", f"train.threads={THREADS}"]
    args = [a for s in sets for a in ("--set", s)]
    run(["mpiexec", "-n", "2", "--bind-to", "none", BIN / "moe-train", *args], timeout=600)
    run([BIN / "moe-ckpt", "consolidate", checkpoint_dir(), CONSOLIDATED])


def test_ep_checkpoint_equals_consolidated():
    # Written by 2 expert-parallel ranks (4 experts each) vs one file: the
    # same weights, so the same tokens, greedy and sampled.
    info = run([BIN / "moe-ckpt", "--json", "info", checkpoint_dir()]).stdout
    assert json.loads(info)["layout"]["ep"] == 2, info
    for args in (["--temperature", "0"], ["--temperature", "1", "--top-k", "20", "--seed", "5"]):
        a = gen_json(checkpoint_dir(), "--prompt", "The ", "--max-new", "60", *args)
        b = gen_json(CONSOLIDATED, "--prompt", "The ", "--max-new", "60", *args)
        c = gen_json(RUN, "--prompt", "The ", "--max-new", "60", *args)  # a run directory means its latest
        assert a["ids"] == b["ids"] == c["ids"], (a["ids"], b["ids"], c["ids"])
        assert len(a["ids"]) == 60 and a["step"] == STEPS


def test_greedy_is_deterministic():
    outs = {generate(CONSOLIDATED, "--prompt", "Q: ", "--max-new", "50", "--temperature", "0", "--quiet").stdout
            for _ in range(3)}
    assert len(outs) == 1, outs
    text = outs.pop()
    assert text.startswith("Q: ") and len(text.encode("latin-1", "replace")) >= 50, text
    # Greedy ignores the seed.
    other = generate(CONSOLIDATED, "--prompt", "Q: ", "--max-new", "50", "--temperature", "0", "--seed", "9",
                     "--quiet").stdout
    assert other == text


def test_seed_reproduces_sampling():
    a = gen_json(CONSOLIDATED, "--prompt", "A", "--max-new", "80", "--seed", "3", "--top-p", "0.95")
    b = gen_json(CONSOLIDATED, "--prompt", "A", "--max-new", "80", "--seed", "3", "--top-p", "0.95")
    c = gen_json(CONSOLIDATED, "--prompt", "A", "--max-new", "80", "--seed", "4", "--top-p", "0.95")
    assert a["ids"] == b["ids"]
    assert a["ids"] != c["ids"], "a different seed gave the same 80 tokens"
    # top-k 1 is greedy whatever the temperature and seed.
    g = gen_json(CONSOLIDATED, "--prompt", "A", "--max-new", "80", "--temperature", "0")
    k1 = gen_json(CONSOLIDATED, "--prompt", "A", "--max-new", "80", "--top-k", "1", "--seed", "11")
    assert g["ids"] == k1["ids"]


def test_json_with_invalid_utf8():
    # A byte-level model can sample any byte; --json must still print valid JSON (invalid bytes of the
    # text become U+FFFD, "ids" keeps the exact tokens). At temperature 50 the bytes are nearly uniform,
    # so 64 of them are invalid UTF-8 unless about half are ASCII runs: a few seeds find a case for sure.
    for seed in range(10):
        out = gen_json(CONSOLIDATED, "--prompt", "A", "--max-new", "64", "--temperature", "50", "--seed", str(seed))
        assert len(out["ids"]) == 64 and isinstance(out["text"], str), out
        raw = bytes(out["ids"])
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            assert "\ufffd" in out["text"], (raw, out["text"])
            return
        assert out["text"] == raw.decode("utf-8"), (raw, out["text"])
    raise AssertionError("no sample of 10 had invalid UTF-8: the case was not exercised")


def test_training_sample_equals_moe_generate():
    # The trainer gathered the experts of both ranks on rank 0 and sampled
    # with train.sample_temperature and a seed it wrote down; moe-generate on
    # the checkpoint of the same step reproduces that text exactly.
    text = (RUN / "samples.txt").read_bytes().decode("latin-1")
    heads = list(re.finditer(r"=== step (\d+) \(temperature ([0-9.]+), seed (\d+)\) ===\n", text))
    assert [int(h.group(1)) for h in heads] == [20, 40], text[:500]
    last = heads[-1]
    sample = text[last.end():].rstrip("\n")
    assert sample.startswith("The "), sample
    out = run([BIN / "moe-generate", checkpoint_dir(), "--prompt", "The ", "--max-new", str(len(sample) - 4),
               "--temperature", last.group(2), "--seed", last.group(3), "--quiet"]).stdout
    assert out.encode("utf-8", "surrogateescape") and out.rstrip("\n") == sample.encode("latin-1").decode(
        "utf-8", "replace"), (out, sample)


def test_cache_equals_recompute():
    # Recomputing the whole sequence for every token picks the same greedy
    # tokens; the cached path does fewer FLOPs (the uncached cost grows with
    # the square of the length). Not bitwise by construction (the GEMMs have
    # other row counts, which OpenBLAS's Haswell kernels round differently),
    # so a greedy near-tie could flip a token; measured: the same 100 tokens
    # with default (SkylakeX), Haswell and Sandybridge kernels on 1 and 2
    # threads.
    a = gen_json(CONSOLIDATED, "--prompt", "The ", "--max-new", "100", "--temperature", "0")
    b = gen_json(CONSOLIDATED, "--prompt", "The ", "--max-new", "100", "--temperature", "0", "--no-cache")
    assert a["ids"] == b["ids"]
    assert a["cache"] and not b["cache"]
    assert b["forward_flops"] > 20 * a["forward_flops"], (a["forward_flops"], b["forward_flops"])


def test_device_emulated():
    # --device cuda on the CUDA device emulated on the CPU (SY_EMULATE_CUDA=guarded,
    # kernels/cpu/emulated_device.h): the weights, KV cache, activations and the
    # MoE rows live in "device" memory the host cannot touch, so a missing copy
    # to or from the device faults (exit 86) or is refused; the ops are the CPU
    # backend's, so the tokens and logits equal --device cpu bit for bit.
    emu = dict(ENV, SY_EMULATE_CUDA="guarded")
    for args in (["--max-new", "30", "--temperature", "0", "--logits"],
                 ["--max-new", "30", "--temperature", "1", "--top-k", "20", "--seed", "5"],
                 ["--max-new", "12", "--temperature", "0", "--no-cache"]):
        cpu = gen_json(CONSOLIDATED, "--prompt", "The ", *args)
        p = run([BIN / "moe-generate", CONSOLIDATED, "--json", "--quiet", "--prompt", "The ", "--device", "cuda", *args],
                env=emu)
        dev = json.loads(p.stdout)
        assert dev["device"] == "cuda (emulated on the CPU)" and cpu["device"] == "cpu", (dev["device"], cpu["device"])
        assert dev["ids"] == cpu["ids"], (args, dev["ids"], cpu["ids"])
        assert dev.get("prompt_logits") == cpu.get("prompt_logits"), args
    # Without a GPU (and without the emulation) --device cuda is bad input naming the device.
    # The reason comes from the CUDA module the tool loaded (where nvcc built it) or names the missing file.
    p = generate(CONSOLIDATED, "--prompt", "x", "--device", "cuda", expect=2)
    module = BIN.resolve().parent / "lib" / "libswitchyard_cuda.so"
    assert f"device 'cuda' is not available: {module}" in p.stderr or \
        f"device 'cuda' is not available: no CUDA module at {module}" in p.stderr, p.stderr
    if module.exists():
        assert "CUDA" in p.stderr.split(str(module), 1)[1], p.stderr
    p = generate(CONSOLIDATED, "--prompt", "x", "--device", "tpu", expect=2)
    assert "--device" in p.stderr, p.stderr


def test_gqa_cache_bytes():
    # tiny: 4 layers, 2 kv heads of 32 (4 query heads): 2 x 4 x 2 x 32 x 4 B.
    a = gen_json(CONSOLIDATED, "--prompt", "x", "--max-new", "1")
    assert a["cache_bytes_per_token"] == 2 * 4 * 2 * 32 * 4, a
    assert a["cache_bytes"] == a["cache_bytes_per_token"] * 128, a
    err = generate(CONSOLIDATED, "--prompt", "x", "--max-new", "1").stderr
    assert "2048 B/token (2 x 4 layers x 2 kv heads x 32 x 4 B)" in err, err


def test_bad_inputs():
    def bad(args, *needles):
        p = generate(*args, expect=2)
        for n in needles:
            assert n in p.stderr, (args, p.stderr)
    bad([WORK / "nope", "--prompt", "x"], "no checkpoint at", str(WORK / "nope"))
    bad([CONSOLIDATED, "--prompt", "x" * 100, "--max-new", "100"], "needs 200 positions", "context of 128")
    bad([CONSOLIDATED, "--prompt-ids", "1,zwei"], "'zwei' is not an integer")
    bad([CONSOLIDATED, "--prompt-ids", "1,300"], "prompt token 300 (position 1)", "vocabulary of 256")
    bad([CONSOLIDATED, "--prompt", ""], "empty prompt")
    bad([CONSOLIDATED, "--prompt", "a", "--prompt-ids", "1"], "not both")
    bad([CONSOLIDATED, "--prompt", "a", "--top-p", "0"], "--top-p")
    bad([CONSOLIDATED, "--prompt", "a", "--max-new", "-1"], "--max-new")  # CLI11 said 105
    bad([CONSOLIDATED, "--prompt", "a", "--logits"], "--logits needs --json")
    bad([CONSOLIDATED, "--prompt-ids", "4294967297"], "4294967297")  # not wrapped around to token 1
    bad([CONSOLIDATED, "--prompt", "a", "--bogus"], "--bogus")
    # A damaged shard: the message names the file and the tensor; nothing is printed to stdout.
    broken = WORK / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(checkpoint_dir(), broken)
    shard = sorted(broken.glob("shard_*.h5"))[-1]
    data = bytearray(shard.read_bytes())
    # Flip bytes in the middle of the file (inside tensor data, past the HDF5 metadata).
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    p = generate(broken, "--prompt", "x", expect=2)
    assert shard.name in p.stderr and "checksum" in p.stderr.lower(), p.stderr
    assert p.stdout == "", p.stdout
    # Extending the context past seq_len is allowed when asked for.
    generate(CONSOLIDATED, "--prompt", "x" * 100, "--max-new", "100", "--context", "256", "--quiet")


def test_default_max_new_fits_context():
    # Without --max-new: 200 tokens, or what the context leaves after the prompt (tiny: 128 positions).
    a = gen_json(CONSOLIDATED, "--prompt", "Q: ", "--temperature", "0")
    assert a["new_tokens"] == 128 - 3 and len(a["ids"]) == 125, a["new_tokens"]
    a = gen_json(CONSOLIDATED, "--prompt", "Q: ", "--temperature", "0", "--context", "512")
    assert a["new_tokens"] == 200, a["new_tokens"]
    # --logits: the prompt's logits, the last of which picks the first greedy token.
    b = gen_json(CONSOLIDATED, "--prompt", "Q: ", "--temperature", "0", "--max-new", "1", "--logits")
    logits = b["prompt_logits"]
    assert len(logits) == 3 and all(len(r) == 256 for r in logits)
    assert b["ids"][0] == max(range(256), key=lambda i: logits[-1][i]) == a["ids"][0]


if __name__ == "__main__":
    if CASE == "setup":
        setup()
    else:
        globals()[CASE]()
    print(f"{CASE}: ok")
