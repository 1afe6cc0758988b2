#!/bin/bash
# Stands up N simulated nodes on this machine: one network namespace per
# node, each with a veth into a bridge, with a bandwidth cap and a one-way
# delay on every link (tc), and writes a state directory that moe-launch
# and mpirun use to start ranks inside the nodes.
#
# usage: up.sh [--nodes N] [--slots S] [--prefix P] [--subnet A.B.C.0/24]
#              [--rate RATE] [--latency DELAY] [--state DIR]
# (or the environment: NODES, SLOTS, PREFIX, SUBNET, RATE, LATENCY, STATE)
#
# Defaults and why:
#   NODES=2, SLOTS=2     two nodes of two ranks: the smallest cluster where
#                        a layout can put some groups inside a node and some
#                        across nodes.
#   PREFIX=syn           every name this script makes starts with it: the
#                        namespaces PREFIXn1.., the bridge PREFIXbr, the
#                        host-side veths PREFIXh1.. (a node's own end is eth0).
#                        down.sh removes exactly these.
#   SUBNET=10.77.0.0/24  the bridge gets .1 (mpirun's end), node i gets .(10+i).
#   RATE=5gbit           below what two cores push through a veth and a
#                        bridge (about 10-20 Gbit/s of TCP here), so the cap,
#                        not the CPU, sets the inter-node bandwidth, and far
#                        below the ranks' shared memory inside a node: the same
#                        kind of gap as between NVLink and InfiniBand.
#   LATENCY=50us         one-way delay added on the way into every node
#                        (netem); above the ~10-20 us the software path itself
#                        costs, so the figure is what sets a message's latency,
#                        and in the range of TCP over a data-center network.
#                        0 adds none. A kernel without netem (CONFIG_NET_SCH_NETEM,
#                        as on this project's build machine) cannot add a
#                        delay: up.sh says so, records "delay none" in
#                        STATE/cluster and shapes the rate alone.
# The shaping sits on each host-side veth (a tbf rate cap, under a netem
# delay when there is one): it acts on traffic into the node, so every
# node-to-node packet crosses exactly one shaped link (the receiver's), and
# mpirun's control traffic too.
#
# The state directory (default /run/switchyard-netns/PREFIX) holds:
#   hostfile     one line per node: its address and slots (for --hostfile)
#   nodes        address -> namespace name, read by the agent
#   agent        OpenMPI's rsh agent: runs a command inside the node's
#                namespace with the node's own hostname (private UTS) and its
#                own /dev/shm (private tmpfs; without them OpenMPI's shared-
#                memory transport mixes the nodes up)
#   mpirun.env   OMPI_MCA_* lines (KEY=VALUE; `set -a; . mpirun.env` exports
#                them) that make any mpirun, and so moe-launch, use the agent
#   mpirun.args  the same as mpirun options, one per line
# Needs root (ip netns, tc). Refuses to run if any of its names exist; on a
# failure it removes what it made.
set -euo pipefail

NODES=${NODES:-2} SLOTS=${SLOTS:-2} PREFIX=${PREFIX:-syn} SUBNET=${SUBNET:-10.77.0.0/24}
RATE=${RATE:-5gbit} LATENCY=${LATENCY:-50us} STATE=${STATE:-}
die() { echo "up.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=${2:?--nodes needs a value}; shift 2 ;;
    --slots) SLOTS=${2:?--slots needs a value}; shift 2 ;;
    --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
    --subnet) SUBNET=${2:?--subnet needs a value}; shift 2 ;;
    --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
    --latency) LATENCY=${2:?--latency needs a value}; shift 2 ;;
    --state) STATE=${2:?--state needs a value}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$NODES" =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] && [ "$NODES" -le 99 ] || die "--nodes must be 1 to 99, got '$NODES'"
[[ "$SLOTS" =~ ^[0-9]+$ ]] && [ "$SLOTS" -ge 1 ] || die "--slots must be a positive integer, got '$SLOTS'"
# Interface names are at most 15 characters: PREFIX + "h99".
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,9}$ ]] || die "--prefix must be a lowercase letter and up to 9 letters/digits, got '$PREFIX'"
[[ "$SUBNET" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.0/24$ ]] || die "--subnet must be A.B.C.0/24, got '$SUBNET'"
NET=${SUBNET%.0/24}
STATE=${STATE:-/run/switchyard-netns/$PREFIX}
[ "$(id -u)" = 0 ] || die "needs root (ip netns, tc)"
command -v ip >/dev/null && command -v tc >/dev/null && command -v unshare >/dev/null ||
  die "needs ip, tc (iproute2) and unshare (util-linux)"

BR=${PREFIX}br
ns() { echo "${PREFIX}n$1"; }
hv() { echo "${PREFIX}h$1"; }
for i in $(seq 1 "$NODES"); do
  ip netns list | awk '{print $1}' | grep -qx "$(ns "$i")" && die "namespace $(ns "$i") exists: run down.sh --prefix $PREFIX first"
  ip link show "$(hv "$i")" >/dev/null 2>&1 && die "link $(hv "$i") exists: run down.sh --prefix $PREFIX first"
done
ip link show "$BR" >/dev/null 2>&1 && die "bridge $BR exists: run down.sh --prefix $PREFIX first"
[ -e "$STATE" ] && die "state directory $STATE exists: run down.sh --prefix $PREFIX --state $STATE first"
if ip -o -4 addr show | grep -q " $NET\.[0-9]*/"; then die "subnet $SUBNET is in use here (ip -4 addr)"; fi

made_ns=() made_br=0 made_state=0
cleanup() {
  for n in "${made_ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  [ "$made_br" = 1 ] && ip link del "$BR" 2>/dev/null || true
  [ "$made_state" = 1 ] && rm -rf "$STATE" || true
}
trap 'echo "up.sh: failed; removing what it made" >&2; cleanup' ERR

DELAY=$LATENCY
[[ "$LATENCY" =~ ^0+(us|ms|s)?$ ]] && DELAY=none

mkdir -p "$STATE"; made_state=1
ip link add "$BR" type bridge
made_br=1
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
: > "$STATE/hostfile"; : > "$STATE/nodes"
for i in $(seq 1 "$NODES"); do
  n=$(ns "$i") h=$(hv "$i") addr="$NET.$((10 + i))"
  ip netns add "$n"; made_ns+=("$n")
  ip link add "$h" type veth peer name "${PREFIX}p$i"
  ip link set "${PREFIX}p$i" netns "$n"
  ip -n "$n" link set "${PREFIX}p$i" name eth0
  ip -n "$n" addr add "$addr/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  ip link set "$h" master "$BR"
  ip link set "$h" up
  # tbf: burst 1 MiB holds a few 64 KiB TSO segments (a smaller bucket
  # than one segment would stall the link); latency 20 ms bounds the queue.
  # A kernel without netem refuses the first one: warn once, go on without.
  if [ "$DELAY" != none ] && ! tc qdisc add dev "$h" root handle 1: netem delay "$DELAY" limit 10000 2>/dev/null; then
    echo "up.sh: warning: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): no delay added, only the $RATE rate cap" >&2
    DELAY=none
  fi
  if [ "$DELAY" = none ]; then
    tc qdisc add dev "$h" root handle 1: tbf rate "$RATE" burst 1mb latency 20ms
  else
    tc qdisc add dev "$h" parent 1:1 handle 2: tbf rate "$RATE" burst 1mb latency 20ms
  fi
  echo "$addr slots=$SLOTS" >> "$STATE/hostfile"
  echo "$addr $n" >> "$STATE/nodes"
done

cat > "$STATE/agent" <<AGENT
#!/bin/bash
# OpenMPI rsh agent for the nodes of $STATE (written by up.sh):
# agent HOST COMMAND... runs COMMAND inside HOST's namespace, with HOST's
# node name as hostname and a private /dev/shm.
host=\$1; shift
n=\$(awk -v h="\$host" '\$1 == h || \$2 == h {print \$2; exit}' "$STATE/nodes")
[ -n "\$n" ] || { echo "agent: \$host is not a node of $STATE/nodes" >&2; exit 255; }
exec ip netns exec "\$n" unshare --uts --mount --propagation private \\
  bash -c 'hostname "\$0" && mount -t tmpfs -o size=50% tmpfs /dev/shm && eval "\$*"' "\$n" "\$@"
AGENT
chmod +x "$STATE/agent"

cat > "$STATE/mpirun.env" <<ENV
OMPI_MCA_plm_rsh_agent=$STATE/agent
OMPI_MCA_plm_rsh_no_tree_spawn=1
OMPI_MCA_btl=tcp,vader,self
OMPI_MCA_oob_tcp_if_include=$SUBNET
OMPI_MCA_btl_tcp_if_include=$SUBNET
ENV
cat > "$STATE/mpirun.args" <<ARGS
--mca
plm_rsh_agent
$STATE/agent
--mca
plm_rsh_no_tree_spawn
1
--mca
btl
tcp,vader,self
--mca
oob_tcp_if_include
$SUBNET
--mca
btl_tcp_if_include
$SUBNET
ARGS
echo "$PREFIX $NODES $SUBNET rate $RATE delay $DELAY" > "$STATE/cluster"
trap - ERR
echo "up.sh: $NODES nodes ($(ns 1)..$(ns "$NODES"), $NET.11..$NET.$((10 + NODES)), $SLOTS slots each) on bridge $BR, rate $RATE and delay $DELAY into each node"
echo "up.sh: state in $STATE (hostfile, agent, mpirun.env, mpirun.args)"
