#!/usr/bin/env bash
# Adding and chilling experts (issue 19), on configs/tiny.toml:
#   1. train on corpus A (the fortune files, two of them held out as A's validation set);
#   2. moe-ckpt grow: 8 -> 12 experts in every MoE layer (--init noise);
#   3. continue on corpus B (C headers, /usr/include/*.h: another domain, so training on it
#      makes the model forget A) three times, validating on A's held-out files:
#      plain, and with the old experts chilled by train.lr_groups
#      [{ match = "layers.*.moe.experts.[0-7].*", scale = 0.1 }], and with everything old chilled
#      (only the new experts and the routers at full rate);
# then prints, per run, corpus A's validation loss before and after training on B (the rise is
# forgetting), corpus B's training loss at the end, and the new experts' share of the routed picks
# over the continued steps (per MoE layer).
# Usage: bench/grow_chill.sh [build-dir] [work-dir]
#   (env: STEPS_A=300 STEPS_B=200 RANKS=2 VAL_EVERY=25 CORPUS_B='/usr/include/*.h' SEED=1337)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build}/bin
work=${2:-$(mktemp -d /tmp/grow_chill.XXXXXX)}
steps_a=${STEPS_A:-300} steps_b=${STEPS_B:-200} ranks=${RANKS:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$work"
fort=/usr/share/games/fortunes
a_train=() a_val=() b_train=()
for f in "$fort"/*.u8; do a_train+=("$f"); done
for f in ${CORPUS_B:-/usr/include/*.h}; do [ -f "$f" ] && b_train+=("$f"); done
[ ${#a_train[@]} -ge 4 ] && [ ${#b_train[@]} -ge 2 ] || { echo "grow_chill: too few files: fortunes in $fort, corpus B ${CORPUS_B:-/usr/include/*.h}" >&2; exit 2; }
a_val=("${a_train[@]: -2}")            # the last two A files: A's held-out validation set
a_train=("${a_train[@]:0:${#a_train[@]}-2}")
toml_list() { local out="" f; for f in "$@"; do out+="${out:+, }\"$f\""; done; echo "[$out]"; }
common=(--set train.seed=${SEED:-1337} --set "data.val=$(toml_list "${a_val[@]}")" --set train.val_every=${VAL_EVERY:-25} --set train.val_batches=8
        --set train.log_every=${VAL_EVERY:-25} --set checkpoint.interval=0 --set checkpoint.at_end=true)
train() {  # ranks, run dir, extra --set arguments...
  local n=$1 dir=$2; shift 2
  mpiexec -n "$n" "$bin/moe-train" "$root/configs/tiny.toml" "${common[@]}" --set "run.dir=$dir" "$@" \
    > "$dir.log" 2>&1
}
echo "corpus A: ${#a_train[@]} files (+ ${#a_val[@]} held out), corpus B: ${#b_train[@]} files; work dir $work"
train "$ranks" "$work/a" --set "data.train=$(toml_list "${a_train[@]}")" --set "train.steps=$steps_a" \
  || { echo "phase A failed, see $work/a.log" >&2; exit 1; }
"$bin/moe-ckpt" grow "$work/a" "$work/grown.h5" --layer all --add 4 --init noise --noise 0.01 --seed ${SEED:-1} \
  || exit 1
total=$((steps_a + steps_b))
b_sets=(--set "data.train=$(toml_list "${b_train[@]}")" --set "train.steps=$total" --set moe.experts=12
        --set "checkpoint.resume=$work/grown.h5")
train "$ranks" "$work/plain" "${b_sets[@]}" || echo "plain run failed, see $work/plain.log" >&2
train "$ranks" "$work/chilled" "${b_sets[@]}" \
  --set 'train.lr_groups=[{ match = "layers.*.moe.experts.[0-7].*", scale = 0.1 }]' \
  || echo "chilled run failed, see $work/chilled.log" >&2
# Everything old chilled (attention, norms, embeddings, dense and shared FFNs, old experts), the new
# experts and the routers at full rate: what is left to forget with when the experts alone are chilled.
train "$ranks" "$work/chill-all" "${b_sets[@]}" \
  --set 'train.lr_groups=[{ match = "layers.*.moe.experts.[8-11].*", scale = 1 }, { match = "layers.*.moe.router", scale = 1 }, { match = "**", scale = 0.1 }]' \
  || echo "chill-all run failed, see $work/chill-all.log" >&2
/usr/bin/python3 - "$work" "$steps_a" <<'PY'
import json, sys
from pathlib import Path
work, steps_a = Path(sys.argv[1]), int(sys.argv[2])
def rows(d):
    p = d / "metrics.jsonl"
    out = []
    for line in p.read_text().splitlines() if p.exists() else []:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "loss" in r:
            out.append(r)
    return out
a = rows(work / "a")
val_a = [r["val_loss"] for r in a if "val_loss" in r]
if not val_a:
    sys.exit("no validation in phase A")
base = val_a[-1]
print(f"after corpus A ({steps_a} steps): A val loss {base:.4f}")
print(f"{'run':<10} {'A val after B':>14} {'rise':>8} {'B train loss':>13} {'new experts share by layer (steps after grow)':>50}")
for name in ("plain", "chilled", "chill-all"):
    r = [x for x in rows(work / name) if x["step"] > steps_a]
    if not r:
        print(f"{name:<10} (no steps: see {work / name}.log)")
        continue
    v = [x["val_loss"] for x in r if "val_loss" in x]
    layers = len(r[-1]["expert_load"])
    share = []
    for l in range(layers):
        new = sum(sum(x["expert_load"][l][8:]) for x in r)
        allp = sum(sum(x["expert_load"][l]) for x in r)
        share.append(f"{new / allp:.3f}" if allp else "-")
    va = f"{v[-1]:.4f}" if v else "-"
    rise = f"{v[-1] - base:+.4f}" if v else "-"
    print(f"{name:<10} {va:>14} {rise:>8} {r[-1]['loss']:>13.4f} {' '.join(share):>50}")
print("uniform share of 4 new among 12 experts: 0.333")
PY
[ -x "$root/tools/moe_report.py" ] || true
for name in plain chilled chill-all; do
  [ -f "$work/$name/metrics.jsonl" ] && /usr/bin/python3 "$root/tools/moe_report.py" "$work/$name" > /dev/null 2>&1 \
    && echo "report: $work/$name/report/ (expert_load.png: the new experts' rows appear at the grow)"
done
exit 0
