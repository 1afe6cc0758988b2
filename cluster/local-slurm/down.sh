#!/bin/bash
# Stops the one-node Slurm cluster that up.sh started in DIR and removes DIR.
#   cluster/local-slurm/down.sh [DIR]
set -uo pipefail
DIR=$(realpath -m "${1:-/tmp/sy-slurm}")
export SLURM_CONF="$DIR/slurm.conf"
[ -f "$SLURM_CONF" ] && scancel --user=root >/dev/null 2>&1
for f in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"; do
  [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
done
for i in $(seq 1 50); do
  alive=0
  for f in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
  done
  [ $alive = 0 ] && break
  sleep 0.1
done
rm -rf "$DIR"
