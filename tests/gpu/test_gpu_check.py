#!/usr/bin/env python3
"""The GPU check's parts that a CPU machine can run (ctest label gpu_check).

  test_gpu_check.py device_check BUILD_DIR   device_check.sh without a GPU: builds
        bench/gpu, then fails clearly (exit 3, "no GPU"); its plumbing run
        (SY_DEVICE_CHECK_PLUMBING=1) goes through every step and reports each
        as failed, never as passed. Skips (77) where a GPU is present.
  test_gpu_check.py torch_gemm               bench/torch_gemm.py --device cpu --small:
        JSON lines that parse, checked BF16 results; no CUDA -> exit 3; a wrong
        product is caught and carries no TFLOP/s.
  test_gpu_check.py summarize                tests/gpu/summarize.py's ratios and verdicts.
  test_gpu_check.py train_check BIN_DIR      tests/gpu/train_check.py (Switchyard's training on the GPU)
        on the emulated device: losses equal the CPU's bit for bit, a checkpoint resumes across
        devices, the benchmark reports a rate in BF16 and FP8; without a GPU it fails.
  test_gpu_check.py torch_moe_step BIN_DIR   bench/torch_moe_step.py (the PyTorch side of
        the MoE training-step benchmark): its model has configs/moe_1b.toml's parameter
        count and FLOPs per token as moe-launch --dry-run reports them (so the MFU of
        both sides compare), its dropless MoE layer equals a per-token loop, the CPU
        smoke run trains, and without CUDA it exits 3.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SKIP = 77
PY = sys.executable


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def gpu_present():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    r = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


def device_check(build_dir):
    if gpu_present():
        print("SKIP: a GPU is here: run tests/gpu/device_check.sh itself")
        sys.exit(SKIP)
    script = os.path.join(ROOT, "tests", "gpu", "device_check.sh")
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ)
        env.pop("OUT", None)
        env.pop("SY_DEVICE_CHECK_PLUMBING", None)
        r = subprocess.run(["bash", script, "--out", out, "--build-dir", build_dir], capture_output=True, text=True,
                           env=env, timeout=400)
        if r.returncode != 3:
            fail(f"device_check.sh without a GPU exited {r.returncode}, not 3\n{r.stdout}\n{r.stderr}")
        first = r.stderr.splitlines()[0] if r.stderr else ""
        if not first.startswith("device_check: no GPU: "):
            fail(f"the first line does not say 'no GPU': {first!r}\n{r.stderr}")
        if "bench/gpu built" not in r.stderr:
            fail(f"the CUDA-only benchmark was not built before the failure:\n{r.stderr}")
        if not os.access(os.path.join(build_dir, "bin", "sy-bench-gemm-cuda"), os.X_OK):
            fail("no sy-bench-gemm-cuda in the build dir")
        with open(os.path.join(out, "summary.txt")) as f:
            if "Nothing ran on a GPU" not in f.read():
                fail("summary.txt does not say that nothing ran on a GPU")
        # The benchmark itself: a clear line and its own exit code.
        b = subprocess.run([os.path.join(build_dir, "bin", "sy-bench-gemm-cuda"), "--small"], capture_output=True, text=True)
        if b.returncode != 3 or not b.stderr.startswith("sy-bench-gemm-cuda: no GPU: ") or len(b.stderr.splitlines()) != 1:
            fail(f"sy-bench-gemm-cuda without a GPU: rc {b.returncode}, stderr {b.stderr!r}")
        bad = subprocess.run([os.path.join(build_dir, "bin", "sy-bench-gemm-cuda"), "--shapes", "100x3"], capture_output=True, text=True)
        if bad.returncode != 2 or "not MxNxK" not in bad.stderr:
            fail(f"a bad --shapes: rc {bad.returncode}, {bad.stderr!r}")

    with tempfile.TemporaryDirectory() as out:  # the plumbing: every step runs and every one fails
        env = dict(os.environ, SY_DEVICE_CHECK_PLUMBING="1")
        env.pop("OUT", None)
        r = subprocess.run(["bash", script, "--out", out, "--build-dir", build_dir, "--small", "--budget", "200"],
                           capture_output=True, text=True, env=env, timeout=400)
        summary = open(os.path.join(out, "summary.txt")).read()
        if r.returncode != 1:
            fail(f"the plumbing run exited {r.returncode}, not 1\n{summary}\n{r.stderr}")
        for want in ("gpu test program", "GEMM TFLOP/s", "FP8 / BF16", "device_check: FAILED", "sy-bench-gemm-cuda: rc 3",
                     "bench/torch_gemm.py: rc 3"):
            if want not in summary:
                fail(f"summary.txt lacks {want!r}:\n{summary}")
        if "PASSED" in summary:
            fail(f"a run without a GPU reads PASSED:\n{summary}")
        if os.path.isdir(os.path.join(ROOT, "gpu-bundle")) and "ALL SKIPPED" not in summary:
            fail(f"bundled test programs that skipped are not reported as such:\n{summary}")
        files = os.listdir(out)
        if len(files) > 8:
            fail(f"{len(files)} files in the output dir; the device tool brings back 8: {files}")
    print("device_check.sh: no-GPU failure and plumbing as expected")


def torch_gemm():
    script = os.path.join(ROOT, "bench", "torch_gemm.py")
    with tempfile.TemporaryDirectory() as d:
        js = os.path.join(d, "t.jsonl")
        r = subprocess.run([PY, script, "--device", "cpu", "--small", "--json", js], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            fail(f"torch_gemm.py --device cpu --small: rc {r.returncode}\n{r.stdout}\n{r.stderr}")
        rows = [json.loads(line) for line in open(js) if line.strip()]
        ok = [x for x in rows if x["status"] == "ok"]
        ops = sorted(x["op"] for x in ok)
        if ops != ["bf16", "bf16", "loop_bf16", "single_bf16"]:
            fail(f"checked cases: {ops}")
        for x in ok:
            if not (x["checked"] > 0 and x["wrong"] == 0 and x["tflops"] > 0 and x["median_ms"] > 0 and x["worst_over_tol"] <= 1):
                fail(f"a case without a checked result: {x}")
        if {x["op"] for x in rows if x["status"] == "unsupported"} - {"fp8_tensor", "fp8_block", "grouped_bf16"}:
            fail(f"unexpected unsupported cases: {rows}")
        if "TFLOP/s" not in r.stdout:
            fail("no table")
    import torch  # noqa: E402
    if not torch.cuda.is_available():
        r = subprocess.run([PY, script, "--small"], capture_output=True, text=True, timeout=120)
        if r.returncode != 3 or "no GPU" not in r.stderr:
            fail(f"without CUDA: rc {r.returncode}, {r.stderr!r}")
    r = subprocess.run([PY, script, "--device", "cpu", "--shapes", "100x7x3"], capture_output=True, text=True, timeout=120)
    if r.returncode != 2:
        fail(f"a bad --shapes: rc {r.returncode}")

    # A wrong product is caught: no TFLOP/s, status wrong.
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import torch_gemm as tg  # noqa: E402
    import argparse
    args = argparse.Namespace(device="cpu", json=os.devnull, warmup=1, iters=2, out="f32")
    b = tg.Bench(torch, args)
    a, w = b.bf16(64, 256), b.bf16(32, 256)
    parts = [(0, 64, lambda ri: a[ri].double(), lambda ci: w[ci].double())]
    good = b.run("bf16", 64, 32, 256, lambda: a @ w.t(), parts)
    off = b.run("bf16", 64, 32, 256, lambda: (a @ w.t()) * 1.01, parts)
    trans = b.run("bf16", 64, 32, 256, lambda: (a[:32] @ w.t()).t().repeat(2, 1), parts)
    nan = b.run("bf16", 64, 32, 256, lambda: (a @ w.t()).index_fill_(0, torch.tensor([5]), float("nan")), parts)
    if good["status"] != "ok":
        fail(f"a right product failed: {good}")
    for name, r in (("1% off", off), ("transposed", trans), ("a NaN row", nan)):
        if r["status"] != "wrong" or "tflops" in r:
            fail(f"{name}: {r}")
    print("torch_gemm.py: CPU smoke test, no-CUDA exit and wrong-result check as expected")


def summarize():
    sys.path.insert(0, HERE)
    import summarize as sm  # noqa: E402

    def row(op, m, n, k, tf, status="ok", **kw):
        return dict(op=op, M=m, N=n, K=k, tflops=tf, status=status, **kw)
    cuda = [row("bf16", 4096, 4096, 4096, 600.0), row("fp8_tensor", 4096, 4096, 4096, 1080.0),
            row("fp8_block", 4096, 4096, 4096, 840.0, scale_layout="A:outer,B:outer"),
            row("fp8_block_layout_probe", 4096, 4096, 4096, None, status="wrong", scale_layout="A:outer,B:k", why="x"),
            row("grouped_bf16", 16384, 2048, 7168, 450.0, experts=8, rows=[1, 2]), row("single_bf16", 16384, 2048, 7168, 600.0),
            row("loop_bf16", 16384, 2048, 7168, 300.0)]
    torch = [row("bf16", 4096, 4096, 4096, 750.0, out="bf16"), row("fp8_tensor", 4096, 4096, 4096, 1200.0, out="f32"),
             row("fp8_block", 4096, 4096, 4096, None, status="unsupported", why="no blockwise"),
             row("single_bf16", 16384, 2048, 7168, 640.0), row("loop_bf16", 16384, 2048, 7168, 320.0)]
    tests = [dict(program="test_cuda_backend", passed="12", failed="0", skipped="0", seconds="3", result="ok")]
    text = "\n".join(sm.summarize(tests, cuda, torch, ["GPU: test"]))
    print(text)
    want = ["test_cuda_backend           12       0        0        3  ok",
            "bf16           4096   4096   4096       600.0     750.0   0.80x  torch writes bf16",
            "fp8_tensor     4096   4096   4096      1080.0    1200.0   0.90x",
            "Switchyard fp8_tensor: 1.80x (meets)", "Switchyard fp8_block: 1.40x (BELOW)", "torch fp8_tensor: 1.60x (meets)",
            "torch fp8_block: -", "one grouped call 450.0 TFLOP/s = 0.75x", "a call per expert 300.0 TFLOP/s = 0.50x",
            "A:outer,B:outer  ok", "A:outer,B:k      wrong", "torch: one grouped call not run"]
    for w in want:
        if w not in text:
            fail(f"summary lacks {w!r}")
    if "fp8_block_layout_probe" in text.split("FP8 / BF16")[0]:
        fail("the layout probe is listed among the GEMM rates")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "moe_step.json")
        with open(path, "w") as f:
            json.dump({"parameters": 1223312384, "batch": 8, "seq_len": 2048, "dtype": "bf16", "tokens_per_s": 50000.0,
                       "mfu": 0.0955, "peak_tflops": 989.4}, f)
        line = sm.moe_step_line(path)
        for w in ("1.22B parameters", "batch 8 x 2048", "PyTorch bf16 50000 tok/s", "MFU 9.6% of 989.4 TFLOP/s"):
            if w not in line:
                fail(f"MoE step line lacks {w!r}: {line}")
        if "no PyTorch result" not in sm.moe_step_line(os.path.join(d, "missing.json")):
            fail("a missing MoE step result is not said")
        # Switchyard's side (tests/gpu/train_check.py's JSON) beside it, and its own lines.
        tj = os.path.join(d, "train.json")
        with open(tj, "w") as f:
            json.dump({"results": [
                {"check": "equal", "steps": 10, "tol": 1e-4, "max_rel_diff": 3e-6, "first_rel_diff": 1e-7, "ok": True},
                {"check": "resume", "tol": 1e-4, "max_rel_diff": 2e-4, "ok": False, "why": "steps 6-10 differ"},
                {"check": "bench_bf16", "config": "configs/moe_1b.toml", "recipe": "bf16", "tokens_per_s": 25000.0,
                 "achieved_tflops": 47.4, "mfu": 0.048, "peak_tflops": 989.0, "step_seconds": 0.655, "ok": True},
                {"check": "bench_fp8-block", "recipe": "fp8-block", "refused": True, "ok": True,
                 "why": "FP8 recipes on a device are refused"}]}, f)
        train = sm.load_train(tj)
        line = sm.moe_step_line(path, train)
        for w in ("PyTorch bf16 50000 tok/s", "Switchyard bf16 25000 tok/s, MFU 4.8%", "Switchyard / PyTorch = 0.50x"):
            if w not in line:
                fail(f"MoE step line lacks {w!r}: {line}")
        text = "\n".join(sm.train_lines(train))
        for w in ("max relative loss difference 3.00e-06 (step 1: 1.00e-07), tol 0.0001: ok",
                  "resumed on the CPU: steps 6-10 within 2.00e-04 of the GPU run: FAILED (steps 6-10 differ)",
                  "configs/moe_1b.toml bf16: 25000 tok/s, 47.4 TFLOP/s, MFU 4.8% of 989",
                  "fp8-block: refused on a device today"):
            if w not in text:
                fail(f"train lines lack {w!r}:\n{text}")
        if "no result" not in sm.train_lines({})[0] or "not measured" not in sm.moe_step_line(path, {}):
            fail("a missing train_check result is not said")
    print("summarize.py: ratios and verdicts as expected")


def train_check(bin_dir):
    """tests/gpu/train_check.py on the emulated device: every check passes with losses equal bit for bit
    (tolerance 0), the benchmark reports a rate in BF16 and FP8; with no GPU and no emulation
    it fails, and says the GPU run did not run."""
    script = os.path.join(HERE, "train_check.py")
    with tempfile.TemporaryDirectory() as d:
        js = os.path.join(d, "train.json")
        r = subprocess.run([PY, script, "--bin", bin_dir, "--work", os.path.join(d, "w"), "--json", js, "--emulate",
                            "--bench-steps", "4", "--budget", "300"], capture_output=True, text=True, timeout=400)
        if r.returncode != 0:
            fail(f"train_check.py --emulate: rc {r.returncode}\n{r.stdout}\n{r.stderr}\n{open(js).read() if os.path.exists(js) else ''}")
        res = {x["check"]: x for x in json.load(open(js))["results"]}
        e, rs, b, f8 = res["equal"], res["resume"], res["bench_bf16"], res["bench_fp8-block"]
        if not (e["ok"] and e["tol"] == 0 and e["max_rel_diff"] == 0 and len(e["gpu_losses"]) == 10):
            fail(f"equal: {e}")
        if not (rs["ok"] and rs["resumed"] and rs["max_rel_diff"] == 0):
            fail(f"resume: {rs}")
        if not (b["ok"] and b["tokens_per_s"] > 0 and b["achieved_tflops"] > 0 and b["steps_done"] == 4):
            fail(f"bench_bf16: {b}")
        if not (f8["ok"] and f8["tokens_per_s"] > 0 and f8["recipe"] == "fp8-block" and not f8.get("refused")):
            fail(f"fp8: {f8}")
        if gpu_present():
            print("train_check.py: emulated run as expected (a GPU is here: the no-GPU failure is not checked)")
            return
        js2 = os.path.join(d, "nogpu.json")
        r = subprocess.run([PY, script, "--bin", bin_dir, "--work", os.path.join(d, "w2"), "--json", js2,
                            "--bench-steps", "4", "--budget", "200"], capture_output=True, text=True, timeout=300)
        res = {x["check"]: x for x in json.load(open(js2))["results"]}
        if r.returncode != 1 or res["equal"]["ok"] or res["equal"]["rc_gpu"] != 2 or res["bench_bf16"]["ok"] or \
                res["bench_fp8-block"].get("refused"):  # no device at all is not the FP8 refusal
            fail(f"without a GPU: rc {r.returncode}, {res}")
    print("train_check.py: emulated device checks pass bit for bit; without a GPU it fails, naming the runs")


def torch_moe_step(bin_dir):
    script = os.path.join(ROOT, "bench", "torch_moe_step.py")
    cfg = os.path.join(ROOT, "configs", "moe_1b.toml")
    r = subprocess.run([PY, script, cfg, "--print-model"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        fail(f"--print-model: exit {r.returncode}: {r.stderr[-2000:]}")
    mine = json.loads(r.stdout)
    env = dict(os.environ, SY_SKIP_MEMORY_CHECK="1")  # a plan for a GPU, made on this small machine
    r = subprocess.run([os.path.join(bin_dir, "moe-launch"), cfg, "--np", "1", "--dry-run", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    if r.returncode != 0:
        fail(f"moe-launch --dry-run: exit {r.returncode}: {r.stderr[-2000:]}")
    plan = json.loads(r.stdout)
    if mine["parameters"] != plan["model"]["parameters"]:
        fail(f"parameters: torch model {mine['parameters']}, Switchyard {plan['model']['parameters']}")
    if mine["forward_flops_per_token"] != plan["compute"]["forward_flops_per_token"]:
        fail(f"FLOPs per token: torch side {mine['forward_flops_per_token']}, "
             f"Switchyard {plan['compute']['forward_flops_per_token']}")
    print(f"moe_1b: {mine['parameters']} parameters, {mine['forward_flops_per_token']:.0f} forward FLOPs per token "
          "on both sides")

    # The dropless MoE layer (tokens sorted by expert) against a loop over tokens and their top-k picks.
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import torch
    import torch_moe_step as tm  # noqa: E402
    torch.manual_seed(3)
    m, e, _ = tm.load_config(cfg, True)
    e["shared_experts"] = 1
    model = tm.build(torch, m, e, "cpu")
    moe = model.layers[m["dense_layers"]].ffn
    x = torch.randn(2, 7, m["d_model"])
    with torch.no_grad():
        y, _ = moe(x)
        flat = x.reshape(-1, m["d_model"])
        want = torch.zeros_like(flat)
        for i, row in enumerate(flat):
            scores = moe.router(row).softmax(-1)
            g, idx = scores.topk(e["top_k"])
            g = g / g.sum()
            for gate, ex in zip(g, idx):
                want[i] += gate * moe.experts[int(ex)](row)
            want[i] += moe.shared(row)
    err = (y.reshape(-1, m["d_model"]) - want).abs().max().item()
    scale = want.abs().max().item()
    # FP32, the same products in another summation order: a few ulps of the largest output.
    if not err <= 1e-5 * scale:
        fail(f"the MoE layer differs from a per-token loop by {err} (outputs up to {scale})")
    print(f"MoE layer = per-token loop within {err:.2e} (outputs up to {scale:.2f})")

    r = subprocess.run([PY, script, "--device", "cpu", "--small", "--steps", "3", "--warmup", "1", "--json"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        fail(f"--device cpu --small: exit {r.returncode}: {r.stderr[-2000:]}")
    res = json.loads(r.stdout)
    if not (res["tokens_per_s"] > 0 and res["step_seconds"] > 0 and res["mfu"] is None):
        fail(f"smoke result: {res}")
    r = subprocess.run([PY, script, "--steps", "1"], capture_output=True, text=True, timeout=300)
    if gpu_present():
        print("a GPU is present: the no-CUDA exit is not checked here")
    elif r.returncode != 3 or "no GPU" not in r.stderr:
        fail(f"without CUDA: exit {r.returncode} (want 3): {r.stderr[-500:]}")
    print("torch_moe_step.py: model, MoE layer, smoke run and no-GPU exit as expected")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "device_check" and len(sys.argv) == 3:
        device_check(os.path.abspath(sys.argv[2]))
    elif what == "torch_gemm":
        torch_gemm()
    elif what == "summarize":
        summarize()
    elif what == "train_check" and len(sys.argv) == 3:
        train_check(os.path.abspath(sys.argv[2]))
    elif what == "torch_moe_step" and len(sys.argv) == 3:
        torch_moe_step(os.path.abspath(sys.argv[2]))
    else:
        print(__doc__)
        sys.exit(2)
