#!/usr/bin/env python3
"""Switchyard across simulated nodes: network namespaces on one machine
(cluster/netns/up.sh), started by moe-launch --hostfile exactly as a user
would, with only the OMPI_MCA_* settings of the cluster's mpirun.env added.

usage: test_multinode.py BIN_DIR WORK_DIR CASE

Every case stands up its own 2-node cluster (2 slots each) under its own
name prefix and subnet, so that no two cases collide, and tears it down in a
`finally`, also when it fails. Needs root and `ip netns`; without them it
exits 77 (ctest: skipped) saying why.

CASEs:
  layout_dp     dp = 4 over 2 nodes (the gradient all-reduce crosses nodes)
  layout_ep     ep = 4 over 2 nodes, and dp = 4 / ep = 2 mapped by node so
                that each ep group is one rank of each node
  layout_pp     pp = 2 with one stage per node (bitwise), and pp 2 x dp 2 x
                ep 2 with one stage per node
                Each against one rank, as tests/mpi/test_layouts.py and
                tests/pipeline/test_pipeline.py compare (their tolerances,
                imported); each asserts from the ranks' heartbeats that the
                ranks ran on the two nodes as the mapping says.
  reference     the uninterrupted fault-test job on a cluster (fixture)
  node_killed   every moe-train process inside one node is SIGKILLed mid-run:
                moe-launch reports the failure naming that node's host,
                restarts from the latest checkpoint, and the final losses
                equal the reference's bit for bit
  link_down     the node's link is taken down mid-run: the ranks' watchdog
                (parallel.timeout) names the ranks on the other host, the
                launcher reports it; the link comes back up, the launcher
                restarts and the losses equal the reference's
"""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from equivalence import Comparison, metric_rows  # noqa: E402
from testenv import mpi_env  # noqa: E402

BIN, WORK, CASE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ROOT = HERE.parent.parent
UP, DOWN = ROOT / "cluster" / "netns" / "up.sh", ROOT / "cluster" / "netns" / "down.sh"
SKIP = 77  # SKIP_RETURN_CODE in tests/multinode/CMakeLists.txt
# One prefix and subnet per case (sya1.., 10.77.11.0/24..): cases never share names or addresses.
CLUSTERS = {"layout_dp": 1, "layout_ep": 2, "layout_pp": 3, "reference": 4, "node_killed": 5, "link_down": 6}


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The model, batch and tolerances of the single-machine equivalence tests (their comments give the reasons).
LAYOUTS = load(HERE.parent / "mpi" / "test_layouts.py", "test_layouts")
PIPELINE = load(HERE.parent / "pipeline" / "test_pipeline.py", "test_pipeline")


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


def check_prerequisites():
    if os.geteuid() != 0:
        skip("needs root (ip netns, veth, tc): run the multinode tests as root")
    for tool in ("ip", "tc", "unshare"):
        if not shutil.which(tool):
            skip(f"needs `{tool}` (iproute2 / util-linux)")
    probe = f"sya{CLUSTERS[CASE]}probe"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        skip(f"cannot create a network namespace here (`ip netns add` said: {p.stderr.strip()})")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class Cluster:
    """2 nodes of 2 slots under prefix syaN, subnet 10.77.(10+N).0/24; torn down on exit."""

    def __init__(self, n):
        self.prefix, self.subnet = f"sya{n}", f"10.77.{10 + n}.0/24"
        self.state = WORK / f"cluster-{self.prefix}"
        self.nodes = [f"{self.prefix}n1", f"{self.prefix}n2"]

    def __enter__(self):
        self.down()  # what a killed earlier run of this case left behind
        subprocess.run([str(UP), "--nodes", "2", "--slots", "2", "--prefix", self.prefix, "--subnet", self.subnet,
                        "--state", str(self.state)], check=True, timeout=60)
        env = mpi_env(OMP_NUM_THREADS="1")
        for line in (self.state / "mpirun.env").read_text().splitlines():
            k, v = line.split("=", 1)
            env[k] = v
        self.env = env
        self.hostfile = self.state / "hostfile"
        return self

    def down(self):
        subprocess.run([str(DOWN), "--prefix", self.prefix, "--state", str(self.state)], timeout=60)

    def pids(self, node, name="moe-train"):
        out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout.split()
        found = []
        for pid in out:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(int(pid))
            except OSError:
                pass
        return found

    def __exit__(self, *exc):
        left = {n: self.pids(n) for n in self.nodes}
        self.down()
        if not any(exc):
            assert not any(left.values()), f"moe-train processes left running inside the nodes: {left}"
        return False


def launch_cmd(cluster, run_dir, sets, np=None):
    args = [str(BIN / "moe-launch"), "--hostfile", str(cluster.hostfile)]
    if np:
        args += ["--np", str(np)]
    for s in sets + [f"run.dir={run_dir}", "launch.report=false"]:
        args += ["--set", s]
    return args


def launch(cluster, run_dir, sets, np=None, timeout=300):
    p = subprocess.run(launch_cmd(cluster, run_dir, sets, np), capture_output=True, text=True, env=cluster.env,
                       timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"moe-launch exit {p.returncode}:\n{out[-4000:]}"
    return out


def hosts_of(run_dir, np):
    """{rank: host} from the ranks' heartbeats (each rank writes its own hostname)."""
    return {r: json.loads((Path(run_dir) / "heartbeat" / f"rank_{r:05d}.json").read_text())["host"] for r in range(np)}


def train_one_rank(run_dir, model, sets):
    args = [a for s in model + sets + [f"run.dir={run_dir}"] for a in ("--set", s)]
    p = subprocess.run([str(BIN / "moe-train")] + args, capture_output=True, text=True,
                       env=mpi_env(OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == 0, f"one-rank baseline failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return metric_rows(run_dir)


def compare(name, rows, base, tol, grad_tol, failures):
    c = Comparison(rows, base, tol, None if tol is None else grad_tol)
    print(f"{name:<32} {c.summary()}", flush=True)
    # A routing near-tie ends the comparison (tests/equivalence.py); one in
    # the first half would leave too few steps to show anything: measured on
    # one machine these layouts compare all 10 steps.
    if not c.ok or c.n != len(base) or c.compared < len(base) // 2:
        failures.append(name)


def layouts(runs, model, grad_tol):
    """runs: [(name, np, sets, tolerance or None, {rank: node index}, the baseline's sets)] against one rank."""
    failures = []
    tmp = WORK / CASE
    shutil.rmtree(tmp, ignore_errors=True)
    bases = {}
    with Cluster(CLUSTERS[CASE]) as c:
        for name, np, sets, tol, placement, base_sets in runs:
            key = tuple(base_sets)
            if key not in bases:
                bases[key] = train_one_rank(tmp / f"base{len(bases)}", model, base_sets)
            t0 = time.time()
            run_dir = tmp / name
            launch(c, run_dir, model + base_sets + sets, np)
            where = hosts_of(run_dir, np)
            want = {r: c.nodes[i] for r, i in placement.items()}
            assert where == want, f"{name}: ranks ran on {where}, expected {want}"
            compare(f"{name} ({time.time() - t0:.0f} s)", metric_rows(run_dir), bases[key], tol, grad_tol, failures)
    assert not failures, failures
    print("PASS")


# Ranks 0, 1 on node 1 and 2, 3 on node 2 (launch.map_by = slot, the
# default); by node: 0, 2 on node 1 and 1, 3 on node 2.
BY_SLOT = {0: 0, 1: 0, 2: 1, 3: 1}
BY_NODE = {0: 0, 1: 1, 2: 0, 3: 1}
DROPLESS = ["moe.capacity_factor=0.0"]


def layout_dp():
    layouts([("dp4_ep1", 4, ["parallel.dp=4", "parallel.ep=1"], LAYOUTS.TOL_DROPLESS, BY_SLOT, DROPLESS)],
            LAYOUTS.MODEL, LAYOUTS.GRAD_NORM_TOL)


def layout_ep():
    # ep = 4: the dispatch all-to-all spans both nodes. ep = 2 by node
    # (grid: ep_rank = dp_rank % 2, so ep groups {0, 1} and {2, 3}): each ep
    # group has one rank on each node, the expert-data-parallel groups
    # {0, 2}, {1, 3} stay inside a node.
    layouts([("dp4_ep4", 4, ["parallel.dp=4", "parallel.ep=4"], LAYOUTS.TOL_DROPLESS, BY_SLOT, DROPLESS),
             ("dp4_ep2_by_node", 4, ["parallel.dp=4", "parallel.ep=2", "launch.map_by=node"], LAYOUTS.TOL_DROPLESS,
              BY_NODE, DROPLESS)],
            LAYOUTS.MODEL, LAYOUTS.GRAD_NORM_TOL)


def layout_pp():
    # pp = 2 on 2 ranks mapped by node: stage 0 on node 1, stage 1 on node 2;
    # bitwise (tests/pipeline/test_pipeline.py says why). pp 2 x dp 2 x ep 2
    # by slot (grid: pp_rank = w / dp): stage 0 = ranks 0, 1 on node 1,
    # stage 1 = ranks 2, 3 on node 2; the 3d tolerance, against a one-rank
    # baseline with the same capacity dropping (as test_pipeline.py's 3d).
    layouts([("pp2_1f1b", 2, ["parallel.pp=2", "parallel.schedule=1f1b", "launch.map_by=node"], None, {0: 0, 1: 1},
              []),
             ("pp2_dp2_ep2", 4, ["parallel.pp=2", "parallel.dp=2", "parallel.ep=2", "parallel.schedule=1f1b"],
              PIPELINE.TOL_3D, BY_SLOT, ["moe.capacity_factor=1.0"])],
            PIPELINE.MODEL, PIPELINE.GRAD_NORM_TOL)


# The fault cases: 100 steps of dp 4 / ep 4 (launch's automatic layout),
# a checkpoint every 10; the fault comes after the step-10 checkpoint, and
# the run must still be going then: on a quiet machine a step takes ~0.05 s
# and rank 0's heartbeat lags up to a step or so, so 30 steps once finished
# before the fault landed. train.threads = 1 everywhere: a restarted run must
# equal the uninterrupted one to the bit (tests/launch says why).
STEPS = 100
FAULT_SETS = ["model.d_model=32", "model.n_layers=2", "model.seq_len=32", "train.global_batch=8",
              f"train.steps={STEPS}", "checkpoint.interval=10", "train.log_every=5", "train.val_every=0",
              "train.threads=1", "launch.restart_backoff=2"]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in metric_rows(run_dir)}


def attempts(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "logs" / "attempts.jsonl").read_text().splitlines()]


def same_losses(run_dir):
    want, got = losses(WORK / "reference" / "run"), losses(run_dir)
    assert sorted(want) == list(range(1, STEPS + 1)), "the reference run is incomplete: run CASE reference first"
    assert sorted(got) == list(range(1, STEPS + 1)), sorted(got)
    bad = [(s, got[s], want[s]) for s in want if got[s] != want[s]]
    assert not bad, f"losses differ from the uninterrupted run (step, got, want): {bad[:5]}"


def reference():
    shutil.rmtree(WORK / "reference", ignore_errors=True)
    with Cluster(CLUSTERS[CASE]) as c:
        launch(c, WORK / "reference" / "run", FAULT_SETS)
        assert set(hosts_of(WORK / "reference" / "run", 4).values()) == set(c.nodes)
    print(f"reference losses: {losses(WORK / 'reference' / 'run')}")


def logged_step(run_dir):
    """The last step in run_dir/metrics.jsonl, which rank 0 flushes after every step (its
    heartbeat is written once a second, and on a fast machine the whole job took about that)."""
    try:
        return max((r["step"] for r in metric_rows(run_dir)), default=-1)
    except OSError:
        return -1


def faulted_run(fault, repair=None, sets=()):
    """Starts moe-launch on a fresh cluster; once rank 0 has logged step 14 (the step-10 checkpoint
    is committed), freezes every rank (SIGSTOP), calls fault(cluster), and lets the ranks that are
    still there go on (SIGCONT): the fault lands mid-run however fast the machine steps. Then calls
    repair(cluster, output so far) while the job runs until it returns True. Returns (exit code,
    output, run dir, the step the ranks were frozen at)."""
    run_dir = WORK / CASE / "run"
    shutil.rmtree(WORK / CASE, ignore_errors=True)
    with Cluster(CLUSTERS[CASE]) as c:
        proc = subprocess.Popen(launch_cmd(c, run_dir, FAULT_SETS + list(sets)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=c.env, start_new_session=True)
        out = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            t0 = time.time()
            while logged_step(run_dir) < 14 or not (run_dir / "checkpoints" / "latest").exists():
                assert proc.poll() is None, f"moe-launch exited early ({proc.returncode}):\n{''.join(out)[-3000:]}"
                assert time.time() - t0 < 240, "rank 0 did not log step 14 in 240 s"
                time.sleep(0.01)
            frozen = [pid for n in c.nodes for pid in c.pids(n)]
            assert len(frozen) == 4, f"expected 4 moe-train ranks in the nodes, found {frozen}"
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            at = logged_step(run_dir)
            print(f"froze the 4 ranks at logged step {at}", flush=True)
            assert at < STEPS, f"the job had finished ({at} steps) before the ranks were frozen"
            try:
                fault(c)
            finally:
                for pid in frozen:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass  # a rank the fault killed
            repaired = repair is None
            t1 = time.time()
            while proc.poll() is None:
                if not repaired:
                    repaired = repair(c, "".join(out))
                assert time.time() - t1 < 300, f"the job did not end within 300 s of the fault:\n{''.join(out)[-3000:]}"
                time.sleep(0.1)
            reader.join(timeout=10)
            assert repaired, "the job ended before the repair"
            return proc.returncode, "".join(out), run_dir, at
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def node_killed():
    victims = {}

    def kill_node(c):
        pids = c.pids(c.nodes[1])
        assert len(pids) == 2, f"expected 2 moe-train ranks inside {c.nodes[1]}, found {pids}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        victims["pids"] = pids
        print(f"killed every moe-train process inside {c.nodes[1]}: {pids}", flush=True)

    code, out, run, at = faulted_run(kill_node)
    assert code == 0, out[-4000:]
    a = attempts(run)
    print("attempt 1 report:", a[0]["report"])
    assert [x["outcome"] for x in a] == ["failed", "ok"], a
    # The node by its hostname (from the rank's heartbeat) or, for a rank killed before its first
    # heartbeat, by its hostfile address (from mpirun's report): either names node 2.
    n = CLUSTERS[CASE]
    node = rf"(sya{n}n2|10\.77\.{10 + n}\.12)"
    assert re.search(rf"rank [23] \(host {node}, pid \d+\) died on signal 9", a[0]["report"]), a[0]
    # The kill landed mid-run: the restart resumed from a checkpoint no later than the frozen step.
    assert a[0]["latest_checkpoint_step"] in range(10, min(at + 2, STEPS), 10), (at, a[0])
    assert "resumed from" in out and "restart 1 of 3" in out, out[-3000:]
    same_losses(run)
    print("PASS")


def link_down():
    prefix = f"sya{CLUSTERS[CASE]}"
    link = f"{prefix}h2"  # node 2's host-side veth: node 2 is cut off from the bridge
    events = {}

    def cut(c):
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        events["down"] = time.time()
        print(f"link {link} down", flush=True)

    def restore(c, text):
        # Up again once the launcher has reported the attempt's end (before its restart).
        if re.search(r"moe-launch: (hang detected|attempt 1: the job failed)", text):
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
            events["up"] = time.time()
            print(f"link {link} up again {events['up'] - events['down']:.1f} s after it went down", flush=True)
            return True
        return False

    # parallel.timeout 5 s: a collective waits that long before the
    # watchdog aborts (steps here take ~0.1 s); hang_timeout 10 s.
    code, out, run, at = faulted_run(cut, restore, ["parallel.timeout=5", "launch.hang_timeout=10"])
    assert code == 0, out[-4000:]
    wd = [l for l in out.splitlines() if "watchdog: rank" in l or "members on other hosts" in l]
    print("\n".join(wd[:6]))
    a = attempts(run)
    print("attempt 1 report:", a[0]["report"])
    assert [x["outcome"] for x in a][-1] == "ok" and len(a) >= 2, a
    assert a[0]["outcome"] in ("hung", "failed"), a
    # The cut landed mid-run: no checkpoint after the step the ranks were frozen at (or the one in flight).
    assert a[0]["latest_checkpoint_step"] in range(10, min(at + 2, STEPS), 10), (at, a[0])
    # The watchdog of a rank on node 1 names the ranks of node 2 with their host, and the launcher's report carries it.
    assert re.search(rf"watchdog: rank [01] \(host {prefix}n1\)", a[0]["report"]), a[0]
    assert f"members on other hosts: host {prefix}n2 (ranks 2, 3)" in a[0]["report"], a[0]
    same_losses(run)
    print("PASS")


if __name__ == "__main__":
    check_prerequisites()
    globals()[CASE]()
