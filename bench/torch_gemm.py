#!/usr/bin/env python3
"""GEMM TFLOP/s through PyTorch: the baseline for bench/gpu/sy-bench-gemm-cuda.

The same shapes, input distributions, output dtype and timing method as the
CUDA benchmark: C (M, N) = A (M, K) @ B (N, K)^T with
  bf16        torch.mm, FP32 accumulation (reduced-precision BF16 reductions
              off), FP32 output through out_dtype where this torch has it,
              else BF16 output (the line says which);
  fp8_tensor  torch._scaled_mm, E4M3, one scale per tensor;
  fp8_block   torch._scaled_mm with 1 x 128 (A) and 128 x 128 (B) scales,
              where this torch and cuBLAS offer it (else the line says why);
  grouped     torch._grouped_mm over the experts' rows (where present), a
              loop of torch.mm per expert, and one torch.mm of the same FLOPs.
Inputs are random bit patterns like the CUDA benchmark's (BF16 magnitudes in
[1/8, 2), every non-NaN E4M3 code), never zeros. Every result is checked
before it is timed: a sampled 16 x 16 block of C against float64 from the
same (dequantized) inputs, tolerance as in bench/gpu/gemm_check.h; a wrong
result prints WRONG and no TFLOP/s. Timing: CUDA events around each call
(wall clock on the CPU), warm-up of at least --warmup calls and 50 ms,
median of --iters.

  python3 bench/torch_gemm.py                       # on a GPU: JSON lines, then a table
  python3 bench/torch_gemm.py --device cpu --small  # CPU smoke test (tiny shapes, BF16 only)

Exit: 0 all good, 1 a wrong result or an error, 2 bad arguments, 3 no CUDA
device (without --device cpu) or no PyTorch.
"""
import argparse
import json
import math
import statistics
import sys
import time

NO_GPU = 3
SHAPES = "4096x4096x4096,8192x8192x8192,16384x2048x7168"
GROUP_ROWS = "2672,1008,2320,1552,2064,3056,1296,2416"  # as sy-bench-gemm-cuda's defaults
SMALL = dict(shapes="256x384x512,384x256x1024", group_rows="48,16,80,32", group_n=256, group_k=384, iters=5)


def parse_shapes(text):
    shapes = []
    for t in text.split(","):
        d = t.split("x")
        if len(d) != 3 or not all(x.isdigit() and int(x) > 0 for x in d):
            raise ValueError(f"--shapes: '{t}' is not MxNxK")
        m, n, k = map(int, d)
        if k % 128 or n % 16 or m % 16:
            raise ValueError(f"shape {t}: M and N must be multiples of 16 and K of 128 (FP8 block scales)")
        shapes.append((m, n, k))
    return shapes


def tolerance(k, fp8, out_bits, ref, abs_sum):
    """bench/gpu/gemm_check.h's tolerance (its comment gives the reasons)."""
    acc = k * 2.0 ** -23 + (2.0 ** -9 if fp8 else 0.0)
    rnd = 2.0 ** -23 if out_bits == 32 else 2.0 ** -8
    return acc * abs_sum + rnd * ref.abs() + 1e-30


class Bench:
    def __init__(self, torch, args):
        self.torch, self.args = torch, args
        self.dev = torch.device(args.device)
        self.cuda = args.device == "cuda"
        self.results = []
        self.json_out = open(args.json, "w") if args.json else sys.stdout
        self.device_name = torch.cuda.get_device_name(0) if self.cuda else "cpu"
        self.gen = torch.Generator(device="cpu").manual_seed(1234)

    # -- inputs: the CUDA benchmark's distributions, drawn on the CPU, moved once
    def bf16(self, rows, cols):
        t = self.torch
        h = t.randint(0, 1 << 10, (rows, cols), generator=self.gen, dtype=t.int32)
        bits = ((h & 1) << 15) | ((124 + ((h >> 1) & 3)) << 7) | ((h >> 3) & 0x7F)
        x = bits.to(t.int16).view(t.bfloat16)  # int16 wraps the sign bit into place
        # On the CPU the BF16 values are held in FP32: an FP32 GEMM of them is
        # a BF16 GEMM's numerics (exact products, FP32 sums), where torch's own
        # CPU BF16 kernels may round partial sums to BF16.
        return x.to(self.dev) if self.cuda else x.float()

    def e4m3(self, rows, cols):
        t = self.torch
        q = t.randint(0, 256, (rows, cols), generator=self.gen, dtype=t.int32)
        q = t.where((q & 0x7F) == 0x7F, q - 1, q)  # no NaN codes
        return q.to(t.uint8).view(t.float8_e4m3fn).to(self.dev)

    def scales(self, *shape):
        t = self.torch
        h = t.randint(0, 1 << 10, shape, generator=self.gen, dtype=t.int32)
        return ((1 + (h & 0xFF).double() / 256) * t.pow(2.0, -10 + (h >> 8).double())).float().to(self.dev)

    # -- timing
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_op(self, fn):
        """(median, min) ms per call; each sample times `reps` calls queued back to back (about 5 ms),
        as sy-bench-gemm-cuda does, so host launch gaps do not count."""
        times, warm = [], 0.0
        w = 0
        while w < 200 and (w < self.args.warmup or warm < 50.0):
            warm += self.one(fn, 1)
            w += 1
        reps = max(1, min(50, math.ceil(5.0 / max(1e-3, warm / w))))
        for _ in range(self.args.iters):
            times.append(self.one(fn, reps) / reps)
        return statistics.median(times), min(times), reps

    def one(self, fn, reps):
        if self.cuda:
            a, b = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        s = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - s) * 1e3

    # -- check: a 16 x 16 sample of C (corners included) against float64
    def check(self, out, parts, fp8):
        """parts: (row0, rows, A_deq_fn(rows_idx) -> (r, K) float64, B_deq_fn(cols_idx) -> (c, K) float64)."""
        t = self.torch
        checked = wrong = 0
        worst = 0.0
        bits = 32 if out.dtype == t.float32 else 16
        if not bool(t.isfinite(out).all()):
            return 0, 1, math.inf, int((~t.isfinite(out)).sum())
        n = out.shape[1]
        for row0, rows, a_fn, b_fn in parts:
            ri = t.unique(t.cat([t.tensor([0, rows - 1]), t.randint(0, rows, (14,), generator=self.gen)]))
            ci = t.unique(t.cat([t.tensor([0, n - 1]), t.randint(0, n, (14,), generator=self.gen)]))
            a, b = a_fn(ri), b_fn(ci)
            k = a.shape[1]
            ref, abs_sum = a @ b.T, a.abs() @ b.abs().T
            got = out[(ri + row0).to(out.device)][:, ci.to(out.device)].double().cpu()
            err = (got - ref).abs() / tolerance(k, fp8, bits, ref, abs_sum)
            err = t.where(t.isnan(err), t.full_like(err, math.inf), err)
            checked += err.numel()
            wrong += int((err > 1).sum())
            worst = max(worst, float(err.max()))
        return checked, wrong, worst, 0

    def run(self, op, m, n, k, fn, parts, fp8=False, api="", extra=None):
        """fn() computes C and returns it; checked after the first call and after the timed ones."""
        r = dict(bench="gemm_torch", torch=self.torch.__version__, gpu=self.device_name, op=op, M=m, N=n, K=k,
                 status="ok", api=api)
        r.update(extra or {})
        try:
            out = fn()
            self.sync()
            r["out"] = "f32" if out.dtype == self.torch.float32 else "bf16"
            checked, wrong, worst, nonfinite = self.check(out, parts, fp8)
            r.update(checked=checked, wrong=wrong, worst_over_tol=worst, nonfinite=nonfinite)
            if wrong or nonfinite:
                r["status"] = "wrong"
                r["why"] = f"first run: {nonfinite} non-finite outputs, {wrong} of {checked} sampled entries off"
            else:
                med, mn, reps = self.time_op(fn)
                r.update(median_ms=med, min_ms=mn, iters=self.args.iters, calls_per_sample=reps,
                         tflops=2.0 * m * n * k / (med * 1e-3) / 1e12)
                out = fn()
                self.sync()
                checked, wrong, worst, nonfinite = self.check(out, parts, fp8)
                if wrong or nonfinite:
                    r["status"] = "wrong"
                    r["why"] = f"after the timed runs: {nonfinite} non-finite, {wrong} of {checked} sampled entries off"
                    for key in ("median_ms", "min_ms", "tflops"):
                        r.pop(key)
        except Exception as e:  # an API this torch lacks, or one cuBLAS refuses
            text = str(e).lower()
            # fp8_block and grouped_bf16 probe what this torch offers: any refusal is "unsupported", with its reason.
            r["status"] = "unsupported" if op in ("fp8_block", "grouped_bf16") or \
                isinstance(e, (AttributeError, TypeError, NotImplementedError)) or \
                any(x in text for x in ("not supported", "not_supported", "invalid scaling")) else "error"
            r["why"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        print(json.dumps(r), file=self.json_out, flush=True)
        self.results.append(r)
        return r

    # -- the cases
    def bf16_mm(self, a, b):
        """C = a @ b^T: FP32 output through out_dtype where this torch has it (and --out f32), else BF16."""
        t = self.torch
        if self.args.out == "f32" and self.cuda:
            try:
                x = self.bf16(16, 128)
                t.mm(x, x.t(), out_dtype=t.float32)
                return (lambda: t.mm(a, b.t(), out_dtype=t.float32)), "torch.mm(out_dtype=float32)"
            except (TypeError, RuntimeError):
                pass
        if not self.cuda:
            return (lambda: t.mm(a, b.t())), "torch.mm on the CPU (FP32 GEMM of BF16 values)"
        return (lambda: t.mm(a, b.t())), "torch.mm (BF16 output)"

    def shape(self, m, n, k):
        t = self.torch
        a, b = self.bf16(m, k), self.bf16(n, k)
        deq_a = lambda ri: a[ri.to(a.device)].double().cpu()
        deq_b = lambda ci: b[ci.to(b.device)].double().cpu()
        fn, api = self.bf16_mm(a, b)
        self.run("bf16", m, n, k, fn, [(0, m, deq_a, deq_b)], api=api)
        del a, b
        if not self.cuda or not hasattr(t, "float8_e4m3fn"):
            for op in ("fp8_tensor", "fp8_block"):
                self.skip(op, m, n, k, "FP8 needs CUDA and torch.float8_e4m3fn (--device cpu runs BF16 only)")
            return
        odt = t.float32 if self.args.out == "f32" else t.bfloat16
        a8, b8 = self.e4m3(m, k), self.e4m3(n, k)
        sa, sb = self.scales(1), self.scales(1)
        deq_a = lambda ri: a8[ri.to(a8.device)].double().cpu() * float(sa)
        deq_b = lambda ci: b8[ci.to(b8.device)].double().cpu() * float(sb)
        self.run("fp8_tensor", m, n, k,
                 lambda: t._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=odt),
                 [(0, m, deq_a, deq_b)], fp8=True, api="torch._scaled_mm (tensor-wise)")
        # Block scales as torch's ScaledBlas.cpp checks them: A (M, K/128) outer-dim-major;
        # B (for b8.t(), K x N) (K/128, N/128) with its transpose row-major.
        kb = k // 128
        sab = self.scales(kb, m).t()                      # (M, K/128), stride (1, M)
        sbb = self.scales(n // 128, kb).t()               # (K/128, N/128), stride (1, K/128)
        deq_a = lambda ri: a8[ri.to(a8.device)].double().cpu() * sab[ri.to(a8.device)].double().cpu().repeat_interleave(128, 1)
        deq_b = lambda ci: b8[ci.to(b8.device)].double().cpu() * \
            sbb.t()[(ci // 128).to(b8.device)].double().cpu().repeat_interleave(128, 1)
        self.run("fp8_block", m, n, k,
                 lambda: t._scaled_mm(a8, b8.t(), scale_a=sab, scale_b=sbb, out_dtype=odt),
                 [(0, m, deq_a, deq_b)], fp8=True, api="torch._scaled_mm (1x128 x 128x128 scales)")

    def skip(self, op, m, n, k, why):
        r = dict(bench="gemm_torch", torch=self.torch.__version__, gpu=self.device_name, op=op, M=m, N=n, K=k,
                 status="unsupported", why=why)
        print(json.dumps(r), file=self.json_out, flush=True)
        self.results.append(r)

    def grouped(self, rows, n, k):
        t = self.torch
        e_n, total = len(rows), sum(rows)
        offs = [0]
        for r in rows:
            offs.append(offs[-1] + r)
        a, w = self.bf16(total, k), self.bf16(e_n * n, k).view(e_n, n, k)
        extra = dict(experts=e_n, rows=rows)
        deq_w = lambda e: (lambda ci: w[e][ci.to(w.device)].double().cpu())
        parts = [(offs[e], rows[e], (lambda o: lambda ri: a[(ri + o).to(a.device)].double().cpu())(offs[e]), deq_w(e))
                 for e in range(e_n)]
        out = t.empty(total, n, dtype=a.dtype, device=self.dev)  # torch's grouped and looped products write BF16 on a GPU
        if hasattr(t, "_grouped_mm") and self.cuda:
            offs_t = t.tensor(offs[1:], dtype=t.int32, device=self.dev)
            wt = w.transpose(-2, -1)  # (E, K, N), column-major per expert
            self.run("grouped_bf16", total, n, k, lambda: t._grouped_mm(a, wt, offs=offs_t), parts,
                     api="torch._grouped_mm", extra=extra)
        else:
            self.skip("grouped_bf16", total, n, k, "this torch has no torch._grouped_mm on this device")

        def loop():
            for e in range(e_n):
                t.mm(a[offs[e]:offs[e + 1]], w[e].t(), out=out[offs[e]:offs[e + 1]])
            return out
        self.run("loop_bf16", total, n, k, loop, parts, api="torch.mm per expert", extra=extra)
        self.run("single_bf16", total, n, k, lambda: t.mm(a, w[0].t()),
                 [(0, total, lambda ri: a[ri.to(a.device)].double().cpu(), deq_w(0))], api="torch.mm", extra=extra)

    def table(self):
        print(f"\n{'op':<14} {'M':>6} {'N':>6} {'K':>6} {'out':>4} {'median_ms':>10} {'TFLOP/s':>9}  check")
        for r in self.results:
            ok = r["status"] == "ok"
            chk = f"ok: {r['checked']} samples, worst {r['worst_over_tol']:.2g} of tol" if ok else \
                f"{'WRONG' if r['status'] == 'wrong' else r['status']}: {r.get('why', '')}"
            print(f"{r['op']:<14} {r['M']:>6} {r['N']:>6} {r['K']:>6} {r.get('out', '-'):>4} "
                  f"{(format(r['median_ms'], '.4f') if ok else '-'):>10} {(format(r['tflops'], '.1f') if ok else '-'):>9}  {chk}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny shapes (the CPU smoke test)")
    ap.add_argument("--shapes", default=None, help=f"MxNxK,... (default {SHAPES})")
    ap.add_argument("--group-rows", default=None, help=f"rows per expert (default {GROUP_ROWS})")
    ap.add_argument("--group-n", type=int, default=None)
    ap.add_argument("--group-k", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--json", default=None, help="JSON lines here (default: stdout, before the table)")
    args = ap.parse_args(argv)
    base = SMALL if args.small else dict(shapes=SHAPES, group_rows=GROUP_ROWS, group_n=2048, group_k=7168, iters=20)
    args.shapes = args.shapes or base["shapes"]
    args.group_rows = args.group_rows or base["group_rows"]
    args.group_n = args.group_n or base["group_n"]
    args.group_k = args.group_k or base["group_k"]
    args.iters = args.iters or base["iters"]
    try:
        shapes = parse_shapes(args.shapes)
        rows = [int(x) for x in args.group_rows.split(",")]
        if any(r <= 0 for r in rows) or args.group_n % 16 or args.group_k % 16 or args.iters <= 0:
            raise ValueError("--group-rows must be positive, --group-n/--group-k multiples of 16, --iters positive")
    except ValueError as e:
        print(f"torch_gemm: {e}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError as e:
        print(f"torch_gemm: no PyTorch here ({e})", file=sys.stderr)
        return NO_GPU
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"torch_gemm: no GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; "
              "--device cpu --small runs the CPU smoke test", file=sys.stderr)
        return NO_GPU
    if args.device == "cuda":
        # FP32 accumulation, as sy-bench-gemm-cuda and the BF16 recipe use: no BF16
        # partial sums in cuBLAS's split-K reductions (torch allows them by default).
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_tf32 = False
    b = Bench(torch, args)
    print(f"torch {torch.__version__} on {b.device_name}", file=sys.stderr)
    for m, n, k in shapes:
        b.shape(m, n, k)
    b.grouped(rows, args.group_n, args.group_k)
    if b.json_out is not sys.stdout:
        b.json_out.close()
    b.table()
    return 1 if any(r["status"] in ("wrong", "error") for r in b.results) else 0


if __name__ == "__main__":
    sys.exit(main())
