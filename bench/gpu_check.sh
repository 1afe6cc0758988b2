#!/bin/bash
# The GPU proof in one short run. Here (a CPU machine with CUDA's compiler):
#   bench/gpu_check.sh --bundle        builds the gpu tests and bundles them into gpu-bundle/
# On the GPU machine (CUDA only; no MPI, HDF5 or OpenBLAS), with gpu-bundle carried:
#   bench/gpu_check.sh                 runs every gpu test and writes a table to $OUT (or .)
# Prints one line per test program: passed / failed / skipped counts, and the GPU's name.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--bundle" ]; then
  cmake --build "$root/build" --target test_cuda_backend test_fp8_cuda || exit 1
  rm -rf "$root/gpu-bundle"
  "$root/cluster/bundle.sh" "$root/gpu-bundle" "$root/build/bin/test_cuda_backend" "$root/build/bin/test_fp8_cuda"
  exit $?
fi
b="$root/gpu-bundle"
[ -f "$b/env.sh" ] || { echo "gpu_check: no $b (run bench/gpu_check.sh --bundle first and carry gpu-bundle)" >&2; exit 2; }
source "$b/env.sh"
out=${OUT:-.}
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none found}" | tee "$out/gpu_check.txt"
printf '%-20s %7s %7s %8s %8s\n' program passed failed skipped seconds | tee -a "$out/gpu_check.txt"
rc=0
for t in test_cuda_backend test_fp8_cuda; do
  start=$(date +%s.%N)
  "$b/bin/$t" --gtest_output="xml:$out/$t.xml" > "$out/$t.log" 2>&1 || rc=1
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  pass=$(grep -c '^\[       OK \]' "$out/$t.log"); fail=$(grep -c '^\[  FAILED  \] .* ms)$' "$out/$t.log")
  skip=$(grep -c '^\[  SKIPPED \] [A-Za-z]' "$out/$t.log")
  printf '%-20s %7s %7s %8s %8.1f\n' "$t" "$pass" "$fail" "$skip" "$secs" | tee -a "$out/gpu_check.txt"
done
exit $rc
