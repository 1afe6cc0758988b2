#!/usr/bin/env bash
# Expert/data parallelism figures, in one run:
#  1. sy-bench-dispatch on 2 and 4 ranks (dispatch + combine against a raw
#     MPI_Alltoallv of the same rows; MoE layer plain / overlapped / shared memory);
#  2. training tokens/s of configs/small.toml on 1, 2 and 4 ranks (default
#     layout: dp = ranks, ep = gcd(dp, experts), shared-memory dispatch).
# Usage: bench/parallel_throughput.sh [build-dir]   (ranks beyond the cores are oversubscribed)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}/bin
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1
echo "## dispatch + combine ($(nproc) cores)"
for np in 2 4; do mpirun -np "$np" "$BIN/sy-bench-dispatch" --iters 5 --warmup 1; done
echo
echo "## training tokens/s, configs/small.toml"
for np in 1 2 4; do mpirun -np "$np" --bind-to none "$BIN/sy-bench-train" configs/small.toml --steps 4 --warmup 1; done
