#!/bin/bash
# The GPU proof of issue 17 in one run (README: "The GPU check").
#
# Here, on a CPU machine with the CUDA toolkit and the full build (build/):
#   tests/gpu/device_check.sh --bundle [--build DIR]
#       builds every gpu test program, sy-bench-gemm-cuda, moe-train and the
#       CUDA module, bundles them with their non-CUDA libraries and Open MPI's
#       run-time (cluster/bundle.sh --mpi) into gpu-bundle/ and compresses
#       that to gpu-bundle.tar.xz, checking that it and the working tree fit
#       the device tool's 64 MiB. Carry gpu-bundle.tar.xz.
# On a GPU machine with only the CUDA toolkit, CMake and Python with PyTorch
# (no MPI, HDF5, OpenBLAS or package registry), from the repository root,
# gpu-bundle.tar.xz (or gpu-bundle/) carried along:
#   tests/gpu/device_check.sh [--out DIR] [--budget SECONDS] [--build-dir DIR] [--small]
#     1. builds bench/gpu (sy-bench-gemm-cuda) alone with CMake and nvcc;
#     2. finds the GPU (sy-bench-gemm-cuda --probe); without one it says so
#        and exits 3, having built what it could;
#     3. runs every gpu test program in the bundle's bin/;
#     4. trains with moe-train from the bundle on the GPU (tests/gpu/train_check.py):
#        losses against the CPU, a GPU checkpoint resumed on the CPU, and
#        configs/moe_1b.toml's tokens/s and MFU in BF16;
#     5. runs sy-bench-gemm-cuda and bench/torch_gemm.py on the same shapes,
#        and bench/torch_moe_step.py (the PyTorch MoE training step, configs/moe_1b.toml);
#     6. prints one summary table (tests/gpu/summarize.py), also in DIR/summary.txt.
# Every step runs under a timeout inside --budget (default 480 s, so the
# whole check ends within 8 minutes). DIR ($OUT, else ./device-check-out)
# receives at most 8 files (what the device tool brings back): summary.txt,
# tests.tsv, tests.log, gemm_cuda.jsonl, gemm_torch.jsonl, moe_step.json,
# train.json and bench.log (the build's, the benchmarks' and the training's logs).
# Exit: 0 every test passed and every GEMM was checked; 1 something failed
# (build, a test, a wrong GEMM, a timeout, a missing bundle); 2 bad
# arguments; 3 no GPU.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NO_GPU=3
limit_mib=64

die_usage() { echo "device_check: $1" >&2; sed -n '2,34p' "${BASH_SOURCE[0]}" >&2; exit 2; }

# ---------------------------------------------------------------- --bundle (here)
if [ "${1:-}" = "--bundle" ]; then
  shift
  build="$root/build"
  while [ $# -gt 0 ]; do
    case "$1" in
      --build) build=${2:?--build needs a directory}; shift 2 ;;
      *) die_usage "unknown argument '$1'" ;;
    esac
  done
  [ -f "$build/CMakeCache.txt" ] || { echo "device_check: $build is not a configured build (cmake -S . -B build first)" >&2; exit 1; }
  # The gpu test programs known today, plus any other program behind a ctest labelled gpu.
  want="test_cuda_backend test_fp8_cuda test_nccl sy-bench-gemm-cuda moe-train switchyard_cuda_module switchyard_nccl_module"
  more=$(ctest --test-dir "$build" -L gpu --show-only=json-v1 2>/dev/null | python3 -c '
import json, os, sys
try:
    tests = json.load(sys.stdin).get("tests", [])
except ValueError:
    tests = []
names = set()
for t in tests:
    for a in t.get("command", []):
        if "/bin/" in a and os.path.basename(a).startswith("test_"):
            names.add(os.path.basename(a))
print(" ".join(sorted(names)))' 2>/dev/null)
  targets=()
  for t in $want $more; do
    case " ${targets[*]} " in *" $t "*) continue ;; esac
    if cmake --build "$build" --target help 2>/dev/null | grep -q "^$t\b\|[ :]$t\b"; then targets+=("$t"); fi
  done
  [ ${#targets[@]} -gt 0 ] || { echo "device_check: no gpu programs in $build (is nvcc found? the CUDA targets build only then)" >&2; exit 1; }
  cmake --build "$build" -j2 --target "${targets[@]}" || { echo "device_check: building ${targets[*]} failed" >&2; exit 1; }
  bins=()
  for t in "${targets[@]}"; do
    case "$t" in
      switchyard_cuda_module) bins+=("$build/lib/libswitchyard_cuda.so") ;;
      switchyard_nccl_module) bins+=("$build/lib/libswitchyard_nccl.so") ;;
      *) bins+=("$build/bin/$t") ;;
    esac
  done
  rm -rf "$root/gpu-bundle" "$root/gpu-bundle.tar.xz"
  "$root/cluster/bundle.sh" --mpi "$root/gpu-bundle" "${bins[@]}" || exit 1
  # Compressed, as it travels (a third of its size: OpenBLAS and the test programs compress well).
  (cd "$root" && tar -cf - gpu-bundle | xz -T0 -6 > gpu-bundle.tar.xz) || { echo "device_check: compressing failed" >&2; exit 1; }
  bundle=$(stat -c %s "$root/gpu-bundle.tar.xz")
  tree=$(cd "$root" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  total=$((bundle + tree))
  printf 'device_check: gpu-bundle.tar.xz %.1f MiB (%s unpacked) + working tree %.1f MiB = %.1f MiB of the %d MiB that travel\n' \
    "$(echo "$bundle / 1048576" | bc -l)" "$(du -sh "$root/gpu-bundle" | cut -f1)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" $limit_mib
  if [ "$total" -gt $((limit_mib * 1048576)) ]; then
    echo "device_check: too large to travel with the working tree; leave programs out of the bundle" >&2
    exit 1
  fi
  # The newest C library symbol the programs need: the GPU machine's glibc must be at least this.
  glibc=$(for f in "$root"/gpu-bundle/bin/* "$root"/gpu-bundle/lib/*; do objdump -T "$f" 2>/dev/null; done |
          grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  echo "device_check: the bundle needs ${glibc:-an unknown} or newer on the GPU machine (ldd --version there)"
  echo "device_check: on the GPU machine, from the repository root, with gpu-bundle.tar.xz carried: tests/gpu/device_check.sh"
  exit 0
fi

# ---------------------------------------------------------------- the check (there)
out=${OUT:-$root/device-check-out}
budget=480
bdir=/tmp/sy-device-check-build
small=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --build-dir) bdir=${2:?--build-dir needs a directory}; shift 2 ;;
    --small) small=1; shift ;;
    -h|--help) sed -n '2,34p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[[ "$budget" =~ ^[0-9]+$ ]] && [ "$budget" -ge 60 ] || die_usage "--budget must be at least 60 seconds (got '$budget')"
mkdir -p "$out" || { echo "device_check: cannot create $out" >&2; exit 2; }
rm -f "$out"/{summary.txt,tests.tsv,tests.log,gemm_cuda.jsonl,gemm_torch.jsonl,bench.log,moe_step.json,train.json}
touch "$out/tests.tsv"

if [ $small = 1 ]; then
  shapes=256x384x512,384x256x1024; group_rows=48,16,80,32; group_n=256; group_k=384; iters=5
else
  shapes=4096x4096x4096,8192x8192x8192,16384x2048x7168; group_rows=2672,1008,2320,1552,2064,3056,1296,2416
  group_n=2048; group_k=7168; iters=20
fi

start=$SECONDS
py=$(command -v python3 || true)
failures=()
steps=()
left() { echo $((budget - (SECONDS - start))); }
# The seconds a step may take: at most $1, leaving $2 for the steps after it (at least 10).
allow() {
  local l=$(( $(left) - $2 ))
  [ $l -gt "$1" ] && l=$1
  [ $l -lt 10 ] && l=10
  echo $l
}
note() { echo "device_check: $*" >&2; }

# 1. Build the CUDA-only benchmark.
bench=""
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
t0=$SECONDS
if [ ! -x "$nvcc" ]; then
  echo "no nvcc (looked in PATH and /usr/local/cuda/bin)" >> "$out/bench.log"
  failures+=("build: no nvcc")
  steps+=("build: no nvcc")
else
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  launch=(); command -v ccache >/dev/null && launch=(-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  t=$(allow 240 320)
  if timeout -k 5 "$t" cmake -S "$root/bench/gpu" -B "$bdir" "${gen[@]}" -DCMAKE_CUDA_COMPILER="$nvcc" "${launch[@]}" \
       >> "$out/bench.log" 2>&1 &&
     timeout -k 5 "$(allow 240 320)" cmake --build "$bdir" -j "$(nproc)" >> "$out/bench.log" 2>&1 &&
     [ -x "$bdir/bin/sy-bench-gemm-cuda" ]; then
    bench="$bdir/bin/sy-bench-gemm-cuda"
    steps+=("build: bench/gpu built in $((SECONDS - t0)) s")
  else
    failures+=("build of bench/gpu failed (bench.log)")
    steps+=("build: FAILED after $((SECONDS - t0)) s (bench.log)")
    tail -5 "$out/bench.log" >&2
    if [ -x "$root/gpu-bundle/bin/sy-bench-gemm-cuda" ]; then
      bench="$root/gpu-bundle/bin/sy-bench-gemm-cuda"
      steps+=("build: using the bundle's sy-bench-gemm-cuda, built on the CPU machine")
    fi
  fi
fi

# 2. The GPU.
gpu=""
if [ -n "$bench" ]; then
  probe=$(timeout -k 5 60 "$bench" --probe 2>&1); prc=$?
  if [ $prc -eq 0 ]; then
    gpu=$(echo "$probe" | grep '^GPU:' | head -1)
  elif [ $prc -eq $NO_GPU ]; then
    why=$(echo "$probe" | tail -1)
  else
    why="sy-bench-gemm-cuda --probe failed (rc $prc): $(echo "$probe" | tail -1)"
  fi
else
  smi=$(timeout 20 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
  if [ -n "$smi" ]; then gpu="GPU: $smi (nvidia-smi; the benchmark did not build)"; else why="nvidia-smi finds no GPU and the benchmark did not build"; fi
fi
# (SY_DEVICE_CHECK_PLUMBING=1: the ctest's way to run the steps below on a
# machine without a GPU, where every one of them must then fail, and say so.)
if [ -z "$gpu" ] && [ "${SY_DEVICE_CHECK_PLUMBING:-0}" = 1 ]; then
  gpu="GPU: none (plumbing test: ${why:-?})"
  failures+=("no GPU (plumbing test)")
fi
if [ -z "$gpu" ]; then
  {
    echo "device_check: no GPU: ${why:-unknown}"
    printf '%s\n' "${steps[@]}"
    echo "Nothing ran on a GPU: no test program, no benchmark."
  } | tee "$out/summary.txt" >&2
  exit $NO_GPU
fi
note "$gpu"

# 3. The gpu test programs from the bundle (gpu-bundle/, else gpu-bundle.tar.xz unpacked under /tmp).
b="$root/gpu-bundle"
if [ ! -f "$b/env.sh" ] && [ -f "$root/gpu-bundle.tar.xz" ]; then
  rm -rf /tmp/sy-gpu-bundle && mkdir -p /tmp/sy-gpu-bundle
  t5=$SECONDS
  if tar -xJf "$root/gpu-bundle.tar.xz" -C /tmp/sy-gpu-bundle 2>> "$out/bench.log" ||
     python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
       "$root/gpu-bundle.tar.xz" /tmp/sy-gpu-bundle 2>> "$out/bench.log"; then
    b=/tmp/sy-gpu-bundle/gpu-bundle
    steps+=("bundle: gpu-bundle.tar.xz unpacked in $((SECONDS - t5)) s")
  else
    failures+=("gpu-bundle.tar.xz does not unpack (bench.log)")
  fi
fi
# NCCL (test_nccl, the NCCL module) is not carried: too large to travel. The
# machine's, else the CUDA toolkit's, else PyTorch's wheel's copy.
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib \
           "$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)"; do
    if [ -n "$d" ] && [ -f "$d/libnccl.so.2" ]; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      steps+=("nccl: libnccl.so.2 from $d")
      break
    fi
  done
fi
if [ -f "$b/env.sh" ]; then
  (
    source "$b/env.sh"
    export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    for p in "$b"/bin/test_*; do
      [ -x "$p" ] || continue
      name=$(basename "$p")
      t1=$SECONDS
      echo "===== $name" >> "$out/tests.log"
      timeout -k 5 "$(allow 150 300)" "$p" >> "$out/tests.log.part" 2>&1; rc=$?
      cat "$out/tests.log.part" >> "$out/tests.log"
      pass=$(grep -c '^\[       OK \]' "$out/tests.log.part")
      fail=$(grep -c '^\[  FAILED  \] .* ms)$' "$out/tests.log.part")
      skip=$(grep -c '^\[  SKIPPED \] .* ms)$' "$out/tests.log.part")
      rm -f "$out/tests.log.part"
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then res="TIMEOUT"
      elif [ $((pass + fail + skip)) -eq 0 ]; then res="DID NOT RUN (rc $rc; tests.log)"
      elif [ $rc -ne 0 ] || [ "$fail" -gt 0 ]; then res="FAILED (rc $rc)"
      elif [ "$pass" -eq 0 ]; then res="ALL SKIPPED on a GPU machine (tests.log says why)"
      else res="ok"; fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$pass" "$fail" "$skip" "$((SECONDS - t1))" "$res" >> "$out/tests.tsv"
    done
  )
  while IFS=$'\t' read -r name _ _ _ _ res; do
    [ "$res" = ok ] || failures+=("$name: $res")
  done < "$out/tests.tsv"
  steps+=("tests: $(wc -l < "$out/tests.tsv") programs from gpu-bundle (this machine: $(ldd --version 2>/dev/null | head -1))")
else
  failures+=("no gpu-bundle carried: the gpu test programs did not run (tests/gpu/device_check.sh --bundle here, carry gpu-bundle.tar.xz)")
  steps+=("tests: none (no gpu-bundle)")
fi

# 4. Switchyard's training on the GPU: moe-train from the bundle (losses against the CPU, a GPU
#    checkpoint resumed on the CPU, configs/moe_1b.toml's tokens/s and MFU in BF16).
if [ -x "$b/bin/moe-train" ]; then
  t6=$SECONDS
  tb=$(allow 200 150)
  echo "===== tests/gpu/train_check.py (budget $tb s)" >> "$out/bench.log"
  targs=(--budget "$tb"); [ "$small" = 1 ] && targs+=(--bench-steps 3)
  timeout -k 5 $((tb + 10)) "${py:-python3}" "$root/tests/gpu/train_check.py" --bundle "$b" --work /tmp/sy-train-check \
    --json "$out/train.json" "${targs[@]}" >> "$out/bench.log" 2>&1; rc=$?
  cat /tmp/sy-train-check/train_check.log >> "$out/bench.log" 2>/dev/null
  steps+=("tests/gpu/train_check.py: rc $rc in $((SECONDS - t6)) s")
  [ $rc -eq 0 ] || failures+=("tests/gpu/train_check.py: rc $rc$([ $rc -eq 124 ] && echo ' (timeout)') (train.json, bench.log)")
else
  failures+=("no moe-train in the bundle: Switchyard's training on the GPU did not run")
  steps+=("train: none (no moe-train in the bundle)")
fi

# 5. The GEMM benchmark.
if [ -n "$bench" ]; then
  t2=$SECONDS
  timeout -k 5 "$(allow 150 100)" "$bench" --shapes "$shapes" --group-rows "$group_rows" --group-n "$group_n" \
    --group-k "$group_k" --iters "$iters" --json "$out/gemm_cuda.jsonl" >> "$out/bench.log" 2>&1; rc=$?
  steps+=("sy-bench-gemm-cuda: rc $rc in $((SECONDS - t2)) s")
  [ $rc -eq 0 ] || failures+=("sy-bench-gemm-cuda: rc $rc$([ $rc -eq 124 ] && echo ' (timeout)') (bench.log)")
else
  failures+=("sy-bench-gemm-cuda: not built")
fi

# 5b. The PyTorch baseline.
t3=$SECONDS
if [ -n "$py" ]; then
  echo "===== bench/torch_gemm.py" >> "$out/bench.log"
  timeout -k 5 "$(allow 150 60)" "$py" "$root/bench/torch_gemm.py" --shapes "$shapes" --group-rows "$group_rows" \
    --group-n "$group_n" --group-k "$group_k" --iters "$iters" --json "$out/gemm_torch.jsonl" >> "$out/bench.log" 2>&1; rc=$?
  steps+=("bench/torch_gemm.py: rc $rc in $((SECONDS - t3)) s")
  [ $rc -eq 0 ] || failures+=("bench/torch_gemm.py: rc $rc$([ $rc -eq 124 ] && echo ' (timeout)') (bench.log)")
else
  failures+=("no python3: no PyTorch baseline")
fi

# 5c. The PyTorch MoE training step (issue 17's 1B model, configs/moe_1b.toml): tokens/s and MFU in BF16,
# beside moe-train's (step 4) in the summary.
if [ -n "$py" ]; then
  t4=$SECONDS
  moe_args=(--steps 10 --warmup 3)
  [ "$small" = 1 ] && moe_args=(--steps 3 --warmup 1 --micro-batch 1)
  echo "===== bench/torch_moe_step.py" >> "$out/bench.log"
  timeout -k 5 "$(allow 150 10)" "$py" "$root/bench/torch_moe_step.py" "$root/configs/moe_1b.toml" "${moe_args[@]}" \
    --json > "$out/moe_step.json" 2>> "$out/bench.log"; rc=$?
  steps+=("bench/torch_moe_step.py: rc $rc in $((SECONDS - t4)) s")
  [ $rc -eq 0 ] || failures+=("bench/torch_moe_step.py: rc $rc$([ $rc -eq 124 ] && echo ' (timeout)') (bench.log)")
fi

# 6. The summary.
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "?")
verdict="PASSED"
[ ${#failures[@]} -eq 0 ] || verdict="FAILED: $(printf '%s; ' "${failures[@]}")"
hdr=(--header "Switchyard device check ($rev), $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - start)) s of a $budget s budget"
     --header "$gpu")
for s in "${steps[@]}"; do hdr+=(--header "  $s"); done
{
  "${py:-python3}" "$root/tests/gpu/summarize.py" --tests "$out/tests.tsv" --cuda "$out/gemm_cuda.jsonl" \
    --torch "$out/gemm_torch.jsonl" --moe-step "$out/moe_step.json" --train "$out/train.json" "${hdr[@]}" 2>&1 ||
    cat "$out/tests.tsv"
  echo
  echo "device_check: $verdict"
} | tee "$out/summary.txt"
[ ${#failures[@]} -eq 0 ] && exit 0 || exit 1
