#!/usr/bin/env bash
# Expert-parallel dispatch and training across two simulated nodes, in one run:
#  1. stands up 2 nodes x 2 ranks (cluster/netns/up.sh: namespaces on a bridge,
#     RATE into each node) and tears them down on exit, also on failure;
#  2. sy-bench-dispatch across the 4 ranks (2 per node) for 4096 tokens per
#     rank, C in DIMS, E in EXPERTS, K in TOPK: dispatch + combine per transport
#     against a raw MPI_Alltoallv of the same rows in the same processes;
#  3. a summary table, nccl-tests style: per shape and transport the time,
#     algbw, busbw, the inter-node link's use as a share of RATE, and the
#     ratio against raw (targets: dispatch + combine >= 0.9x raw, link use
#     >= 80% of RATE on large messages);
#  4. training tokens/s of configs/small.toml (parallel.ep = 2) on 1 node x 4
#     ranks against 2 nodes x 2 ranks, same ranks, same threads per rank.
# Usage: bench/multinode_dispatch.sh [build-dir]
# Environment (defaults): PREFIX (syb), SUBNET (10.77.2.0/24), RATE (5gbit),
#   LATENCY (50us), DIMS (1024,2048), EXPERTS (16,64), TOPK ("2 8"),
#   TOKENS (4096), ITERS (5), TRANSPORTS ("mpi hier hier+fp8": the column groups of
#   sy-bench-dispatch to summarise; a transport's group is found by its name
#   in the table header, so a new transport's column needs only its name
#   here; "shm" is "-" across nodes; hier+fp8 is the hierarchical transport
#   with parallel.dispatch_dtype = fp8, its bytes counted as the FP32 rows'),
#   TRAIN (1: also the training comparison; 0: skip), STEPS (3),
#   TIMEOUT (900 s per mpirun).
# Needs root (network namespaces). The host's cores are shared by all
# simulated nodes: tokens/s across 4 ranks is CPU-bound, and both training
# runs use the same ranks and threads so that they compare like with like.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(cd "${1:-build}/bin" && pwd)
PREFIX=${PREFIX:-syb} SUBNET=${SUBNET:-10.77.2.0/24} RATE=${RATE:-5gbit} LATENCY=${LATENCY:-50us}
DIMS=${DIMS:-1024,2048} EXPERTS=${EXPERTS:-16,64} TOPK=${TOPK:-2 8} TOKENS=${TOKENS:-4096} ITERS=${ITERS:-5}
TRANSPORTS=${TRANSPORTS:-mpi hier hier+fp8} TRAIN=${TRAIN:-1} STEPS=${STEPS:-3} TIMEOUT=${TIMEOUT:-900}
STATE=${STATE:-/run/switchyard-netns/$PREFIX}
OUT=$(mktemp -d /tmp/multinode_dispatch.XXXXXX)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

teardown() { cluster/netns/down.sh --prefix "$PREFIX" --state "$STATE" >/dev/null 2>&1 || true; rm -rf "$OUT"; }
trap teardown EXIT
trap 'exit 130' INT TERM
cluster/netns/up.sh --nodes 2 --slots 2 --prefix "$PREFIX" --subnet "$SUBNET" --rate "$RATE" --latency "$LATENCY" \
  --state "$STATE"
mapfile -t MCA < "$STATE/mpirun.args"
# mpirun.env carries the same settings for moe-launch; here they go as options.
CLUSTER=(timeout "$TIMEOUT" mpirun --hostfile "$STATE/hostfile" "${MCA[@]}" --bind-to none)
read -r _ _ _ _ rate _ delay < "$STATE/cluster"
echo "## link: $rate into each node (tbf), added one-way delay: $delay; 2 nodes x 2 ranks; $(nproc) cores shared by all"

# Drops at the rate cap and TCP retransmissions per node, since up.sh:
# a shaper that drops would show here as lost time, not in the bytes.
link_stats() {
  local i=1 ns
  while read -r _ ns; do
    printf '# node %s: %s; %s\n' "$ns" \
      "$(tc -s qdisc show dev "${PREFIX}h$i" | awk '/Sent/ {d = $7; sub(",", "", d); printf "into it %.0f MB, %s dropped", $2 / 1e6, d; exit}')" \
      "$(ip netns exec "$ns" nstat -az TcpOutSegs TcpRetransSegs TcpExtTCPTimeouts TcpExtTCPDSACKRecvSegs |
        awk 'NR>1 {printf "%s %s ", $1, $2}')"
    i=$((i + 1))
  done < "$STATE/nodes"
}
echo "## sy-bench-dispatch across the nodes ($TOKENS tokens per rank)"
for k in $TOPK; do
  "${CLUSTER[@]}" -np 4 "$BIN/sy-bench-dispatch" --tokens "$TOKENS" --dims "$DIMS" --experts "$EXPERTS" --top-k "$k" \
    --iters "$ITERS" --warmup 1 --no-layer | tee "$OUT/dispatch_k$k.txt"
done

link_stats

echo
echo "## summary: dispatch + combine per transport against raw MPI_Alltoallv of the same rows"
/usr/bin/python3 - "$rate" "$TRANSPORTS" "$OUT"/dispatch_k*.txt <<'PY'
import re, sys
rate, transports, files = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
m = re.fullmatch(r"([0-9.]+)([kmg]?)bit", rate.lower())
link = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)] / 8 / 1e9  # GB/s
nodes, per_node = 2, 2
P = nodes * per_node
# Rows sent to ranks on the other node, for routing spread evenly over the
# experts: (P - per_node) / P of each rank's rows; a node's link carries
# per_node ranks' worth of them (there and back counted in the bytes).
remote = (P - per_node) / P
print(f"# link {link:.3f} GB/s per direction; algbw = bytes per rank / time; busbw = algbw * (P-1)/P (nccl-tests);")
print(f"# link% = bytes crossing into one node / time / link rate (assumes routing spread evenly: {remote:.0%} of rows remote);")
print("# ratio = raw time / transport time (>= 0.9 is the target)")
print(f"#{'K':>2} {'C':>5} {'E':>4} {'MB/rank':>8} | {'path':>8} {'ms':>8} {'algbw':>6} {'busbw':>6} {'link%':>6} {'ratio':>5}")
for f in files:
    K = re.search(r"_k(\d+)\.txt$", f).group(1)
    header, groups = None, None
    for line in open(f):
        if line.startswith("#") and "MB/rank" in line:
            groups = [g.split() for g in line.lstrip("#").split("|")]
            continue
        if line.startswith("#") or not line.strip() or groups is None:
            continue
        cells = [g.split() for g in line.split("|")]
        C, E, mb = cells[0][0], cells[0][1], float(cells[0][2])
        by_name = {g[0]: c[0] for g, c in zip(groups, cells) if g and c}
        raw = float(by_name["raw"])
        bytes_rank = 2 * mb * 1e6
        for name in ["raw"] + transports:
            cell = by_name.get(name)
            if cell is None or cell == "-":
                continue  # not measured here (shm across nodes)
            t = float(cell) / 1e3
            alg = bytes_rank / t / 1e9
            cross = per_node * bytes_rank * remote / t / 1e9
            print(f" {K:>2} {C:>5} {E:>4} {mb:>8.1f} | {name:>8} {t*1e3:>8.1f} {alg:>6.2f} {alg*(P-1)/P:>6.2f} "
                  f"{100*cross/link:>5.0f}% {raw/1e3/t:>5.2f}")
PY

# The host's CPU seconds (all of it: other work on the host shows too) in
# user code, the kernel, and soft interrupts (where TCP over the veths and
# the bridge runs) while a command runs.
cpu_use() {
  local a b
  read -r -a a < /proc/stat
  "$@"
  read -r -a b < /proc/stat
  local hz; hz=$(getconf CLK_TCK)
  awk -v hz="$hz" -v u="$(( b[1] + b[2] - a[1] - a[2] ))" -v s="$(( b[3] - a[3] ))" -v q="$(( b[7] - a[7] ))" \
    -v i="$(( b[4] - a[4] ))" 'BEGIN {printf "  host CPU: user %.0f s, kernel %.0f s, softirq %.0f s, idle %.0f s\n",
    u / hz, s / hz, q / hz, i / hz}'
}

if [ "$TRAIN" = 1 ]; then
  echo
  echo "## training tokens/s, configs/small.toml, parallel.ep = 2, 4 ranks, same threads per rank"
  T=(--bind-to none "$BIN/sy-bench-train" configs/small.toml --set parallel.ep=2 --steps "$STEPS" --warmup 1)
  echo "# 1 node x 4 ranks (expert-parallel groups in shared memory)"
  cpu_use timeout "$TIMEOUT" mpirun -np 4 --mca mpi_yield_when_idle 1 "${T[@]}"
  echo "# 2 nodes x 2 ranks, --map-by slot (expert-parallel groups inside a node, expert-data-parallel across)"
  cpu_use "${CLUSTER[@]}" -np 4 --map-by slot "${T[@]:2}"
  echo "# 2 nodes x 2 ranks, --map-by node (expert-parallel groups across the nodes: MPI dispatch)"
  cpu_use "${CLUSTER[@]}" -np 4 --map-by node "${T[@]:2}"
  link_stats
fi
