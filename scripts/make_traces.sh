#!/usr/bin/env bash
# Every shipped trace, from scratch: the corpus, each mini model's training, each recording.
# CPU only; each training run is sized to about 40 minutes on 2 cores. A run folder that already
# holds a finished run is skipped by `cosmosim train` (it resumes an unfinished one), so this script
# can be rerun after an interruption. Usage: bash scripts/make_traces.sh [STAGE...]
# (stages: corpus moe bles wd ladder wd-ranks dense minis; default: all, in that order)
set -euo pipefail
cd "$(dirname "$0")/.."
cosmosim=${COSMOSIM:-.venv/bin/cosmosim}
TOKENS=32768     # recorded tokens per trace: 256 sequences of 128 (>= 16k tokens, < 5 MB)
STEPS=2200       # ~40 min at ~1.05 s/step for the 19-layer minis on 2 cores

train_and_record() {  # NAME CONFIG TRACE [train options...]
  local name=$1 config=$2 trace=$3
  shift 3
  "$cosmosim" train --config "$config" --out "runs/$name" --threads 2 "$@"
  [[ -z $trace ]] || "$cosmosim" record --checkpoint "runs/$name" --out "traces/$trace" --tokens "$TOKENS"
}

stage_corpus()   { [[ -f corpus/manifest.json ]] || "$cosmosim" corpus build --out corpus; }
stage_moe()      { train_and_record wearable-moe-mini wearable-moe-mini moe.npz --steps "$STEPS"; }
stage_bles()     { train_and_record wearable-bles-mini wearable-bles-mini bles-l1-t10.npz --steps "$STEPS"; }

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(corpus moe bles)
for stage in "${stages[@]}"; do
  "stage_${stage//-/_}"
done
