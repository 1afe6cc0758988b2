#!/bin/sh
# run_reference.sh REFDUMP PYTHON CONFIG OUTDIR: dump a run, check it in PyTorch.
# train.threads = 1: the dump is the same on any machine with the same
# OpenBLAS kernels (its thread count would otherwise follow the core count).
set -e
"$1" "$3" "$4" --steps 10 --set train.threads=1
exec "$2" "$(dirname "$0")/check_reference.py" "$4"
