#!/bin/bash
# Stands up a real one-node Slurm cluster on this machine from Debian's
# slurm-wlm and munge: munged, slurmctld and slurmd, with all state, spool,
# logs and the config in DIR (default /tmp/sy-slurm), and more CPUs declared
# than the machine has (SlurmdParameters=config_overrides), so multi-rank
# jobs fit on a small box. Prints the line to export SLURM_CONF.
#   cluster/local-slurm/up.sh [DIR] [CPUS]      tear down: cluster/local-slurm/down.sh [DIR]
set -euo pipefail
DIR=$(realpath -m "${1:-/tmp/sy-slurm}")
CPUS=${2:-8}
for p in slurmctld slurmd munged sinfo; do
  command -v $p >/dev/null || { echo "up.sh: $p not found: apt-get install slurm-wlm munge" >&2; exit 2; }
done
mkdir -p "$DIR"/{state,spool,log,run}
NODE=$(hostname -s)
CONF="$DIR/slurm.conf"
cat > "$CONF" <<CONF
ClusterName=switchyard
SlurmctldHost=$NODE
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${SY_SLURMCTLD_PORT:-6817}
SlurmdPort=${SY_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$NODE CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
# munge: a key if there is none, and the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey -c -k /etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  munged --force
  sleep 0.5
fi
munge -n | unmunge >/dev/null || { echo "up.sh: munge does not work" >&2; exit 1; }
export SLURM_CONF="$CONF"
slurmctld -f "$CONF"
slurmd -f "$CONF"
for i in $(seq 1 100); do
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case "$state" in
    idle*|mix*|alloc*) break ;;
    down*|drain*|inval*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
case "$state" in
  idle*|mix*|alloc*) ;;
  *) echo "up.sh: node $NODE is '$state' after 20 s; see $DIR/log" >&2; exit 1 ;;
esac
echo "export SLURM_CONF=$CONF"
