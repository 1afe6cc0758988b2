#!/usr/bin/env python3
"""Impossible layouts are rejected on every rank before any work, saying
what would fit, with exit code 2 (and no rank left hanging).

usage: test_layout_errors.py BIN_DIR
"""
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testenv import mpi_env  # noqa: E402

BIN = Path(sys.argv[1])
ENV = mpi_env(OMP_NUM_THREADS="1")

CASES = [
    # (ranks, --set overrides, expected message pieces)
    (4, ["parallel.dp=2"], ["parallel.pp x parallel.dp = 1 x 2 = 2 ranks, but the job has 4 ranks",
                            "set parallel.dp = 4 (or 0 to take it from the job)"]),
    (4, ["parallel.ep=3"], ["parallel.ep = 3 must divide parallel.dp = 4", "it can be 1, 2, 4"]),
    (4, ["moe.experts=6", "parallel.ep=4"], ["moe.experts = 6 cannot be split evenly over parallel.ep = 4 ranks",
                                              "parallel.ep can be 1, 2"]),
    (3, ["parallel.pp=2"], ["the job has 3 ranks, not a multiple of parallel.pp = 2"]),
    (2, ["train.global_batch=3", "train.micro_batch=0"], ["train.global_batch = 3 does not split over 2 data-parallel ranks",
                                                          "use a multiple of 2"]),
]


def main():
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks, sets, needles in CASES:
            args = ["mpiexec", "-n", str(ranks), str(BIN / "moe-train"), "--set", f"run.dir={tmp}/r"]
            for s in sets:
                args += ["--set", s]
            p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)
            out = p.stdout + p.stderr
            ok = p.returncode == 2 and all(n in out for n in needles) and "bad input on rank" in out
            print(f"{ranks} ranks {sets}: exit {p.returncode} {'ok' if ok else 'WRONG'}")
            if not ok:
                failures.append(f"{sets}: exit {p.returncode}\n{out[-1500:]}")
            if Path(tmp, "r", "metrics.jsonl").exists():
                failures.append(f"{sets}: training started before the layout was checked")
    if failures:
        print("FAILED:\n" + "\n".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
