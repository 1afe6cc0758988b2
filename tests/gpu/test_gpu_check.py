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
    print("summarize.py: ratios and verdicts as expected")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "device_check" and len(sys.argv) == 3:
        device_check(os.path.abspath(sys.argv[2]))
    elif what == "torch_gemm":
        torch_gemm()
    elif what == "summarize":
        summarize()
    else:
        print(__doc__)
        sys.exit(2)
