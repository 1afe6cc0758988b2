#!/usr/bin/env python3
"""moe-ckpt import (Hugging Face safetensors in) and moe-ckpt upcycle (dense
to MoE): round trips, generation, the upcycling equality, bad input.

usage: test_import_upcycle.py BIN_DIR CASE
"""
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_checkpoint as tc  # noqa: E402
from test_checkpoint import DEEPSEEK_ONLY, MIXTRAL_OK, ckpt, latest, moe_train, read_safetensors  # noqa: E402


def params(path):
    """name -> float32 array of a checkpoint's weights (directory or consolidated file), and the manifest's bias."""
    path = Path(path)
    out = {}
    man = path / "manifest.h5" if path.is_dir() else path
    with h5py.File(man, "r") as m:
        bias = m["expert_bias"][...] if "expert_bias" in m else None
        files = {n: tc.text(m["tensors/" + n].attrs["file"]) for n in m["tensors"]}
    for name, file in files.items():
        with h5py.File(path if file == "." else path / file, "r") as f:
            out[name] = f["params/" + name][...]
    return out, bias


def assert_bitwise_equal(a, b):
    (pa, ba), (pb, bb) = params(a), params(b)
    assert sorted(pa) == sorted(pb), set(pa) ^ set(pb)
    for n in pa:
        assert pa[n].shape == pb[n].shape and pa[n].tobytes() == pb[n].tobytes(), f"tensor {n} differs"
    assert (ba is None) == (bb is None) and (ba is None or ba.tobytes() == bb.tobytes()), "expert_bias differs"
    return len(pa)


def generate(ckpt_path, *args):
    p = subprocess.run([str(tc.BIN / "moe-generate"), str(ckpt_path), "--json", "--quiet", *map(str, args)],
                       capture_output=True, text=True, timeout=120, env=dict(tc.ENV, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def write_safetensors(path, tensors, metadata=None, header_edit=None):
    """tensors: name -> numpy array (its dtype: float32, float16, or uint16 holding BF16 bits with the name
    suffixed by '@BF16'). header_edit(header) may corrupt the header before it is written."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        dtype = "F32" if a.dtype == np.float32 else "F16" if a.dtype == np.float16 else "BF16"
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name.split("@")[0]] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if header_edit:
        header_edit(header)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def copy_hf(src, dst, config_edit=None, tensors=None):
    """A copy of an export, with config.json edited and / or model.safetensors rewritten from `tensors`."""
    shutil.copytree(src, dst)
    if config_edit:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        write_safetensors(dst / "model.safetensors", tensors)
    return dst


# ---------------------------------------------------------------- import

def roundtrip(tmp, name, sets, fmt):
    run = Path(tmp) / name
    moe_train(run, ["train.steps=4", "checkpoint.interval=4"] + sets)
    hf, imp = Path(tmp) / f"{name}_hf", Path(tmp) / f"{name}_imp.h5"
    ckpt("export", run, hf, "--format", fmt)
    info = json.loads(ckpt("import", hf, imp, "--json"))
    assert info["format"] == fmt and info["switchyard_config"] and info["files"] == 1, info
    n = assert_bitwise_equal(latest(run), imp)
    assert "OK" in ckpt("verify", imp) and "identical" in ckpt("diff", latest(run), imp)
    with h5py.File(imp, "r") as f:
        assert not f["adam_m/embed.weight"][...].any() and not f["adam_v/embed.weight"][...].any()
    print(f"{fmt}: export -> import bit-exact: {n} tensors and the balancing bias")
    # Generation from the import equals generation from the original: greedy, and sampled with a seed.
    for args in (["--temperature", "0"], ["--temperature", "0.8", "--seed", "5"]):
        a = generate(run, "--prompt", "The quick", "--max-new", "20", *args)
        b = generate(imp, "--prompt", "The quick", "--max-new", "20", *args)
        assert a["ids"] == b["ids"], (args, a["ids"], b["ids"])
    return run, hf, imp


def test_import_roundtrip(tmp):
    tmp = Path(tmp)
    run, hf, imp = roundtrip(tmp, "mx", MIXTRAL_OK, "mixtral")
    # moe-train continues from the import (weights only, step 0) on 2 ranks (reshard on load), moe-ckpt ls reads it.
    out = moe_train(tmp / "cont", ["train.steps=2", f"checkpoint.resume={imp}"] + MIXTRAL_OK, ranks=2)
    assert "(step 0)" in out, out[-1500:]
    assert "layers.0.moe.router" in ckpt("ls", imp)
    # A config as Hugging Face's Mixtral writes it (no switchyard metadata; keys that do not change the math,
    # and sliding_window null) reads as the same model.
    hf_keys = {"sliding_window": None, "output_router_logits": False, "router_jitter_noise": 0.0,
               "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "bos_token_id": 1,
               "eos_token_id": 2, "transformers_version": "4.46.0"}
    stock = copy_hf(hf, tmp / "stock", lambda c: (c.pop("switchyard"), c.update(hf_keys)))
    ckpt("import", stock, tmp / "stock.h5")
    assert_bitwise_equal(imp, tmp / "stock.h5")
    a = generate(run, "--prompt", "The quick", "--max-new", "20", "--temperature", "0")
    assert generate(tmp / "stock.h5", "--prompt", "The quick", "--max-new", "20", "--temperature", "0")["ids"] == a["ids"]
    run, hf, imp = roundtrip(tmp, "ds", DEEPSEEK_ONLY, "deepseek-v3")  # SMALL: a dense layer, a shared expert
    # Without the switchyard metadata the HF keys alone give the same model (seq_len from max_position_embeddings).
    bare = copy_hf(hf, tmp / "bare", lambda c: c.pop("switchyard"))
    info = json.loads(ckpt("import", bare, tmp / "bare.h5", "--json"))
    assert not info["switchyard_config"], info
    assert_bitwise_equal(imp, tmp / "bare.h5")
    a = generate(run, "--prompt", "The quick", "--max-new", "20", "--temperature", "0")
    assert generate(tmp / "bare.h5", "--prompt", "The quick", "--max-new", "20", "--temperature", "0")["ids"] == a["ids"]
    # Group-limited routing (moe.expert_groups = 4, moe.max_nodes_per_token = 1) is n_group / topk_group in
    # config.json, and reads back from those keys alone (no switchyard metadata): the same routing rule.
    grp, grp_hf, grp_imp = roundtrip(tmp, "dsg", DEEPSEEK_ONLY + ["moe.expert_groups=4", "moe.max_nodes_per_token=1"],
                                     "deepseek-v3")
    c = json.loads((grp_hf / "config.json").read_text())
    assert c["n_group"] == 4 and c["topk_group"] == 1, c
    gbare = copy_hf(grp_hf, tmp / "gbare", lambda c: c.pop("switchyard"))
    ckpt("import", gbare, tmp / "gbare.h5")
    assert_bitwise_equal(grp_imp, tmp / "gbare.h5")
    shown = ckpt("info", tmp / "gbare.h5")
    assert "expert_groups = 4" in shown and "max_nodes_per_token = 1" in shown, shown[-2000:]
    a = generate(grp, "--prompt", "The quick", "--max-new", "20", "--temperature", "0")
    assert generate(tmp / "gbare.h5", "--prompt", "The quick", "--max-new", "20", "--temperature", "0")["ids"] == a["ids"]
    # Sharded (an index and two files) with BF16 and F16 tensors: read and widened exactly.
    t = read_safetensors(hf / "model.safetensors")
    names = sorted(t)
    bf_name, f16_name = "model.layers.1.mlp.experts.0.gate_proj.weight", "model.layers.2.self_attn.o_proj.weight"
    bf_bits = (t[bf_name].view(np.uint32) >> 16).astype(np.uint16)  # truncated to BF16
    f16 = t[f16_name].astype(np.float16)
    part = [{}, {}]
    for i, n in enumerate(names):
        part[i % 2][n + ("@BF16" if n == bf_name else "")] = bf_bits if n == bf_name else f16 if n == f16_name else t[n]
    sh = tmp / "sharded"
    sh.mkdir()
    shutil.copy(hf / "config.json", sh / "config.json")
    weight_map = {}
    for i, p in enumerate(part):
        fn = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(sh / fn, p)
        weight_map.update({n.split("@")[0]: fn for n in p})
    (sh / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    info = json.loads(ckpt("import", sh, tmp / "sh.h5", "--json"))
    assert info["files"] == 2, info
    got, _ = params(tmp / "sh.h5")
    want_bf = (bf_bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(got["layers.1.moe.experts.0.w13"][:24], want_bf)
    assert np.array_equal(got["layers.2.attn.wo"], f16.astype(np.float32))
    orig, _ = params(imp)
    assert np.array_equal(got["layers.1.moe.experts.0.w13"][24:], orig["layers.1.moe.experts.0.w13"][24:])
    assert not np.array_equal(got["layers.2.attn.wo"], orig["layers.2.attn.wo"])  # F16 did round: the test can tell


def test_import_bad_input(tmp):
    tmp = Path(tmp)
    run = tmp / "run"
    moe_train(run, ["train.steps=2", "checkpoint.interval=2"] + DEEPSEEK_ONLY)
    hf = tmp / "hf"
    ckpt("export", run, hf, "--format", "deepseek-v3")
    t = read_safetensors(hf / "model.safetensors")
    raw = (hf / "model.safetensors").read_bytes()
    hlen = struct.unpack("<Q", raw[:8])[0]
    wq = "model.layers.0.self_attn.q_proj.weight"

    def without(name):
        return {n: a for n, a in t.items() if n != name}

    def overlap(h):
        h[wq]["data_offsets"] = h["model.embed_tokens.weight"]["data_offsets"][:]
        h[wq]["shape"] = list(t["model.embed_tokens.weight"].shape)

    def corrupt(name, data):
        d = copy_hf(hf, tmp / name)
        (d / "model.safetensors").write_bytes(data)
        return d

    cases = [
        (corrupt("badjson", raw[:8] + b"{" * hlen + raw[8 + hlen:]), "not valid JSON"),
        (corrupt("longhdr", struct.pack("<Q", len(raw)) + raw[8:]), "truncated"),
        (corrupt("short", raw[:5]), "shorter than"),
        (corrupt("trunc", raw[:-100]), "truncated"),
        (corrupt("notobj", struct.pack("<Q", 8) + b"[1,2,3] "), "not an object"),
        (copy_hf(hf, tmp / "ovl", tensors=t), None),  # placeholder replaced below
        (copy_hf(hf, tmp / "missing", tensors=without(wq)), f"missing tensor '{wq}'"),
        (copy_hf(hf, tmp / "extra", tensors=dict(t, **{"model.layers.0.extra.weight": t[wq]})),
         "model.layers.0.extra.weight"),
        (copy_hf(hf, tmp / "bias", tensors=dict(t, **{"model.layers.0.self_attn.q_proj.bias": t[wq][0]})),
         "q_proj.bias' is a bias"),
        (copy_hf(hf, tmp / "shape", tensors=dict(t, **{wq: t[wq][:8]})), f"'{wq}' has shape (8, 32)"),
        (copy_hf(hf, tmp / "i64", tensors=t), "dtype I64 is not supported"),
        (copy_hf(hf, tmp / "sw", lambda c: c.update(sliding_window=4096)), '"sliding_window" = 4096'),
        (copy_hf(hf, tmp / "act", lambda c: c.update(hidden_act="gelu")), '"hidden_act" = "gelu"'),
        (copy_hf(hf, tmp / "unk", lambda c: c.update(logit_softcap=30.0)), '"logit_softcap"'),
        (copy_hf(hf, tmp / "rsf", lambda c: c.update(routed_scaling_factor=2.5)), '"routed_scaling_factor" = 2.5'),
        (copy_hf(hf, tmp / "mla", lambda c: c.update(architectures=["DeepseekV3ForCausalLM"])), "MLA"),
        (copy_hf(hf, tmp / "nolayers", lambda c: c.pop("num_hidden_layers")), '"num_hidden_layers"'),
        (copy_hf(hf, tmp / "noconf", lambda c: None), "config.json"),
        (tmp / "nodir", "not a directory"),
    ]
    (tmp / "noconf" / "config.json").unlink()
    write_safetensors(tmp / "ovl" / "model.safetensors", t, header_edit=overlap)
    cases[5] = (tmp / "ovl", "overlap")
    # The I64 tensor: write_safetensors names dtype by numpy type; patch it to I64.
    i64 = {n: a for n, a in t.items()}
    i64[wq] = t[wq].astype(np.float32)
    write_safetensors(tmp / "i64" / "model.safetensors", i64, header_edit=lambda h: h[wq].update(
        dtype="I64", data_offsets=[h[wq]["data_offsets"][0], h[wq]["data_offsets"][0] + 8 * t[wq].size]))
    for i, (src, needle) in enumerate(cases):
        out = tmp / f"out{i}.h5"
        p = subprocess.run([str(tc.BIN / "moe-ckpt"), "import", str(src), str(out)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, f"{src}: exit {p.returncode}, expected 2\n{p.stdout}{p.stderr}"
        assert needle in p.stderr and "terminate" not in p.stderr, (src, needle, p.stderr)
        assert not out.exists() and not Path(str(out) + ".tmp").exists(), "a refused import leaves nothing behind"
    # An existing output is refused and left as it was.
    (tmp / "exists.h5").write_text("keep")
    assert "already exists" in ckpt("import", hf, tmp / "exists.h5", expect=2)
    assert (tmp / "exists.h5").read_text() == "keep"


# ---------------------------------------------------------------- upcycle

DENSE = ["model.dense_layers=3", "moe.shared_experts=0", "moe.bias_update_rate=0"]
PROMPT = "The quick brown fox jumps over t"


def logits(path):
    return np.array(generate(path, "--prompt", PROMPT, "--max-new", "0", "--logits")["prompt_logits"])


def test_upcycle_exact(tmp):
    tmp = Path(tmp)
    run = tmp / "dense"
    out = moe_train(run, ["train.steps=6", "checkpoint.interval=6"] + DENSE)  # a fully dense model trains
    with h5py.File(latest(run) / "manifest.h5", "r") as m:
        assert "expert_bias" not in m and not any(".moe." in n for n in m["tensors"])
    ref = logits(run)
    # Tolerance from round-off: the upcycled model differs from the dense one
    # only in how FP32 rounds. The renormalised gates sum to 1 within about K
    # ulps (u = 6e-8); the combine adds K products; G > 1 splits the FFN's
    # hidden-unit sum into G partial sums; the expert GEMMs run on other row
    # counts (other blocking, other summation order). Each is a relative
    # change of a few u in an FFN output, and the 3 blocks and the head pass
    # it on without amplification to speak of (max |logit| ~1.2, RMS-normed
    # inputs), so the logits move by a few u relative to their largest value:
    # measured 1e-7..4e-7 (2-7 u) over the six cases below. 2e-6 (~33 u)
    # allows 5x that; a wrong upcycle (a missed segment, a missing factor G:
    # K not a multiple of G gives 6e-3; noise 0.1 gives ~7e-4) is over 100x
    # beyond, checked below, so the check can fail.
    tol = 2e-6
    rel = lambda a: float(np.abs(a - ref).max() / np.abs(ref).max())
    results = {}
    for name, args in {"copies E8 K2": ["--experts", "8", "--top-k", "2"],
                       "copies E4 K1": ["--experts", "4", "--top-k", "1"],
                       "G2 E8 K2": ["--experts", "8", "--top-k", "2", "--granularity", "2"],
                       "G4 E8 K4": ["--experts", "8", "--top-k", "4", "--granularity", "4"],
                       "layers 1-2 E4 K2": ["--experts", "4", "--top-k", "2", "--layers", "1-2"],
                       "other seed": ["--experts", "8", "--top-k", "2", "--seed", "99"]}.items():
        up = tmp / (name.replace(" ", "_") + ".h5")
        info = json.loads(ckpt("upcycle", run, up, *args, "--json"))
        assert info["exact"], info
        results[name] = rel(logits(up))
    top = float(np.abs(ref).max())
    print("upcycled vs dense logits, max |diff| / max |logit| (max |diff|): "
          + ", ".join(f"{k} {v:.2e} ({v * top:.2e})" for k, v in results.items()) + f"; max |logit| {top:.3g}")
    assert all(v <= tol for v in results.values()), results
    # The router differs with the seed, so the picks differ, yet the logits do not: "whatever the router picks".
    a, b = params(tmp / "copies_E8_K2.h5")[0], params(tmp / "other_seed.h5")[0]
    assert not np.array_equal(a["layers.0.moe.router"], b["layers.0.moe.router"])
    # The check can fail: noise, or K not a multiple of G, moves the logits far beyond the tolerance.
    noisy, partial = tmp / "noisy.h5", tmp / "partial.h5"
    assert not json.loads(ckpt("upcycle", run, noisy, "--experts", "8", "--top-k", "2", "--noise", "0.1",
                               "--json"))["exact"]
    assert not json.loads(ckpt("upcycle", run, partial, "--experts", "8", "--top-k", "1", "--granularity", "2",
                               "--json"))["exact"]
    bad = {"noise 0.1": rel(logits(noisy)), "G2 K1": rel(logits(partial))}
    print("not exact by design: " + ", ".join(f"{k} {v:.2e}" for k, v in bad.items()))
    assert all(v > 100 * tol for v in bad.values()), bad
    # Structure: experts are the dense FFN's segments, W2 scaled by G; the layer-0 FFN stays dense with --layers 1-2.
    d = params(latest(run))[0]
    g2 = params(tmp / "G2_E8_K2.h5")[0]
    w13, w2 = d["layers.1.mlp.w13"], d["layers.1.mlp.w2"]
    assert np.array_equal(g2["layers.1.moe.experts.3.w13"], np.concatenate([w13[32:64], w13[96:128]]))
    assert np.array_equal(g2["layers.1.moe.experts.3.w2"], 2 * w2[:, 32:64])
    assert np.array_equal(g2["layers.1.moe.router"][2], g2["layers.1.moe.router"][3])
    part = params(tmp / "layers_1-2_E4_K2.h5")[0]
    assert "layers.0.mlp.w13" in part and "layers.0.moe.router" not in part and "layers.1.moe.router" in part
    # The upcycled model trains (weights only, step 0) and its experts move apart.
    out = moe_train(tmp / "cont", ["train.steps=3", f"checkpoint.resume={tmp / 'G2_E8_K2.h5'}", "model.dense_layers=0",
                                   "moe.experts=8", "moe.top_k=2", "moe.expert_hidden=32", "moe.shared_experts=0",
                                   "moe.bias_update_rate=0"])
    assert "(step 0)" in out, out[-1500:]
    assert "OK" in ckpt("verify", tmp / "G2_E8_K2.h5")


def test_upcycle_bad_input(tmp):
    tmp = Path(tmp)
    dense, moe = tmp / "dense", tmp / "moe"
    moe_train(dense, ["train.steps=1", "checkpoint.interval=1"] + DENSE)
    moe_train(moe, ["train.steps=1", "checkpoint.interval=1"])
    (tmp / "exists.h5").write_text("keep")
    cases = [
        ([moe, tmp / "a.h5", "--experts", "4", "--top-k", "2"], "is not a dense model"),
        ([dense, tmp / "a.h5", "--experts", "6", "--top-k", "2", "--granularity", "4"], "not a multiple of"),
        ([dense, tmp / "a.h5", "--experts", "6", "--top-k", "2", "--granularity", "3"], "does not divide"),
        ([dense, tmp / "a.h5", "--experts", "4", "--top-k", "5"], "--top-k 5"),
        ([dense, tmp / "a.h5", "--experts", "4", "--top-k", "2", "--layers", "0-1"], "to the last"),
        ([dense, tmp / "a.h5", "--experts", "4", "--top-k", "2", "--layers", "1-7"], "outside"),
        ([dense, tmp / "a.h5", "--experts", "4", "--top-k", "2", "--noise", "-1"], "--noise"),
        ([dense, tmp / "a.h5", "--top-k", "2"], "--experts"),
        ([dense, tmp / "exists.h5", "--experts", "4", "--top-k", "2"], "already exists"),
    ]
    for args, needle in cases:
        p = subprocess.run([str(tc.BIN / "moe-ckpt"), "upcycle", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, f"{args}: exit {p.returncode}, expected 2\n{p.stdout}{p.stderr}"
        assert needle in p.stderr and "terminate" not in p.stderr, (args, needle, p.stderr)
    assert not (tmp / "a.h5").exists() and (tmp / "exists.h5").read_text() == "keep"


if __name__ == "__main__":
    tc.BIN = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        globals()[sys.argv[2]](tmp)
    print(f"{sys.argv[2]}: ok")
