#!/usr/bin/env python3
"""The one summary table of tests/gpu/device_check.sh.

Reads the gpu test programs' counts (a TSV the script writes), the JSON lines
of sy-bench-gemm-cuda and of bench/torch_gemm.py, and prints: pass / fail /
skip per test program; per GEMM case Switchyard's TFLOP/s (cuBLAS calls as
Switchyard makes them), torch's and their ratio; FP8 / BF16 per shape
against the issue's target (>= 1.5x on large shapes); grouped experts
against one GEMM of the same FLOPs; the FP8 block-scale layout probe.
Only checked results carry numbers; anything else shows its status.

  tests/gpu/summarize.py --tests T.tsv --cuda C.jsonl --torch P.jsonl [--header LINE]...
"""
import argparse
import json
import sys

FP8_TARGET = 1.5


def load(path):
    rows = []
    if not path:
        return rows
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return rows


def key(r):
    return (r.get("op"), r.get("M"), r.get("N"), r.get("K"))


def fmt_rate(r):
    if r is None:
        return "not run"
    if r.get("status") == "ok":
        return f"{r['tflops']:.1f}"
    return "WRONG" if r.get("status") == "wrong" else r.get("status", "?")


def summarize(tests, cuda, torch, headers):
    out = list(headers)
    out.append("")
    out.append(f"{'gpu test program':<22} {'passed':>7} {'failed':>7} {'skipped':>8} {'seconds':>8}  result")
    if not tests:
        out.append("(no gpu test programs ran: no bundle carried; make one with tests/gpu/device_check.sh --bundle)")
    for t in tests:
        out.append(f"{t['program']:<22} {t['passed']:>7} {t['failed']:>7} {t['skipped']:>8} {t['seconds']:>8}  {t['result']}")

    out.append("")
    out.append("GEMM TFLOP/s (median; every number's result checked against a float64 reference)")
    out.append(f"{'op':<12} {'M':>6} {'N':>6} {'K':>6} {'Switchyard':>11} {'torch':>9} {'ratio':>7}  notes")
    tmap = {key(r): r for r in torch}
    seen = set()
    for r in cuda:
        if r.get("op") == "fp8_block_layout_probe":
            continue
        k = key(r)
        seen.add(k)
        p = tmap.get(k)
        ratio = f"{r['tflops'] / p['tflops']:.2f}x" if r.get("status") == "ok" and p and p.get("status") == "ok" else "-"
        notes = []
        if r.get("status") not in ("ok", None):
            notes.append(f"Switchyard {r['status']}: {r.get('why', '')}")
        if p and p.get("status") != "ok":
            notes.append(f"torch {p['status']}: {p.get('why', '')}")
        if p and p.get("status") == "ok" and p.get("out") and p.get("out") != "f32":
            notes.append(f"torch writes {p['out']}")
        out.append(f"{r['op']:<12} {r['M']:>6} {r['N']:>6} {r['K']:>6} {fmt_rate(r):>11} {fmt_rate(p):>9} {ratio:>7}  "
                   + "; ".join(notes)[:160])
    for p in torch:
        if key(p) not in seen:
            out.append(f"{p['op']:<12} {p['M']:>6} {p['N']:>6} {p['K']:>6} {'not run':>11} {fmt_rate(p):>9} {'-':>7}")

    out.append("")
    out.append(f"FP8 / BF16 (the issue's target: >= {FP8_TARGET}x on large shapes)")
    cmap = {key(r): r for r in cuda}
    shapes = []
    for r in cuda:
        if r.get("op") == "bf16" and (r["M"], r["N"], r["K"]) not in shapes:
            shapes.append((r["M"], r["N"], r["K"]))
    for m, n, k in shapes:
        cells = []
        for side, mp in (("Switchyard", cmap), ("torch", tmap)):
            b = mp.get(("bf16", m, n, k))
            for op in ("fp8_tensor", "fp8_block"):
                f = mp.get((op, m, n, k))
                if b and f and b.get("status") == "ok" and f.get("status") == "ok":
                    x = f["tflops"] / b["tflops"]
                    mark = "meets" if x >= FP8_TARGET else "BELOW"
                    cells.append(f"{side} {op}: {x:.2f}x ({mark})")
                else:
                    cells.append(f"{side} {op}: -")
        out.append(f"  {m}x{n}x{k}: " + ", ".join(cells))

    out.append("")
    g = {r["op"]: r for r in cuda if r.get("op") in ("grouped_bf16", "loop_bf16", "single_bf16")}
    gt = {r["op"]: r for r in torch if r.get("op") in ("grouped_bf16", "loop_bf16", "single_bf16")}
    if g:
        any_r = next(iter(g.values()))
        out.append(f"Grouped expert GEMM ({any_r.get('experts', '?')} experts, rows {any_r.get('rows', '?')}, "
                   f"N {any_r['N']}, K {any_r['K']}) against one GEMM of the same FLOPs")
        for side, mp in (("Switchyard", g), ("torch", gt)):
            s = mp.get("single_bf16")
            parts = []
            for op, label in (("grouped_bf16", "one grouped call"), ("loop_bf16", "a call per expert")):
                r = mp.get(op)
                if r and s and r.get("status") == "ok" and s.get("status") == "ok":
                    parts.append(f"{label} {r['tflops']:.1f} TFLOP/s = {r['tflops'] / s['tflops']:.2f}x")
                else:
                    parts.append(f"{label} {fmt_rate(r)}")
            out.append(f"  {side}: " + "; ".join(parts) + f"; one GEMM {fmt_rate(s)}")
    probes = [r for r in cuda if r.get("op") in ("fp8_block", "fp8_block_layout_probe") and r.get("scale_layout")]
    if probes:
        first = probes[0]
        probes = [r for r in probes if key(r)[1:] == key(first)[1:]]
        out.append("")
        out.append(f"FP8 block-scale layouts at {first['M']}x{first['N']}x{first['K']} (Switchyard's fp8_cuda uses A:outer,B:outer)")
        for r in probes:
            out.append(f"  {r['scale_layout']:<16} {r['status']}" + (f": {r.get('why', '')[:120]}" if r["status"] != "ok" else ""))
    return out


def load_train(path):
    """tests/gpu/train_check.py's JSON (Switchyard's training on the GPU), by check name; {} if absent."""
    try:
        with open(path) as f:
            return {r["check"]: r for r in json.load(f)["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def moe_step_line(path, train=None):
    """bench/torch_moe_step.py's JSON result (the PyTorch MoE training step) next to moe-train's (train_check.py)."""
    sw = (train or {}).get("bench_bf16", {})
    if sw.get("tokens_per_s"):
        smfu = f"MFU {100 * sw['mfu']:.1f}%" if sw.get("mfu") else "MFU ? (peak unknown)"
        ours = f"Switchyard bf16 {sw['tokens_per_s']:.0f} tok/s, {smfu}"
    else:
        ours = f"Switchyard: not measured ({sw.get('why', 'no train_check result')})"
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return f"MoE training step (configs/moe_1b.toml): no PyTorch result (bench.log); {ours}"
    mfu = f"{100 * r['mfu']:.1f}% of {r['peak_tflops']:g} TFLOP/s" if r.get("mfu") else "? (peak unknown)"
    ratio = f"; Switchyard / PyTorch = {sw['tokens_per_s'] / r['tokens_per_s']:.2f}x" \
        if sw.get("tokens_per_s") and r.get("tokens_per_s") else ""
    return (f"MoE training step (configs/moe_1b.toml, {r['parameters'] / 1e9:.2f}B parameters, batch {r['batch']} x "
            f"{r['seq_len']}): PyTorch {r['dtype']} {r['tokens_per_s']:.0f} tok/s, MFU {mfu}; {ours}{ratio}")


def train_lines(train):
    """Switchyard's own training on the GPU: losses against the CPU, a GPU checkpoint resumed on the CPU, FP8."""
    if not train:
        return ["Switchyard training on the GPU: no result (train_check.py did not run; bench.log)"]

    def verdict(r):
        return "ok" if r.get("ok") else f"FAILED ({r.get('why', '?')})"
    out = ["Switchyard training on the GPU (tests/gpu/train_check.py, moe-train from the bundle):"]
    e = train.get("equal")
    if e:
        d = f"max relative loss difference {e['max_rel_diff']:.2e} (step 1: {e['first_rel_diff']:.2e}), tol {e['tol']:g}" \
            if "max_rel_diff" in e else "not compared"
        out.append(f"  tiny, {e.get('steps', 10)} steps, run.device cuda vs cpu: {d}: {verdict(e)}")
    r = train.get("resume")
    if r:
        d = f"steps 6-10 within {r['max_rel_diff']:.2e} of the GPU run" if "max_rel_diff" in r else "not compared"
        out.append(f"  the GPU's step-5 checkpoint resumed on the CPU: {d}: {verdict(r)}")
    for name in sorted(k for k in train if k.startswith("bench_")):
        b = train[name]
        if b.get("refused"):
            out.append(f"  {b['recipe']}: refused on a device today ({b['why']}): not measured")
        elif b.get("tokens_per_s"):
            mfu = f"MFU {100 * b['mfu']:.1f}% of {b['peak_tflops']:g}" if b.get("mfu") else "MFU ? (peak unknown)"
            out.append(f"  {b['config']} {b['recipe']}: {b['tokens_per_s']:.0f} tok/s, "
                       f"{b['achieved_tflops']:.1f} TFLOP/s, {mfu}, step {b['step_seconds']:.3f} s: {verdict(b)}")
        else:
            out.append(f"  {b.get('config', 'configs/moe_1b.toml')} {b.get('recipe', name[6:])}: {verdict(b)}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", default=None, help="TSV: program passed failed skipped seconds result")
    ap.add_argument("--cuda", default=None)
    ap.add_argument("--torch", default=None)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--moe-step", default=None, help="bench/torch_moe_step.py --json output")
    ap.add_argument("--train", default=None, help="tests/gpu/train_check.py --json output")
    a = ap.parse_args(argv)
    tests = []
    if a.tests:
        try:
            with open(a.tests) as f:
                for line in f:
                    c = line.rstrip("\n").split("\t")
                    if len(c) == 6:
                        tests.append(dict(zip(("program", "passed", "failed", "skipped", "seconds", "result"), c)))
        except OSError:
            pass
    lines = summarize(tests, load(a.cuda), load(a.torch), a.header)
    train = load_train(a.train) if a.train else {}
    if a.train:
        lines += [""] + train_lines(train)
    if a.moe_step:
        lines += ["", moe_step_line(a.moe_step, train)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
