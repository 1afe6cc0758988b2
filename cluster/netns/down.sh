#!/bin/bash
# Removes the simulated nodes up.sh made for one prefix: kills what still
# runs inside its namespaces, deletes the namespaces (their veths go with
# them), the bridge and the state directory. Only names up.sh makes
# (PREFIXn<digits>, PREFIXh<digits>, PREFIXbr) are touched; running it again,
# or for a prefix with nothing up, does nothing and succeeds.
#
# usage: down.sh [--prefix P] [--state DIR]   (or PREFIX, STATE; defaults as up.sh's)
set -uo pipefail
PREFIX=${PREFIX:-syn} STATE=${STATE:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
    --state) STATE=${2:?--state needs a value}; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "down.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,9}$ ]] || { echo "down.sh: bad --prefix '$PREFIX'" >&2; exit 2; }
STATE=${STATE:-/run/switchyard-netns/$PREFIX}
[ "$(id -u)" = 0 ] || { echo "down.sh: needs root" >&2; exit 2; }

for n in $(ip netns list | awk '{print $1}' | grep -E "^${PREFIX}n[0-9]+$"); do
  # Processes left inside (ranks, orted) would keep the namespace alive.
  pids=$(ip netns pids "$n" 2>/dev/null)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  ip netns del "$n" 2>/dev/null || true
done
for l in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^${PREFIX}(h[0-9]+|br)$"); do
  ip link del "$l" 2>/dev/null || true
done
# The state directory only if up.sh wrote it (it names the prefix).
if [ -f "$STATE/cluster" ] && [ "$(awk '{print $1}' "$STATE/cluster")" = "$PREFIX" ]; then
  rm -rf "$STATE"
fi
exit 0
