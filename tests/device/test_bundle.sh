#!/bin/bash
# cluster/bundle.sh --mpi on a machine that lacks the packages: the bundle
# (moe-train, the CUDA module, their libraries and Open MPI's run-time) runs
# inside a mount namespace where every library the bundle carries is hidden
# from its system location (an empty file there: a fall-back to it fails to
# load), and Open MPI's components, help texts and configuration directories
# and OpenBLAS's directory are empty. There:
#   1. moe-train trains 3 steps of tiny on the emulated device (run.device =
#      cuda, SY_EMULATE_CUDA=guarded) and its losses equal the build's own
#      moe-train's on the CPU bit for bit;
#   2. without the emulation run.device = cuda loads the bundle's CUDA module
#      (found beside the tools as bin/../lib) and, with no GPU here, exits 2
#      naming it and the reason;
#   3. without OPAL_PREFIX (Open MPI looking for its components where the
#      packages put them) MPI_Init fails: the relocation is what makes it run.
# Needs root (unshare -m); skips (77) otherwise.
#
# usage: test_bundle.sh BIN_DIR LIB_DIR WORK_DIR
set -uo pipefail
bin=$1 lib=$2 work=$3
[ "$(id -u)" = 0 ] && command -v unshare >/dev/null || { echo "skipped: needs root and unshare"; exit 77; }
command -v ompi_info >/dev/null || { echo "skipped: no Open MPI here to bundle"; exit 77; }
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

files=("$bin/moe-train")
[ -f "$lib/libswitchyard_cuda.so" ] && files+=("$lib/libswitchyard_cuda.so")
"$root/cluster/bundle.sh" --mpi "$work/b" "${files[@]}" || fail "bundle.sh exited $?"
[ -f "$work/b/mpi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_ess_singleton.so" ] || \
  [ -n "$(find "$work/b/mpi" -name 'mca_ess_singleton.so')" ] || fail "no Open MPI components in the bundle"

# The namespace's setup, then the command, with the bundle's env.sh sourced.
cat > "$work/hidden.sh" <<'EOF'
#!/bin/bash
set -e
b=$1; shift
mount --make-rprivate /
for f in "$b"/lib/*; do
  n=$(basename "$f")
  for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do
    if [ -e "$d/$n" ]; then mount --bind /dev/null "$(readlink -f "$d/$n")"; fi
  done
done
for d in /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/x86_64-linux-gnu/openmpi /usr/share/openmpi \
         /etc/openmpi /usr/lib/x86_64-linux-gnu/pmix2; do
  if [ -d "$d" ]; then mount -t tmpfs none "$d"; fi
done
source "$b/env.sh"
exec "$@"
EOF
chmod +x "$work/hidden.sh"
hidden() { unshare -m "$work/hidden.sh" "$work/b" "$@"; }

sets=(--set train.steps=3 --set train.val_every=0 --set train.threads=1 --set model.seq_len=32
      --set train.global_batch=2 --set checkpoint.interval=0)
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }

# 1. Trains on the (emulated) device from the bundle alone.
OMP_NUM_THREADS=1 "$bin/moe-train" "${sets[@]}" --set run.dir="$work/ref" > "$work/ref.log" 2>&1 ||
  fail "the build's moe-train failed: $(tail -3 "$work/ref.log")"
SY_EMULATE_CUDA=guarded OMP_NUM_THREADS=1 hidden "$work/b/bin/moe-train" "${sets[@]}" --set run.device=cuda \
  --set run.dir="$work/dev" > "$work/dev.log" 2>&1 || fail "the bundled moe-train failed: $(tail -5 "$work/dev.log")"
[ "$(losses "$work/ref")" = "$(losses "$work/dev")" ] && [ -n "$(losses "$work/ref")" ] ||
  fail "losses differ: $(losses "$work/ref" | tr '\n' ' ') vs $(losses "$work/dev" | tr '\n' ' ')"
echo "1. bundled moe-train on the emulated device: $(losses "$work/dev" | wc -l) losses equal the build's"

# 2. The bundle's CUDA module, loaded by the bundled tool.
if [ ! -f "$work/b/lib/libswitchyard_cuda.so" ]; then
  echo "2. skipped: this build has no CUDA module (nvcc not found)"
else
  hidden "$work/b/bin/moe-train" "${sets[@]}" --set run.device=cuda --set run.dir="$work/gpu" > "$work/gpu.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "2. a GPU is here: the bundled moe-train trained on it"
  else
    [ $rc -eq 2 ] || fail "run.device = cuda without a GPU: exit $rc, expected 2: $(tail -3 "$work/gpu.log")"
    grep -q "device 'cuda' is not available: $work/b/lib/libswitchyard_cuda.so: " "$work/gpu.log" ||
      fail "the error does not name the bundle's module: $(tail -3 "$work/gpu.log")"
    echo "2. $(grep -o "device 'cuda' is not available.*" "$work/gpu.log" | head -1)"
  fi
fi

# 3. Without OPAL_PREFIX Open MPI finds no components: the bundle's are the ones used.
OMP_NUM_THREADS=1 hidden env -u OPAL_PREFIX "$work/b/bin/moe-train" "${sets[@]}" --set run.dir="$work/noprefix" \
  > "$work/noprefix.log" 2>&1 && fail "moe-train ran without OPAL_PREFIX: Open MPI's system files were not hidden"
grep -q -E "MPI_INIT|MPI_Init|opal_init|orte_init|ompi_mpi_init" "$work/noprefix.log" ||
  fail "without OPAL_PREFIX moe-train failed, but not in MPI_Init: $(tail -3 "$work/noprefix.log")"
echo "3. without OPAL_PREFIX: MPI_Init fails, as it must with Open MPI's directories empty"
rm -rf "$work/b"  # 84 MB
echo "ok"
