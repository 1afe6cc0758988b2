#!/usr/bin/env bash
# Switchyard developer entry point. On a fresh Debian 12 machine, as root:
#   ./dev.sh train [moe-launch args]  install what is missing, build, train configs/tiny.toml
#                                     on 4 MPI ranks with expert parallelism (SY_RANKS=n to change),
#                                     supervised by moe-launch (restarts, logs, run report)
#   ./dev.sh test  [ctest args]       install what is missing, build, run every test
#   ./dev.sh deps | build             just those steps
# Idempotent: packages already installed and an up-to-date build are skipped.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
  libfmt-dev libgtest-dev libopenblas-openmp-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  libsentencepiece-dev sentencepiece
  python3 python3-numpy python3-torch python3-h5py
  fortunes-min fortunes
  slurm-wlm munge python3-matplotlib
)

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "dev.sh: installing ${missing[*]}"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

build() {
  if [[ ! -f build/build.ninja ]]; then
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
  fi
  cmake --build build -j "$(nproc)"
}

# mpirun as root, and more ranks than cores, need these (tests use mpiexec).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

cmd=${1:-train}
shift || true
case "$cmd" in
  deps) deps ;;
  build) deps; build ;;
  train) deps; build; exec build/bin/moe-launch --np "${SY_RANKS:-4}" "$@" ;;
  test) deps; build; cd build && exec ctest --output-on-failure -j "$(nproc)" "$@" ;;
  *) echo "usage: $0 train|test|build|deps [args]" >&2; exit 2 ;;
esac
