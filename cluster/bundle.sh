#!/bin/bash
# A relocatable bundle of Switchyard binaries for machines without the Debian
# packages (a GPU node with only CUDA, for example): the binaries in bin/,
# every shared library they need except CUDA's own (the node's CUDA driver
# and toolkit provide those) and the C library's core, in lib/, and env.sh
# that puts lib/ first on LD_LIBRARY_PATH.
#
#   cluster/bundle.sh OUT build/bin/test_cuda_backend build/bin/test_fp8_cuda ...
#   (on the node)  source OUT/env.sh && OUT/bin/test_cuda_backend
set -euo pipefail
out=${1:?usage: cluster/bundle.sh OUT BINARY...}
shift
[ $# -gt 0 ] || { echo "cluster/bundle.sh: name at least one binary" >&2; exit 2; }
for b in "$@"; do
  [ -f "$b" ] && [ -x "$b" ] || { echo "cluster/bundle.sh: $b is not an executable file" >&2; exit 2; }
done
mkdir -p "$out/bin" "$out/lib"
for b in "$@"; do
  cp -L "$b" "$out/bin/"
  # ldd lines "name => /path (addr)": skip CUDA's libraries and glibc's core.
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libcuda.so*|libcudart.so*|libcublas*.so*|libnccl.so*|libnvrtc*.so*|libcufft*.so*|libcurand*.so*) ;;
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*) ;;
      *) cp -Ln "$lib" "$out/lib/" 2>/dev/null || true ;;
    esac
  done
done
cat > "$out/env.sh" <<'ENV'
# source this: the bundle's libraries first, CUDA's from the node
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ENV
du -sh "$out" | awk -v n="$#" '{print "bundle " $2 ": " n " binaries, " $1}'
