#!/usr/bin/env python3
"""The module arrows, checked over the include graph.

Every `#include "module/..."` in src/, comm/ and launch/ is an arrow from the
including file's module to the included one. ALLOWED below is the house of
DESIGN.md ("arrows point down"): apps -> train -> {pipeline, moe, model,
ckpt, comm, data, infer} -> {fp8, kernels} -> core, with moe below model
(the MoE block calls its dispatcher), config below model and infer, and a launcher that links neither the model, MPI nor HDF5. A
system header that belongs to one module (<mpi.h> to comm, <hdf5.h> to ckpt)
counts as an arrow into that module.

Arrows that break these rules today are listed in KNOWN, each with the file
that draws it: the redesign removes them one by one. The check fails on a
forbidden arrow that is not listed, and on a listed one that no longer
exists (delete its line), so the list only shrinks.

The same arrows hold for the CMake targets (one per folder): --links FILE
reads the link graph the build writes (build/link_graph.tsv, from
cmake/SwitchyardLinkGraph.cmake) and fails on a target that links a module
its arrows forbid (a KNOWN arrow may be linked too), and on a target whose
link closure reaches what it must never reach (NEVER_REACHES: launch, the
estimates and the layers below config reach no model, no MPI, no HDF5).
--ldd BINARY checks a built executable's shared libraries for the same.

    /usr/bin/python3 tests/structure/check_arrows.py [REPO]      # exit 0 or 1
    /usr/bin/python3 tests/structure/check_arrows.py --graph     # module -> modules, with counts
    /usr/bin/python3 tests/structure/check_arrows.py --links build/link_graph.tsv [--ldd build/bin/test_launch]
"""
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# module -> the modules it may include (besides itself). Kernels are split:
# `kernels` is the device-neutral interface, `kernels_cpu`/`kernels_cuda`
# are backends only the backend registry (and tests) may name.
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "kernels_cpu": {"kernels", "core"},
    "kernels_cuda": {"kernels", "kernels_cpu", "core"},  # the CUDA FP8 path shares the CPU's scale rules
    "fp8": {"kernels", "core"},
    "pipeline": {"core"},
    "config": {"pipeline", "kernels", "core"},  # the schedules and device-neutral op types a config selects
    "comm": {"comm_mpi", "config", "core"},  # MPI: Comm::world, the watchdog's abort; config: the grid's layout
    "comm_mpi": {"comm", "core"},
    "comm_nccl": {"comm", "comm_mpi", "core"},  # created from an MPI group (unique-id broadcast)
    "data": {"core"},
    "ckpt_dir": {"core"},  # ckpt/dir/: step directory names and `latest`, no HDF5
    "ckpt": {"ckpt_dir", "core"},
    "estimate": {"config", "pipeline", "core"},  # sizes and the stage split from the config, no model
    "model": {"moe", "config", "fp8", "kernels", "core"},  # the MoE block calls the dispatcher, capacity, plan
    "moe": {"comm", "config", "fp8", "kernels", "core"},  # below model: router glue and dispatch transports
    "infer": {"model", "moe", "ckpt", "config", "fp8", "kernels", "core"},
    "train": {"pipeline", "moe", "model", "ckpt", "ckpt_dir", "comm", "data", "infer", "estimate", "config", "fp8",
              "kernels", "core"},
    "launch": {"estimate", "ckpt_dir", "config", "pipeline", "data", "core"},
    # apps: a tool that runs ops opens the backend its --device names (apps/device.h); never kernels_cuda:
    # the CUDA backend is loaded at run time (kernels/cpu/cuda_module.h), as linking it made every CPU run
    # start in 1.5 s at 235 MB resident.
    "apps": {"train", "launch", "infer", "pipeline", "moe", "model", "ckpt", "ckpt_dir", "comm", "data", "estimate",
             "config", "fp8", "kernels", "kernels_cpu", "core"},
}

# System headers owned by one module.
OWNED_SYSTEM = {"mpi.h": "comm_mpi", "hdf5.h": "ckpt", "nccl.h": "comm_nccl",
                "sentencepiece_processor.h": "data", "sentencepiece_trainer.h": "data"}

# Forbidden arrows that exist today, by the kind of debt: (from module, to
# module) -> (why, the files that draw it). The redesign removes them.
KNOWN_BY_KIND = {
}
KNOWN = {(f, to): why for (frm, to), (why, files) in KNOWN_BY_KIND.items() for f in files}

def module_of(rel):
    """The module a repository-relative path belongs to, or None (not project code)."""
    parts = rel.split("/")
    if parts[0] == "comm":
        return {"mpi": "comm_mpi", "nccl": "comm_nccl"}.get(parts[1], "comm") if len(parts) > 2 else "comm"
    if parts[0] == "launch":  # top level, beside comm/ (DESIGN.md)
        return "launch" if len(parts) > 1 else None
    if parts[0] != "src" or len(parts) < 3:
        return None
    if parts[1] == "kernels":
        return {"cpu": "kernels_cpu", "cuda": "kernels_cuda"}.get(parts[2], "kernels")
    if parts[1] == "ckpt" and parts[2] == "dir":
        return "ckpt_dir"
    return parts[1]


def target_module(include):
    """The module an #include names: "model/x.h" -> model, "kernels/cpu/x.h" -> kernels_cpu."""
    if include in OWNED_SYSTEM:
        return OWNED_SYSTEM[include]
    parts = include.split("/")
    if len(parts) < 2:
        return None
    if parts[0] in ("comm", "launch"):
        return module_of(include)
    return module_of("src/" + include)


INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def arrows(repo):
    """(from file, to module, include) for every project include between modules."""
    out = []
    for path in sorted(list((repo / "src").rglob("*")) + list((repo / "comm").rglob("*")) +
                       list((repo / "launch").rglob("*"))):
        if path.suffix not in (".h", ".hpp", ".cpp", ".cu", ".cuh") or not path.is_file():
            continue
        rel = path.relative_to(repo).as_posix()
        me = module_of(rel)
        if me is None:
            continue
        for kind, inc in INCLUDE.findall(path.read_text(errors="replace")):
            if kind == "<" and inc not in OWNED_SYSTEM:
                continue
            to = target_module(inc)
            if to is not None and to != me:
                out.append((rel, me, to, inc))
    return out


# Libraries outside the project that belong to one module (as OWNED_SYSTEM).
OWNED_LIBRARIES = {"MPI::MPI_CXX": "comm_mpi", "MPI::MPI_C": "comm_mpi", "PkgConfig::HDF5": "ckpt",
                   "tomlplusplus::tomlplusplus": "config", "PkgConfig::SENTENCEPIECE": "data"}
# Links that are not includes: the model names only the backend interface
# (kernels/backend.h), but backend(Device), the registry, is defined with the
# CPU backend, the one backend every build has; so the model's target links
# kernels_cpu while no model file may include it.
LINK_ONLY = {("model", "kernels_cpu")}

# What a target's link closure must never reach, whatever the path (MPI is
# comm_mpi's, HDF5 ckpt's).
NO_MODEL_MPI_HDF5 = {"model", "moe", "comm", "comm_mpi", "comm_nccl", "ckpt", "train", "infer"}
NEVER_REACHES = {
    "launch": NO_MODEL_MPI_HDF5,
    "estimate": NO_MODEL_MPI_HDF5,
    "ckpt_dir": NO_MODEL_MPI_HDF5,
    "data": NO_MODEL_MPI_HDF5,
    "config": NO_MODEL_MPI_HDF5,
    "pipeline": NO_MODEL_MPI_HDF5 | {"config"},
    "core": NO_MODEL_MPI_HDF5 | {"config"},
    "kernels_cpu": NO_MODEL_MPI_HDF5 | {"config"},
    "kernels_cuda": NO_MODEL_MPI_HDF5 | {"config"},
    "fp8": NO_MODEL_MPI_HDF5 | {"config"},
}
NEVER_LOADS = {"launch": ("libmpi", "libhdf5")}  # --ldd: shared libraries a launch-only binary must not load


def target_module_of(name):
    """The module a CMake target or library name stands for, or None (tests, options, system libraries)."""
    if name in OWNED_LIBRARIES:
        return OWNED_LIBRARIES[name]
    for prefix in ("switchyard::", "switchyard_"):
        if name.startswith(prefix):
            m = name[len(prefix):]
            return m if m in ALLOWED else None
    if name.startswith(("moe-", "sy-bench-")):
        return "apps"
    return None


def read_links(path):
    """{target: [libraries it links directly]} from the build's link_graph.tsv."""
    links = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        name, _kind, libs = (line.split("\t") + ["", ""])[:3]
        links[name] = [re.sub(r"^\$<LINK_ONLY:(.*)>$", r"\1", lib) for lib in libs.split(";") if lib]
    return links


def check_links(links):
    """Messages for every forbidden link and every forbidden reach; [] when the graph keeps the arrows."""
    known = set(KNOWN_BY_KIND)
    bad = []
    for name, libs in sorted(links.items()):
        me = target_module_of(name)
        if me is None or me not in ALLOWED:
            continue
        for lib in libs:
            to = target_module_of(lib)
            if to is None or to == me or to in ALLOWED[me] or (me, to) in known or (me, to) in LINK_ONLY:
                continue
            bad.append(f"CMake: {name} links {lib}: {me} -> {to} is not an arrow of the house "
                       f"({me} may link: {', '.join(sorted(ALLOWED[me])) or 'nothing'})")
    # Closure: follow project targets through their links (aliases by name).
    def node(lib):
        if lib in links:
            return lib
        if lib.startswith("switchyard::") and "switchyard_" + lib[len("switchyard::"):] in links:
            return "switchyard_" + lib[len("switchyard::"):]
        return None
    for name in sorted(links):
        me = target_module_of(name)
        never = NEVER_REACHES.get(me, set())
        if not never:
            continue
        seen, stack = {name: [name]}, [name]
        while stack:
            cur = stack.pop()
            for lib in links.get(cur, []):
                to = target_module_of(lib)
                path = seen[cur] + [lib]
                if to in never and to != me:
                    bad.append(f"CMake: {name} reaches {to} through {' -> '.join(path)}: {me} must not link "
                               f"{', '.join(sorted(never))}")
                nxt = node(lib)
                if nxt and nxt not in seen:
                    seen[nxt] = path
                    stack.append(nxt)
    return bad


def check_ldd(binary, module="launch"):
    """Messages for each shared library `binary` loads that NEVER_LOADS forbids its module."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [f"{binary} loads {line.split()[0]}: a {module}-only binary must load no MPI and no HDF5"
            for line in out.splitlines() if line.split() and line.split()[0].startswith(NEVER_LOADS[module])]


def self_test():
    """The check fails on a forbidden arrow, a stale exception and an unknown module."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "src/core").mkdir(parents=True)
        (root / "comm").mkdir()
        (root / "src/core/ok.h").write_text('#include <vector>\n#include "core/check.h"\n')
        assert main(["x", d]) == (1 if KNOWN else 0), "every KNOWN line is stale in an empty tree"
        saved = dict(KNOWN)
        KNOWN.clear()
        try:
            assert main(["x", d]) == 0, "a tree of allowed arrows passes"
            (root / "src/core/bad.h").write_text('#include "train/trainer.h"\n')
            assert main(["x", d]) == 1, "core -> train must fail"
            (root / "src/core/bad.h").write_text("#include <mpi.h>\n")
            assert main(["x", d]) == 1, "<mpi.h> outside comm must fail"
            (root / "src/core/bad.h").unlink()
            (root / "src/newmod").mkdir()
            (root / "src/newmod/a.h").write_text('#include "core/check.h"\n')
            assert main(["x", d]) == 1, "a module without a line in ALLOWED must fail"
        finally:
            KNOWN.update(saved)
    good = {"switchyard_launch": ["switchyard::estimate", "switchyard::config", "nlohmann_json::nlohmann_json"],
            "switchyard_estimate": ["switchyard::config", "switchyard::pipeline", "switchyard::core"],
            "switchyard_config": ["switchyard::core", "$<LINK_ONLY:tomlplusplus::tomlplusplus>"],
            "switchyard_comm": ["switchyard::config", "MPI::MPI_CXX"],
            "moe-launch": ["switchyard::launch", "switchyard::ckpt"],
            "test_launch": ["switchyard::launch", "switchyard::comm"]}
    assert check_links(good) == [], check_links(good)
    bad = dict(good, switchyard_launch=["switchyard::estimate", "switchyard::model"])
    assert any("launch -> model" in b for b in check_links(bad)), "launch linking the model must fail"
    bad = dict(good, switchyard_estimate=["switchyard::config", "switchyard::comm"])
    found = check_links(bad)
    assert any("estimate -> comm" in b for b in found), "estimate linking comm must fail"
    assert any("switchyard_launch reaches comm_mpi" in b for b in found), "launch reaching MPI must fail"
    bad = dict(good, switchyard_estimate=["PkgConfig::HDF5"])
    assert any("reaches ckpt" in b for b in check_links(bad)), "launch reaching HDF5 must fail"
    print("self-test: ok")
    return 0


def main(argv):
    if "--self-test" in argv:
        return self_test()
    if "--links" in argv:
        i = argv.index("--links")
        problems = check_links(read_links(argv[i + 1]))
        if "--ldd" in argv:
            problems += check_ldd(argv[argv.index("--ldd") + 1])
        for p in problems:
            print(p)
        print(f"link graph: {len(problems)} forbidden links or reaches")
        return 1 if problems else 0
    graph = "--graph" in argv
    args = [a for a in argv[1:] if not a.startswith("--")]
    repo = Path(args[0]).resolve() if args else Path(__file__).resolve().parent.parent.parent
    found = arrows(repo)
    if graph:
        counts = defaultdict(lambda: defaultdict(int))
        for _, me, to, _ in found:
            counts[me][to] += 1
        for me in sorted(counts):
            print(f"{me:13} -> " + ", ".join(f"{to} ({n})" for to, n in sorted(counts[me].items())))
        return 0
    unknown_modules = sorted({me for _, me, _, _ in found} - ALLOWED.keys())
    bad, seen_known = [], set()
    for rel, me, to, inc in found:
        if me not in ALLOWED or to in ALLOWED[me]:
            continue
        if (rel, to) in KNOWN:
            seen_known.add((rel, to))
            continue
        bad.append(f"{rel}: #include {inc}: {me} -> {to} is not an arrow of the house "
                   f"({me} may include: {', '.join(sorted(ALLOWED[me])) or 'nothing'})")
    stale = sorted(set(KNOWN) - seen_known)
    for m in unknown_modules:
        print(f"new module '{m}': add it to ALLOWED in {Path(__file__).name} with the arrows it may draw")
    for b in bad:
        print(b)
    for rel, to in stale:
        print(f"{rel} -> {to} is listed in KNOWN but no longer drawn: delete its line")
    print(f"{len(found)} arrows between modules, {len(seen_known)} known exceptions "
          f"({len({f for f, _ in seen_known})} files), {len(bad)} forbidden, {len(stale)} stale")
    return 1 if bad or stale or unknown_modules else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
