#!/usr/bin/env python3
"""Checkpoint throughput against the disk, in one run.

usage: bench/ckpt_throughput.py [--build build] [--config configs/small.toml] [--dir bench-ckpt] [--ranks 1 2 4]

For the disk: dd writes a file of the checkpoint's size with conv=fdatasync,
then (page cache dropped, when permitted) reads it back. For Switchyard on 1,
2 and 4 ranks: a synchronous save (stage, write, fsync, commit), a cold
load, the training stall of an asynchronous save as a share of the
synchronous save's time, and the same bytes written into one shared file by
parallel HDF5 collective writes (the design we did not choose). Prints GB/s
and ratios to dd; never pass/fail.
"""
import argparse
import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dd(args):
    out = subprocess.run(["dd", *args], capture_output=True, text=True).stderr
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", out)
    return int(m.group(1)) / float(m.group(2)) / 1e9


def drop_caches():
    subprocess.run(["sync"])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "small.toml"))
    ap.add_argument("--dir", default=str(ROOT / "bench-ckpt"))
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    a = ap.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1")
    rows = []
    for ranks in a.ranks:
        out = subprocess.run(["mpirun", "-np", str(ranks), "--bind-to", "none", str(Path(a.build) / "bin" / "sy-bench-ckpt"),
                              a.config, "--dir", a.dir, "--json"], capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    size = int(rows[0]["bytes"])
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    target = str(Path(a.dir) / "dd.bin")
    count = max(1, size // (8 << 20))
    write = dd(["if=/dev/zero", f"of={target}", "bs=8M", f"count={count}", "conv=fdatasync"])
    cold = drop_caches()
    read = dd([f"if={target}", "of=/dev/null", "bs=8M"])
    os.remove(target)

    print(f"\nCheckpoint throughput, {Path(a.config).name}: {size / 1e9:.2f} GB of weights + AdamW moments; "
          f"{os.cpu_count()} cores; disk (dd, same run): write {write:.2f} GB/s (fdatasync), read {read:.2f} GB/s"
          f" ({'page cache dropped' if cold else 'page cache NOT dropped: not permitted'})\n")
    print(f"{'ranks':>5} | {'save GB/s':>9} {'of dd':>6} | {'load GB/s':>9} {'of dd':>6} | {'step s':>6} "
          f"{'async stall':>11} {'of sync save':>12} {'direct':>7} | {'parallel HDF5':>13} {'of dd':>6}")
    for r in rows:
        print(f"{r['ranks']:>5} | {r['save_gbps']:>9.2f} {r['save_gbps'] / write:>6.0%} | {r['load_gbps']:>9.2f} "
              f"{r['load_gbps'] / read:>6.0%} | {r['step_seconds']:>6.2f} {r['async_stall_seconds']:>9.3f} s "
              f"{r['async_stall_fraction']:>12.1%} {r['async_direct_stall_seconds']:>5.3f} s | "
              f"{r['parallel_hdf5_gbps']:>11.2f}   {r['parallel_hdf5_gbps'] / write:>6.0%}")
    print("\nsave: synchronous (stage, write, fsync, commit); load: page cache dropped first; async stall: how much "
          "longer a training step takes with an asynchronous save in flight than without (median of two each), against "
          "the synchronous save's time; direct: the save call plus the wait before the next optimizer update; "
          "parallel HDF5: the same bytes into one shared file with collective MPI-IO writes and an fsync.")


if __name__ == "__main__":
    main()
