#!/usr/bin/env bash
# Every shipped trace, from scratch: the corpus, each mini model's training, each recording, and
# the choice of traces/bles.npz. CPU only. Each mini trains 2200 steps of 16 x 128 tokens (4.5M
# tokens, a bit under one epoch of the train split), about 65 minutes at 2 threads on 2 idle cores
# (1.8 s a step, 2026-12-03). Pairs of runs train side by side at 1 thread each (3.3 s a step each,
# about 2 hours a pair: some 10% more throughput than one after the other). `cosmosim train` resumes an unfinished run folder and skips a finished one,
# so the script can be rerun after an interruption. Traces are 32,768 tokens (256 sequences of 128).
#
#   bash scripts/make_traces.sh                 # every stage, in order
#   bash scripts/make_traces.sh moe ladder-1    # some stages
#   NEXT=1 bash scripts/make_traces.sh moe      # the retraining in progress, below
#
# The retraining (docs/models.md, "The retraining"): the locality study's best setting, a tenth of the
# load-balance weight, for every MoE mini. With NEXT=1 runs go to runs/next and traces to traces/next,
# so the shipped set stays whole until the new one is; the dense minis have no router and are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
cosmosim=${COSMOSIM:-.venv/bin/cosmosim}
TOKENS=32768
STEPS=2200
if [[ -n ${NEXT:-} ]]; then
  RUNS=runs/next TRACES=traces/next ROUTER=(--load-balance-weight 0.001)
else
  RUNS=runs TRACES=traces ROUTER=()
fi

trace_of() {  # RUN: the trace it is recorded into
  case $1 in wearable-moe-mini) echo moe.npz ;; wearable-wd-mini) echo wd.npz ;; *) echo "$1.npz" ;; esac
}
# A run whose trace is recorded is done, even where its run folder went with an earlier machine.
train() {  # RUN CONFIG THREADS [overrides...]: train runs/RUN
  local run=$1 config=$2 threads=$3
  shift 3
  if [[ -f "$TRACES/$(trace_of "$run")" ]]; then echo "$run: $TRACES/$(trace_of "$run") is recorded already"; return; fi
  "$cosmosim" train --config "$config" --steps "$STEPS" --out "$RUNS/$run" --threads "$threads" "${ROUTER[@]}" "$@" \
    > "$RUNS/$run.log" 2>&1
}
record() {  # RUN TRACE
  [[ -d "$RUNS/$1" || ! -f "$TRACES/$2" ]] || return 0
  "$cosmosim" record --checkpoint "$RUNS/$1" --out "$TRACES/$2" --tokens "$TOKENS"
}
side_by_side() {  # two train commands (as strings of arguments) at 1 thread each
  train $1 & local first=$!
  train $2 & local second=$!
  wait "$first" && wait "$second"
}

# The committed tokenizer: BPE training is not reproducible run to run, and minis compared with each
# other must share token ids (traces/tokenizer.json is the one the WD minis and later were trained on).
stage_corpus() { [[ -f corpus/manifest.json ]] || "$cosmosim" corpus build --out corpus --tokenizer traces/tokenizer.json; }
stage_moe() {
  train wearable-moe-mini wearable-moe-mini 2
  record wearable-moe-mini moe.npz
}
# The BlES ladder: the MoE mini's architecture plus the BlES loss at weight λ, temperature τ.
stage_ladder_1() {
  side_by_side "bles-l1-t10 wearable-bles-mini 1" "bles-l3-t10 wearable-bles-mini 1 --bles-lambda 3"
  record bles-l1-t10 bles-l1-t10.npz
  record bles-l3-t10 bles-l3-t10.npz
}
stage_ladder_2() {
  side_by_side "bles-l0.3-t10 wearable-bles-mini 1 --bles-lambda 0.3" "bles-l1-t4 wearable-bles-mini 1 --bles-tau 4"
  record bles-l0.3-t10 bles-l0.3-t10.npz
  record bles-l1-t4 bles-l1-t4.npz
}
stage_select() {
  .venv/bin/python scripts/select_bles.py --baseline "$TRACES/moe.npz" "$TRACES"/bles-l*-t*.npz --out "$TRACES/bles.npz"
}
# WD experts (rank d/2 = 60 at d = 120) and the rank ladder at d/4 and 3d/4.
stage_wd() {
  side_by_side "wearable-wd-mini wearable-wd-mini 1" "wd-r30 wearable-wd-mini 1 --wd-rank 30"
  record wearable-wd-mini wd.npz
  record wd-r30 wd-r30.npz
}
stage_wd_r90() {
  if [[ -n ${NEXT:-} ]]; then train wd-r90 wearable-wd-mini 2 --wd-rank 90  # the dense FA mini is kept
  else side_by_side "wd-r90 wearable-wd-mini 1 --wd-rank 90" "wearable-dense-fa-mini wearable-dense-fa-mini 1"; fi
  record wd-r90 wd-r90.npz
}
stage_dense_pa() { train wearable-dense-pa-mini wearable-dense-pa-mini 2; }
# The locality study (docs/models.md): the MoE mini with one setting changed and everything else
# equal; the MoE stage's run is the control. Not among the default stages.
stage_study_1() {
  side_by_side "study-batch-balance wearable-moe-mini 1 --load-balance-level batch" \
    "study-balance-0.001 wearable-moe-mini 1 --load-balance-weight 0.001"
}
# The router: no z-loss, and a router learning rate a tenth of the rest's.
stage_study_2() {
  side_by_side "study-no-z-loss wearable-moe-mini 1 --z-loss-weight 0" \
    "study-router-lr-0.1 wearable-moe-mini 1 --router-lr-scale 0.1"
}
# BlES (λ = 1, τ = 10) on top of each of the first pair's settings: is its cut one of order at even
# usage (batch-level balance) or does it stack on the imbalance a tenth of the weight allows?
stage_study_bles() {
  side_by_side "study-bles-balance-0.001 wearable-bles-mini 1 --load-balance-weight 0.001" \
    "study-bles-batch-balance wearable-bles-mini 1 --load-balance-level batch"
}
# Run-to-run noise: the first pair's best locality again with another seed (weights and batches).
stage_study_seed() { train study-balance-0.001-seed1 wearable-moe-mini 2 --load-balance-weight 0.001 --seed 1; }
# WD factors trained at three times the learning rate: a product of two factors moves about half as
# fast as one matrix under the same Adam steps (docs/models.md). With NEXT=1 it is at the retraining's
# balance weight; if it closes the WD mini's gap to the MoE mini, the wd stages take its setting.
stage_study_wd_lr() { train study-wd-lr-3 wearable-wd-mini 2 --wd-lr-scale 3; }
stage_minis() { .venv/bin/python scripts/summarize_minis.py "$RUNS"/*/ --out "$TRACES/minis.json"; }

mkdir -p "$RUNS" "$TRACES"
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(corpus moe ladder-1 ladder-2 select wd wd-r90 dense-pa minis)
for stage in "${stages[@]}"; do
  "stage_${stage//-/_}"
done
