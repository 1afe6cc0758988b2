#!/bin/bash
# Runs a command with the OMPI_MCA_* settings of a cluster up.sh made, so
# that mpirun, and moe-launch through it, start ranks inside its nodes.
#
# usage: with.sh PREFIX|STATE_DIR COMMAND [ARGS...]
#   e.g. with.sh sya build/bin/moe-launch --hostfile /run/switchyard-netns/sya/hostfile
# (the same as `set -a; . STATE/mpirun.env; set +a` in a shell, then COMMAND).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: with.sh PREFIX|STATE_DIR COMMAND [ARGS...]" >&2; exit 2; }
state=$1; shift
[ -d "$state" ] || state=/run/switchyard-netns/$state
[ -f "$state/mpirun.env" ] || { echo "with.sh: no $state/mpirun.env: is the cluster up (up.sh)?" >&2; exit 2; }
set -a
. "$state/mpirun.env"
set +a
exec "$@"
