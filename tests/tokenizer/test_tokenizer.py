#!/usr/bin/env python3
"""Text in, text out: moe-data trains a SentencePiece tokenizer on the
fortunes corpus and writes llm.c shards, moe-train trains tiny on them with
data.tokenizer, and moe-generate --prompt decodes with the tokenizer the
checkpoint carries. The reference decoder here is built from SentencePiece's
own tools (spm_export_vocab, spm_encode), not from Switchyard's code.

usage: test_tokenizer.py BIN_DIR WORK_DIR CASE   (CASE "setup" prepares the shared run)
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ENV = mpi_env(OMP_NUM_THREADS="1")
CORPUS = sorted(glob.glob("/usr/share/games/fortunes/*.u8"))  # fortunes-min + fortunes (dev.sh installs them)
SMALL = "/usr/share/games/fortunes/goedel.u8"  # 7 KiB: quick tokenizers
DATA = WORK / "data"
MODEL = DATA / "tokenizer.model"
RUN = WORK / "run"
CONSOLIDATED = WORK / "consolidated.h5"
VOCAB = 512
STEPS = 10
SMALL_MODEL = dict(seq_len=64, d_model=64, n_layers=2)


def run(cmd, expect=0, timeout=300, text=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=text, env=ENV, timeout=timeout,
                       **({"errors": "replace"} if text else {}))
    out, err = (p.stdout, p.stderr) if text else (p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
    assert p.returncode == expect, f"{cmd}: exit {p.returncode}, expected {expect}:\n{out[-2000:]}\n{err[-2000:]}"
    return p


def train_args(*extra):
    sets = [f"run.dir={RUN}", f"model.vocab_size={VOCAB}", "data.format=bin", f'data.train=["{DATA}/train_*.bin"]',
            f"data.tokenizer={MODEL}", f"train.steps={STEPS}", "train.val_every=0", "train.threads=1",
            f"checkpoint.interval={STEPS}"] + [f"model.{k}={v}" for k, v in SMALL_MODEL.items()] + list(extra)
    return [BIN / "moe-train", "configs/tiny.toml"] + [a for s in sets for a in ("--set", s)]


def checkpoint_dir():
    d = RUN / "checkpoints"
    return d / (d / "latest").read_text().strip()


def reference_vocab(model):
    """id -> bytes, from spm_export_vocab (SentencePiece's own listing, in id order)."""
    out = subprocess.run(["spm_export_vocab", f"--model={model}", "--output=/dev/stdout"], capture_output=True,
                         check=True).stdout.decode("utf-8")
    table = []
    for line in out.splitlines():
        piece = line.split("\t")[0]
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            table.append(bytes([int(piece[3:5], 16)]))
        elif piece in ("<unk>", "<s>", "</s>"):
            table.append(b"")
        else:
            table.append(piece.replace("\u2581", " ").encode("utf-8"))
    return table


def shard_tokens(path):
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == 20240520 and header[1] == 1, (path, header[:3])
    tokens = np.frombuffer(raw[1024:], dtype="<u2")
    assert len(tokens) == header[2], (path, len(tokens), header[2])
    return tokens


def setup():
    assert CORPUS, "the fortunes corpus is missing: apt-get install fortunes-min fortunes (dev.sh deps)"
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    p = run([BIN / "moe-data", "prepare", "--input", "/usr/share/games/fortunes/*.u8", "--model-type", "bpe",
             "--vocab", VOCAB, "--out", DATA, "--val-fraction", "0", "--json"])
    (WORK / "summary.json").write_text(p.stdout)
    (WORK / "train.log").write_text(run(train_args()).stdout)
    run([BIN / "moe-ckpt", "consolidate", checkpoint_dir(), CONSOLIDATED])


def summary():
    return json.loads((WORK / "summary.json").read_text())


def test_round_trip_on_the_corpus():
    # decode(encode(x)) == x, byte for byte, over every fortunes file (the shards hold them in sorted order).
    s = summary()
    decoded = run([BIN / "moe-data", "decode", "--tokenizer", MODEL, "--input", *s["train_shards"]], text=False).stdout
    original = b"".join(Path(f).read_bytes() for f in CORPUS)
    assert s["bytes"] == len(original), (s["bytes"], len(original))
    assert decoded == original, f"round trip differs at byte {next(i for i, (a, b) in enumerate(zip(decoded, original)) if a != b) if decoded[:len(original)] != original[:len(decoded)] else min(len(decoded), len(original))}"
    # The same through SentencePiece's own piece table (an independent decoder).
    table = reference_vocab(MODEL)
    assert len(table) == VOCAB == s["pieces"]
    tokens = np.concatenate([shard_tokens(f) for f in s["train_shards"]])
    assert b"".join(table[t] for t in tokens.tolist()) == original
    # A 512-piece BPE compresses: measured 0.578 tokens per byte; bytes alone would be 1.0.
    assert s["tokens_per_byte"] < 0.7, s


def test_shard_counts_match_the_summary():
    s = summary()
    counts = [len(shard_tokens(f)) for f in s["train_shards"]]
    assert counts == s["train_shard_tokens"] and sum(counts) == s["train_tokens"] == s["tokens"], (counts, s)
    assert s["val_shards"] == [] and s["val_tokens"] == 0
    for f in s["train_shards"]:
        assert int(shard_tokens(f).max()) < VOCAB
        assert os.path.getsize(f) == 1024 + 2 * len(shard_tokens(f))
    # The trainer reads the same tokens: its banner's train and val (the tail of data.val_fraction) add up.
    m = re.search(r"data\s*: train (\d+) tokens in \d+ files?, val (\d+) tokens", (WORK / "train.log").read_text())
    assert m and int(m.group(1)) + int(m.group(2)) == s["tokens"], (m and m.groups(), s["tokens"])


def test_val_split_and_small_shards():
    out = WORK / "split"
    shutil.rmtree(out, ignore_errors=True)
    p = run([BIN / "moe-data", "encode", "--tokenizer", MODEL, "--input", SMALL, "--out", out, "--val-fraction",
             "0.25", "--shard-tokens", "1000", "--json"])
    s = json.loads(p.stdout)
    assert len(s["train_shards"]) > 1 and len(s["val_shards"]) >= 1, s
    assert all(c == 1000 for c in s["train_shard_tokens"][:-1]) and 0 < s["train_shard_tokens"][-1] <= 1000, s
    assert [Path(f).name for f in s["train_shards"]] == [f"train_{i:06d}.bin" for i in range(len(s["train_shards"]))]
    dec = lambda files: run([BIN / "moe-data", "decode", "--tokenizer", MODEL, "--input", *files], text=False).stdout
    head, tail = dec(s["train_shards"]), dec(s["val_shards"])
    original = Path(SMALL).read_bytes()
    assert head + tail == original
    # The validation tail starts at a line start, at or just after 75% of the bytes.
    assert head.endswith(b"\n") and 0.75 * len(original) <= len(head) < 0.75 * len(original) + 200, len(head)
    assert sum(len(shard_tokens(f)) for f in s["val_shards"]) == s["val_tokens"]


def test_generate_decodes_the_prompt_with_the_checkpoint_tokenizer():
    prompt = "The meaning of"
    table = reference_vocab(MODEL)
    ref_prompt_ids = subprocess.run(["spm_encode", f"--model={MODEL}", "--output_format=id"], input=prompt.encode(),
                                    capture_output=True, check=True).stdout.split()
    for ckpt in (checkpoint_dir(), CONSOLIDATED):
        args = [BIN / "moe-generate", ckpt, "--prompt", prompt, "--max-new", "24", "--temperature", "1", "--top-k", "20", "--seed", "3"]
        stream = run(args + ["--quiet"], text=False).stdout
        j = json.loads(run(args + ["--json", "--quiet"]).stdout)
        assert j["prompt_tokens"] == len(ref_prompt_ids) < len(prompt), (j["prompt_tokens"], ref_prompt_ids)
        assert len(j["ids"]) == 24 and all(0 <= i < VOCAB for i in j["ids"])
        generated = b"".join(table[i] for i in j["ids"])
        # The text streamed is the prompt, then the reference decoding of the ids, then a newline.
        assert stream == prompt.encode() + generated + b"\n", (stream, generated)
        assert j["text"] == generated.decode("utf-8", errors="replace")
        stream.decode("utf-8")  # valid text: the 20 likeliest tokens are pieces and ASCII bytes (seen: 0xb7 without --top-k)


def test_checkpoint_carries_the_tokenizer():
    model = MODEL.read_bytes()
    for ckpt in (checkpoint_dir(), CONSOLIDATED):
        info = json.loads(run([BIN / "moe-ckpt", "--json", "info", ckpt]).stdout)
        assert info["tokenizer"] == {"kind": "sentencepiece", "pieces": VOCAB, "byte_pieces": 256,
                                     "bytes": len(model)}, info.get("tokenizer")
        manifest = ckpt / "manifest.h5" if ckpt.is_dir() else ckpt
        with h5py.File(manifest, "r") as f:
            assert bytes(f["tokenizer_model"][()]) == model
        assert run([BIN / "moe-ckpt", "verify", ckpt]).returncode == 0
    text = run([BIN / "moe-ckpt", "info", checkpoint_dir()]).stdout
    assert f"tokenizer   SentencePiece, {VOCAB} pieces (256 byte tokens), {len(model)} bytes" in text, text


def test_training_is_deterministic():
    # The same files and flags give the same model, byte for byte, for both model types.
    for kind, vocab in (("bpe", 400), ("unigram", 400)):
        models = []
        for i in range(2):
            prefix = WORK / f"det_{kind}_{i}"
            Path(f"{prefix}.model").unlink(missing_ok=True)
            run([BIN / "moe-data", "train-tokenizer", "--input", SMALL, "--model-type", kind, "--vocab", vocab,
                 "--out", prefix])
            models.append(Path(f"{prefix}.model").read_bytes())
        assert models[0] == models[1], kind
        assert len(reference_vocab(WORK / f"det_{kind}_0.model")) == vocab


def test_bad_data_inputs():
    # A vocabulary past uint16.
    p = run([BIN / "moe-data", "train-tokenizer", "--input", SMALL, "--vocab", "70000", "--out", WORK / "big"], expect=2)
    assert "--vocab 70000" in p.stderr and "65535" in p.stderr, p.stderr
    assert not Path(f"{WORK / 'big'}.model").exists()
    # A missing input file, named.
    p = run([BIN / "moe-data", "encode", "--tokenizer", MODEL, "--input", WORK / "nope.txt", "--out", WORK / "x"],
            expect=2)
    assert str(WORK / "nope.txt") in p.stderr, p.stderr
    # Existing shards are refused, named, and left as they were.
    before = (DATA / "train_000000.bin").read_bytes()
    p = run([BIN / "moe-data", "encode", "--tokenizer", MODEL, "--input", SMALL, "--out", DATA], expect=2)
    assert str(DATA / "train_000000.bin") in p.stderr, p.stderr
    assert (DATA / "train_000000.bin").read_bytes() == before
    # An existing tokenizer is not overwritten.
    p = run([BIN / "moe-data", "train-tokenizer", "--input", SMALL, "--vocab", "400", "--out", DATA / "tokenizer"],
            expect=2)
    assert str(MODEL) in p.stderr and "already exists" in p.stderr, p.stderr
    # An output directory that cannot be made (its parent is a file).
    p = run([BIN / "moe-data", "encode", "--tokenizer", MODEL, "--input", SMALL, "--out", MODEL / "sub"], expect=2)
    assert str(MODEL / "sub") in p.stderr, p.stderr
    # Not a SentencePiece model.
    p = run([BIN / "moe-data", "encode", "--tokenizer", SMALL, "--input", SMALL, "--out", WORK / "y"], expect=2)
    assert "not a SentencePiece model" in p.stderr and not (WORK / "y").exists(), p.stderr
    # A vocabulary SentencePiece cannot fill from the text: its reason, exit 2.
    p = run([BIN / "moe-data", "train-tokenizer", "--input", "/usr/share/games/fortunes/pratchett.u8", "--vocab",
             "5000", "--out", WORK / "tiny"], expect=2)
    assert "SentencePiece could not train" in p.stderr, p.stderr
    # An empty corpus, said in those words.
    empty = WORK / "empty.txt"
    empty.write_bytes(b"")
    p = run([BIN / "moe-data", "train-tokenizer", "--input", empty, "--vocab", "400", "--out", WORK / "e"], expect=2)
    assert "the 1 file(s) are empty" in p.stderr, p.stderr
    # A failed command leaves nothing behind, not even the directory it made.
    assert not (WORK / "y").exists() and not Path(f"{WORK / 'tiny'}.model").exists()


def test_bad_training_inputs():
    # Vocabulary too small for the tokenizer: exit 2 naming both.
    p = run(train_args("model.vocab_size=400", f"run.dir={WORK / 'bad_run'}"), expect=2)
    assert "model.vocab_size = 400" in p.stderr and f"512 pieces of data.tokenizer '{MODEL}'" in p.stderr, p.stderr
    assert not (WORK / "bad_run" / "checkpoints").exists()
    # data.tokenizer with byte-level text data.
    p = run(train_args("data.format=text", f'data.train=["{SMALL}"]', f"run.dir={WORK / 'bad_run'}"), expect=2)
    assert "data.tokenizer" in p.stderr and 'data.format = "bin"' in p.stderr, p.stderr
    # Resuming under another tokenizer mixes vocabularies: refused, naming the checkpoint.
    other = WORK / "other"
    Path(f"{other}.model").unlink(missing_ok=True)
    run([BIN / "moe-data", "train-tokenizer", "--input", SMALL, "--vocab", "400", "--out", other])
    p = run(train_args(f"data.tokenizer={other}.model", f"train.steps={STEPS + 2}"), expect=2)
    assert "tokenizer" in p.stderr and str(checkpoint_dir()) in p.stderr, p.stderr


def test_lifecycle_tools_keep_the_tokenizer():
    # The ids mean what the tokenizer says, so every tool that writes a model from a tokenized one carries it,
    # and a weights-only start under another tokenizer is refused.
    model = MODEL.read_bytes()
    def tokenizer_of(path):
        with h5py.File(path, "r") as f:
            return bytes(f["tokenizer_model"][()]) if "tokenizer_model" in f else b""
    grown = WORK / "grown.h5"
    grown.unlink(missing_ok=True)
    run([BIN / "moe-ckpt", "grow", checkpoint_dir(), grown, "--layer", "all", "--add", "4"])
    assert tokenizer_of(grown) == model
    dense_run, upcycled = WORK / "dense_run", WORK / "upcycled.h5"
    shutil.rmtree(dense_run, ignore_errors=True)
    upcycled.unlink(missing_ok=True)
    run(train_args(f"run.dir={dense_run}", "model.dense_layers=2", "train.steps=2", "checkpoint.interval=2"))
    run([BIN / "moe-ckpt", "upcycle", dense_run, upcycled, "--experts", "4", "--top-k", "2"])
    assert tokenizer_of(upcycled) == model
    # init_from: the same tokenizer trains; another is refused before anything is written.
    ft = WORK / "ft_run"
    shutil.rmtree(ft, ignore_errors=True)
    run(train_args(f"run.dir={ft}", f"checkpoint.init_from={checkpoint_dir()}", "train.steps=1",
                   "checkpoint.interval=1"))
    ck = ft / "checkpoints"
    assert tokenizer_of(ck / (ck / "latest").read_text().strip() / "manifest.h5") == model
    other = WORK / "other_ft"
    Path(f"{other}.model").unlink(missing_ok=True)
    run([BIN / "moe-data", "train-tokenizer", "--input", SMALL, "--vocab", "400", "--out", other])
    shutil.rmtree(WORK / "ft_bad", ignore_errors=True)
    p = run(train_args(f"run.dir={WORK / 'ft_bad'}", f"data.tokenizer={other}.model",
                       f"checkpoint.init_from={checkpoint_dir()}", "train.steps=1"), expect=2)
    assert "checkpoint.init_from" in p.stderr and "tokenizer" in p.stderr and f"{other}.model" in p.stderr, p.stderr
    assert not list((WORK / "ft_bad").glob("checkpoints/step_*")), "a refused init_from wrote a checkpoint"


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent.parent)  # configs/tiny.toml
    globals()[CASE]()
