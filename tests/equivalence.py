"""Comparing a training run with another that must compute the same model
(another layout, a resume, ...), for the equivalence tests and
bench/layout_spread.py.

Two kinds of comparison (DESIGN.md, invariant 5):

bitwise    the runs do the same floating-point operations in the same order
           (same thread count, same GEMM shapes, same reduction order), so
           every step's loss, validation loss, expert loads and dropped
           fraction are equal to the bit. Only the gradient norm may differ
           in its last bits: each rank sums the squares of its own share in
           double and the shares are then added, so a split over pipeline
           stages re-associates a double sum (relative 1e-12 covers it: the
           terms are non-negative, so the error is below count x 2^-53).

tolerance  the runs add the same numbers in another order (a gradient
           reduced over data-parallel ranks, a GEMM split into fewer rows,
           the tied embedding's two halves summed at the end). Their
           parameters then differ in the last bits after the first update
           and drift apart slowly; the loss must stay within a tolerance
           measured by bench/layout_spread.py and written beside each test.
           Such a drift can also flip a routing decision where two experts'
           scores are closer than the drift (a near-tie). From then on the
           runs train on different routes and are no longer comparable, so:
           the expert loads must agree at every step before the first
           difference, and the first difference must be a near-tie: in the
           first MoE layer whose loads differ, the step's router_margin (the
           smallest gap between the last chosen and the best unchosen
           expert, over all tokens) must be at most NEAR_TIE in both runs
           (a token that rounding flips is that close to a tie in each).
           Steps from the flip on are reported, not compared.
           Capacity dropping has near-ties of its own that loads do not
           show (which of two nearly equal-scored tokens an over-full expert
           keeps); they move the loss by a jump, which the tolerances of
           the runs with dropping cover (measured).
"""
import json
from pathlib import Path

GRAD_NORM_BITWISE = 1e-12  # see "bitwise" above
# A routing difference is "a near-tie" when the closest top-k call of that
# step and layer was within NEAR_TIE in both runs. Measured by
# bench/layout_spread.py (seeds 1-3 x default (SkylakeX), Haswell and
# Sandybridge kernels; every tolerance run of tests/mpi/test_layouts.py (dp x
# ep 1x1, 2x1, 4x2, 4x4), tests/pipeline/test_pipeline.py and the reshard
# case of tests/ckpt/test_checkpoint.py: 621 comparisons): while the routes
# agree, the two runs' router_margin differ by at most 2.0e-5 (3d layouts;
# 6e-6 elsewhere); the 13 routing differences seen (3d, and the overlapped
# dispatch with dropping) came at margins 2.8e-7 .. 5.6e-6. NEAR_TIE is 2.5x
# the drift and 9x the largest flip margin.
NEAR_TIE = 5e-5


def metric_rows(run_dir):
    """The per-step rows of run_dir/metrics.jsonl (rows with a loss; event lines such as
    {"event": "start", ...} are skipped)."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(r, dict) and "loss" in r:
            rows.append(r)
    return rows


def rel(a, b):
    return abs(a - b) / abs(b) if b else abs(a - b)


class Comparison:
    """rows against base, step by step. tol None: bitwise; else the relative loss tolerance."""

    def __init__(self, rows, base, tol=None, grad_norm_tol=None):
        self.n, self.tol, self.bitwise = len(rows), tol, tol is None
        self.problems = []
        if len(rows) != len(base):
            self.problems.append(f"{len(rows)} steps, the baseline has {len(base)}")
        self.flip = None  # (step, moe layer, margin) of the first routing difference
        self.loss = self.val = self.grad_norm = 0.0
        self.margin_drift = 0.0  # largest |router_margin difference| while the routes agree
        self.compared = 0
        # The smallest router_margin of either run over the compared steps (how close a call came).
        self.min_margin = float("inf")
        for a, b in zip(rows, base):
            if a["step"] != b["step"]:
                self.problems.append(f"step {a['step']} against step {b['step']}")
                break
            if a["expert_load"] != b["expert_load"] or a["dropped_frac"] != b["dropped_frac"]:
                layer = next((i for i, (x, y) in enumerate(zip(a["expert_load"], b["expert_load"])) if x != y), 0)
                ma, mb = (r.get("router_margin", [None] * (layer + 1))[layer] for r in (a, b))
                margins = [m for m in (ma, mb) if m is not None]
                self.flip = (a["step"], layer, max(margins) if len(margins) == 2 else None)
                if self.bitwise:
                    self.problems.append(f"step {a['step']}: expert loads differ (layer {layer}: {a['expert_load'][layer]} "
                                         f"vs {b['expert_load'][layer]}) although the computation is the same")
                elif self.flip[2] is None or self.flip[2] > NEAR_TIE:
                    self.problems.append(f"step {a['step']}: expert loads differ in MoE layer {layer} "
                                         f"({a['expert_load'][layer]} vs {b['expert_load'][layer]}) but the closest "
                                         f"routing call there was {self.flip[2]} from a tie in one run (> NEAR_TIE = "
                                         f"{NEAR_TIE}): not a rounding near-tie")
                break
            self.compared += 1
            self.loss = max(self.loss, rel(a["loss"], b["loss"]))
            self.grad_norm = max(self.grad_norm, rel(a["grad_norm"], b["grad_norm"]))
            if ("val_loss" in a) != ("val_loss" in b):
                self.problems.append(f"step {a['step']}: validation in one run only")
            elif "val_loss" in b:
                self.val = max(self.val, rel(a["val_loss"], b["val_loss"]))
            for x, y in zip(a.get("router_margin", []), b.get("router_margin", [])):
                if x is not None and y is not None:
                    self.margin_drift = max(self.margin_drift, abs(x - y))
                    self.min_margin = min(self.min_margin, x, y)
            if self.bitwise and (a["loss"] != b["loss"] or a.get("val_loss") != b.get("val_loss")):
                self.problems.append(f"step {a['step']}: loss {a['loss']!r} vs {b['loss']!r}, validation "
                                     f"{a.get('val_loss')!r} vs {b.get('val_loss')!r}: not bitwise equal")
        if self.bitwise and self.grad_norm > GRAD_NORM_BITWISE:
            self.problems.append(f"gradient norms differ by {self.grad_norm:.1e} > {GRAD_NORM_BITWISE}")
        if not self.bitwise:
            if self.loss > tol or self.val > tol:
                self.problems.append(f"relative loss difference {max(self.loss, self.val):.2e} > {tol:.0e}")
            if grad_norm_tol is not None and self.grad_norm > grad_norm_tol:
                self.problems.append(f"relative gradient-norm difference {self.grad_norm:.2e} > {grad_norm_tol:.0e}")

    @property
    def ok(self):
        return not self.problems

    def summary(self):
        kind = "bitwise" if self.bitwise else f"tol {self.tol:.0e}"
        s = (f"[{kind}] loss {self.loss:.2e} val {self.val:.2e} grad norm {self.grad_norm:.1e} over "
             f"{self.compared}/{self.n} steps")
        if self.flip:
            m = "?" if self.flip[2] is None else f"{self.flip[2]:.1e}"
            s += f"; routes differ from step {self.flip[0]} (MoE layer {self.flip[1]}, margin {m})"
        else:
            s += "; loads identical"
        return s + ("" if self.ok else " FAIL: " + "; ".join(self.problems))
