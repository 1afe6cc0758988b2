#!/bin/sh
# run_reference.sh REFDUMP PYTHON CONFIG OUTDIR: dump a run, check it in PyTorch.
set -e
"$1" "$3" "$4" --steps 10
exec "$2" "$(dirname "$0")/check_reference.py" "$4"
