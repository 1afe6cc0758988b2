#!/bin/bash
# A relocatable bundle of Switchyard binaries for machines without the Debian
# packages (a GPU node with only CUDA, for example): executables in bin/,
# shared objects named on the command line (the CUDA module) and every shared
# library any of them needs, except CUDA's own (the node's driver and toolkit
# provide those) and the C library's core, in lib/; and env.sh, which puts
# lib/ first on LD_LIBRARY_PATH.
#
#   cluster/bundle.sh [--mpi] OUT FILE...
#     FILE   an executable (-> OUT/bin) or a shared object *.so (-> OUT/lib:
#            build/lib/libswitchyard_cuda.so goes beside the tools as they
#            expect it, bin/../lib)
#     --mpi  also Open MPI's run-time for one process without mpirun (a
#            singleton: moe-train on one GPU): its components with their
#            libraries and its help texts under OUT/mpi/, laid out as under
#            its prefix; env.sh sets OPAL_PREFIX to it and
#            OMPI_MCA_ess_singleton_isolated=1 (no orted is started, none is
#            carried). mpirun itself is not bundled.
#   (on the node)  source OUT/env.sh && OUT/bin/moe-train ...
#
# Exit 2 on bad arguments, 1 if a library or Open MPI's layout is not found.
set -euo pipefail
mpi=0
if [ "${1:-}" = "--mpi" ]; then mpi=1; shift; fi
out=${1:?usage: cluster/bundle.sh [--mpi] OUT FILE...}
shift
[ $# -gt 0 ] || { echo "cluster/bundle.sh: name at least one executable or shared object" >&2; exit 2; }
for b in "$@"; do
  case "$b" in
    *.so|*.so.*) [ -f "$b" ] || { echo "cluster/bundle.sh: $b is not a file" >&2; exit 2; } ;;
    *) [ -f "$b" ] && [ -x "$b" ] || { echo "cluster/bundle.sh: $b is not an executable file" >&2; exit 2; } ;;
  esac
done
mkdir -p "$out/bin" "$out/lib"

# The libraries one file needs (ldd lines "name => /path (addr)"), without
# CUDA's and glibc's core, copied into lib/; a library ldd cannot find fails.
copy_deps() {
  local f=$1 missing
  ldd "$f" > /dev/null 2>&1 || { echo "cluster/bundle.sh: ldd cannot read $f (not a dynamic ELF file?)" >&2; return 1; }
  missing=$(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 == "not" {print $1}')
  case "$f" in */mpi/*) missing=$(echo "$missing" | grep -v -E '^(libcuda|libcudart|libnvidia|libcublas)' || true) ;; esac
  if [ -n "$missing" ]; then
    echo "cluster/bundle.sh: $f needs libraries not found here: $(echo $missing)" >&2
    return 1
  fi
  ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libcuda.so*|libcudart.so*|libcublas*.so*|libnccl.so*|libnvrtc*.so*|libcufft*.so*|libcurand*.so*) ;;
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*) ;;
      *) [ -e "$out/lib/$(basename "$lib")" ] || cp -L "$lib" "$out/lib/" ;;
    esac
  done
}

for b in "$@"; do
  case "$b" in
    *.so|*.so.*) cp -L "$b" "$out/lib/" ;;
    *) cp -L "$b" "$out/bin/" ;;
  esac
  copy_deps "$b"
done

if [ $mpi = 1 ]; then
  command -v ompi_info >/dev/null || { echo "cluster/bundle.sh: --mpi needs Open MPI (ompi_info not found)" >&2; exit 1; }
  path() { ompi_info --path "$1" --parsable 2>/dev/null | sed -n "s/^path:$1://p"; }
  prefix=$(path prefix); pkglib=$(path pkglibdir); pkgdata=$(path pkgdatadir)
  [ -n "$prefix" ] && [ -d "$pkglib" ] || { echo "cluster/bundle.sh: Open MPI's components not found (ompi_info --path pkglibdir)" >&2; exit 1; }
  case "$pkglib" in "$prefix"/*) ;; *) echo "cluster/bundle.sh: $pkglib is not under Open MPI's prefix $prefix: it cannot be relocated" >&2; exit 1 ;; esac
  mkdir -p "$out/mpi${pkglib#"$prefix"}"
  # Every component, and every library a component needs (transports this
  # node may lack load but find no device, as they would with the packages).
  cp -L "$pkglib"/*.so "$out/mpi${pkglib#"$prefix"}/"
  for c in "$out/mpi${pkglib#"$prefix"}"/*.so; do copy_deps "$c"; done
  if [ -n "$pkgdata" ] && [ -d "$pkgdata" ]; then  # help texts: Open MPI's own error messages
    mkdir -p "$out/mpi${pkgdata#"$prefix"}"
    cp -L "$pkgdata"/help-*.txt "$out/mpi${pkgdata#"$prefix"}/" 2>/dev/null || true
  fi
fi

{
  echo '# source this: the bundle'"'"'s libraries first, CUDA'"'"'s from the node'
  echo 'here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)'
  echo 'export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"'
  if [ $mpi = 1 ]; then
    echo '# Open MPI from the bundle, one process without mpirun (no orted is carried)'
    echo 'export OPAL_PREFIX="$here/mpi" OMPI_MCA_ess_singleton_isolated=1'
  fi
} > "$out/env.sh"
du -sh "$out" | awk -v n="$#" -v m="$([ $mpi = 1 ] && echo ' + Open MPI')" '{print "bundle " $2 ": " n " files" m ", " $1}'
