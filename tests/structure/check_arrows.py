#!/usr/bin/env python3
"""The module arrows, checked over the include graph.

Every `#include "module/..."` in src/ and comm/ is an arrow from the
including file's module to the included one. ALLOWED below is the house of
DESIGN.md ("arrows point down"): apps -> train -> {pipeline, moe, model,
ckpt, comm, data, infer} -> {fp8, kernels} -> core, with config below model
and infer, and a launcher that links neither the model, MPI nor HDF5. A
system header that belongs to one module (<mpi.h> to comm, <hdf5.h> to ckpt)
counts as an arrow into that module.

Arrows that break these rules today are listed in KNOWN, each with the file
that draws it: the redesign removes them one by one. The check fails on a
forbidden arrow that is not listed, and on a listed one that no longer
exists (delete its line), so the list only shrinks.

    /usr/bin/python3 tests/structure/check_arrows.py [REPO]      # exit 0 or 1
    /usr/bin/python3 tests/structure/check_arrows.py --graph     # module -> modules, with counts
"""
import re
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
    "model": {"config", "fp8", "kernels", "core"},
    "moe": {"model", "comm", "config", "fp8", "kernels", "core"},
    "infer": {"model", "moe", "ckpt", "config", "fp8", "kernels", "core"},
    "train": {"pipeline", "moe", "model", "ckpt", "ckpt_dir", "comm", "data", "infer", "estimate", "config", "fp8",
              "kernels", "kernels_cpu", "core"},
    "launch": {"estimate", "ckpt_dir", "config", "pipeline", "data", "core"},
    "apps": {"train", "launch", "infer", "pipeline", "moe", "model", "ckpt", "ckpt_dir", "comm", "data", "estimate",
             "config", "fp8", "kernels", "kernels_cpu", "core"},
}

# System headers owned by one module.
OWNED_SYSTEM = {"mpi.h": "comm_mpi", "hdf5.h": "ckpt", "nccl.h": "comm_nccl"}

# Forbidden arrows that exist today, by the kind of debt: (from module, to
# module) -> (why, the files that draw it). The redesign removes them.
KNOWN_BY_KIND = {
    ("model", "kernels_cpu"): ("ops not yet behind the backend interface", [
        "src/model/blocks.cpp", "src/model/blocks.h", "src/model/moe_block.cpp",
        "src/model/moe_block.h", "src/model/transformer.cpp", "src/model/transformer.h"]),
    ("infer", "kernels_cpu"): ("ops not yet behind the backend interface", ["src/infer/decoder.cpp"]),
    ("model", "comm"): ("MoeContext holds a Comm and the MoE block picks the transport",
                        ["src/model/moe_block.h"]),
    ("model", "moe"): ("the MoE block lives in model/ and calls moe/ (it belongs in moe/)",
                       ["src/model/moe_block.cpp", "src/model/moe_block.h"]),
}
KNOWN = {(f, to): why for (frm, to), (why, files) in KNOWN_BY_KIND.items() for f in files}

def module_of(rel):
    """The module a repository-relative path belongs to, or None (not project code)."""
    parts = rel.split("/")
    if parts[0] == "comm":
        return {"mpi": "comm_mpi", "nccl": "comm_nccl"}.get(parts[1], "comm") if len(parts) > 2 else "comm"
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
    if parts[0] == "comm":
        return module_of(include)
    return module_of("src/" + include)


INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def arrows(repo):
    """(from file, to module, include) for every project include between modules."""
    out = []
    for path in sorted(list((repo / "src").rglob("*")) + list((repo / "comm").rglob("*"))):
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
    print("self-test: ok")
    return 0


def main(argv):
    if "--self-test" in argv:
        return self_test()
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
