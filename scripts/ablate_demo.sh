#!/usr/bin/env bash
# The paper's ablations (Sec. IV-E) at demo scale. Every variant x seed is an `instruct` run from the
# demo's CEM checkpoint, shorter than the demo's, then `unirs eval` on the held-out test split of its
# task(s); finally scripts/ablation_table.py. Rerun after a kill: finished runs and evals are skipped,
# an interrupted run resumes from its newest state-<step>.
#
#   scripts/ablate_demo.sh [SEEDS...]           default seeds 0 1, into runs/ablation
#   SMOKE=1 scripts/ablate_demo.sh [SEEDS...]   same chain on a tiny synthetic set, 3 steps per run
#
# Variants (Tables VIII-X):  joint  |  rsvqa, levircc, era (single-task)  |  joint-nocem,
#   levircc-nocem (no CEM: a pair goes in as 2 frames, like a video)  |  joint-clue (prompt augmentation)
# Every run trains on the demo's mixture (configs/demo-instruct.json) restricted to its tasks. Joint
# runs take STEPS optimizer steps; a single-task run takes STEPS x its share of the joint mixture, so
# it sees as many samples of its task as a joint run (the paper's protocol: same data, alone or mixed).
# Seeds change the data order (the starting checkpoint is the same for every run).
#
# Environment: PYTHON (.venv/bin/python), LAUNCH ("$PYTHON -m"; e.g. "accelerate launch -m"),
# DEMO (runs/demo: data/, align/checkpoint = the base VLM writing clues, cem/checkpoint),
# ABL (runs/ablation, or runs/ablation-smoke), STEPS, BATCH, VARIANTS (a space-separated subset),
# SET (more space-separated key=value overrides for every run, e.g. "max_length=1024 lr=1e-4").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
LAUNCH=${LAUNCH:-"$PYTHON -m"}
DEMO=${DEMO:-runs/demo}
CONFIG=configs/demo-instruct.json
BASE=$DEMO/align/checkpoint
START=$DEMO/cem/checkpoint
if [[ ${SMOKE:-0} == 1 ]]; then
  ABL=${ABL:-runs/ablation-smoke}
  DATA=$ABL/data
  STEPS=${STEPS:-3}
  BATCH=${BATCH:-16}
else
  ABL=${ABL:-runs/ablation}
  DATA=$DEMO/data
  STEPS=${STEPS:-710}   # joint runs: ~9.5 min at ~0.8 s/step on 2 free cores (240 left every variant at its prior)
  BATCH=${BATCH:-16}
fi
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1)
read -r -a VARIANTS <<< "${VARIANTS:-joint rsvqa levircc era joint-nocem levircc-nocem joint-clue}"
OVERRIDES=()
for item in ${SET:-}; do OVERRIDES+=(--set "$item"); done
CLUES=$ABL/clues
unirs() { $PYTHON -m unirs_engine.cli "$@"; }

for needed in "$START" "$BASE"; do
  [[ -f "$needed/config.json" ]] || { echo "missing $needed (run scripts/train_demo.sh first)" >&2; exit 2; }
done
if [[ ${SMOKE:-0} == 1 && ! -f "$DATA/manifest.json" ]]; then
  echo "== tiny synthetic benchmark -> $DATA"
  unirs synth --out "$DATA" --seed 1 --images 8 --pairs 8 --videos 6 --size 256 --splits 0.5 0 0.5 --quiet
  unirs synth --out "$DATA/more-videos" --seed 2 --images 0 --pairs 0 --videos 6 --size 256 --splits 1 0 0 \
    --quiet
fi

# The runs' data, from the demo mixture of $CONFIG with roots under $DATA:
#   helper plan VARIANT -> two lines: the run's `data` (JSON) and its optimizer steps
#   helper clues        -> one line per dataset: NAME TASK ROOT [--option KEY=VALUE ...], NAME names its
#                          clue file (one task may be listed twice, e.g. era and more-videos/era)
HELPER='
import json, math, sys
from unirs_engine.train.config import DatasetSpec
from unirs_engine.train.data import read_spec

config, data, clues, steps, mode, *variant = sys.argv[1:]
# roots in the config are under runs/demo/data (train_demo.sh): the same folders under $DATA here
joint = [{**d, "root": data + "/" + d["root"].removeprefix("runs/demo/data/"), "name": str(i) + "-" + d["task"]}
         for i, d in enumerate(json.load(open(config))["data"])]
if mode == "clues":
    for d in joint:
        print(d["name"], d["task"], d["root"],
              *(f"--option {k}={json.dumps(v)}" for k, v in d.get("options", {}).items()))
    sys.exit()
variant = variant[0]
only = {"rsvqa": {"rsvqa-lr", "synthetic-comparisons", "synthetic-counts"}, "levircc": {"levir-cc"},
        "era": {"era"}, "levircc-nocem": {"levir-cc"}}
specs = [dict(d) for d in joint if d["task"] in only.get(variant, {d["task"]})]
for d in specs:
    if variant.endswith("-nocem") and d["task"] == "levir-cc":
        d["pair_as_frames"] = True
    if variant == "joint-clue":
        d["clues"] = clues + "/" + d["name"] + ".jsonl"
for d in joint + specs:
    del d["name"]

def items(specs):  # training items, counted as the instruct stage counts them
    total = 0
    for spec in (DatasetSpec(**d) for d in specs):
        samples = read_spec(spec)
        per = sum(max(1, len(s.references)) for s in samples) if spec.all_references else len(samples)
        total += per * spec.repeat
    return total

print(json.dumps(specs, separators=(",", ":")))
print(max(1, math.ceil(int(steps) * items(specs) / items(joint))))
'
helper() { $PYTHON -c "$HELPER" "$CONFIG" "$DATA" "$CLUES" "$STEPS" "$@"; }

resume_args() {  # the newest state-<step> of a run folder, as --resume arguments (none if fresh)
  local latest
  latest=$(ls -d "$1"/state-* 2>/dev/null | sort -t- -k2 -n | tail -n 1 || true)
  [[ -n "$latest" ]] && echo "--resume $latest" || true
}

write_clues() {  # the base VLM's clue for every training sample (resumable)
  local name task root options
  while read -r name task root options; do
    echo "== clues: $task ($root)"
    # shellcheck disable=SC2086
    unirs clues --model "$BASE" --task "$task" --data "$root" --split train \
      --out "$CLUES/$name.jsonl" --batch-size 16 $options
  done < <(helper clues)
}

run() {  # run VARIANT SEED: train (unless its checkpoint exists), then evaluate each of its tasks
  local variant=$1 seed=$2 out=$ABL/$1/seed$2 data steps t0=$SECONDS extra=() eval_extra=() tasks planned
  mapfile -t planned < <(helper plan "$variant")
  [[ ${#planned[@]} == 2 ]] || { echo "cannot plan $variant (see the error above)" >&2; exit 2; }
  data=${planned[0]} steps=${planned[1]}
  case $variant in
    rsvqa) tasks=(rsvqa-lr) ;;
    levircc | levircc-nocem) tasks=(levir-cc) ;;
    era) tasks=(era) ;;
    *) tasks=(rsvqa-lr levir-cc era) ;;
  esac
  [[ $variant == *-nocem ]] && extra=(--set drop_change_module=true) && eval_extra=(--pairs-as-frames)
  # the recipe's count head reads single images' counts: a run without RSVQA has none to read
  [[ $variant == levircc* || $variant == era ]] && extra+=(--set count_weight=0)
  [[ $variant == joint-clue ]] && eval_extra=(--clue --clue-model "$BASE")
  if [[ -d "$out/instruct/checkpoint" ]]; then
    echo "== $variant seed $seed: trained, skipping"
  else
    echo "== $variant seed $seed: $steps steps of $BATCH"
    # shellcheck disable=SC2046
    $LAUNCH unirs_engine.cli train instruct --config "$CONFIG" --set "out=$out/instruct" \
      --set "model=$START" --set "seed=$seed" --set "data=$data" --set "max_steps=$steps" \
      --set "batch_size=$BATCH" --set save_every=50 --set log_every=10 "${extra[@]}" "${OVERRIDES[@]}" \
      $(resume_args "$out/instruct")
  fi
  for task in "${tasks[@]}"; do
    local folder
    case $task in rsvqa-lr) folder=rsvqa ;; levir-cc) folder=levircc ;; era) folder=era ;; esac
    if [[ -f "$out/eval/$task/report.json" ]]; then
      echo "== $variant seed $seed: $task evaluated, skipping"
      continue
    fi
    unirs eval --model "$out/instruct/checkpoint" --task "$task" --data "$DATA/$folder" \
      --out "$out/eval/$task" --split test --batch-size 16 "${eval_extra[@]}" > /dev/null
  done
  echo "== $variant seed $seed: done in $((SECONDS - t0)) s"
}

[[ " ${VARIANTS[*]} " == *" joint-clue "* ]] && write_clues
for seed in "${SEEDS[@]}"; do
  for variant in "${VARIANTS[@]}"; do
    run "$variant" "$seed"
  done
done
$PYTHON scripts/ablation_table.py "$ABL" --out "$ABL/table.md"
