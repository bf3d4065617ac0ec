#!/usr/bin/env bash
# Regenerate the committed CounterFact reference results under results/ (100 cases of the `edit`
# split). Each run directory is resumable; delete it to recompute from scratch.
# Usage: [MODEL=smollm2-135m|gemma3-270m] bash scripts/reference_results.sh [EDITBENCH_BIN]
#   (SmolLM2: about an hour on 2 CPU cores; Gemma-3-270M: about 15 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${1:-.venv/bin/editbench}
M=${MODEL:-smollm2-135m}
OUT=results/$M/counterfact-edit
run() { local name=$1; shift; echo "== $name"; /usr/bin/time -f "$name wall %e s" "$EB" run --model $M --split edit --limit 100 --quiet --out "$OUT/$name" "$@"; }

if [ "$M" = gemma3-270m ]; then
  run unedited        --method unedited
  run steering        --method steering       --strengths 0.02,0.05,0.1,0.2
  run steer2edit      --method steer2edit     --strengths 0.25,0.5,1,2
  # heads only (rho_mlp off): on Gemma 3 the neuron edits cost most of the specificity
  run steer2edit-heads --method steer2edit    --strengths 0.5,1,2,4 --param rho_mlp=-1
  run mega            --method mega           --strengths 0.5,1,2
  exit 0
fi
[ "$M" = smollm2-135m ] || { echo "reference_results.sh: MODEL must be smollm2-135m or gemma3-270m" >&2; exit 2; }

# post-edit attribution study (FT-L editor, train split) -> MEGA's region artifact
STUDY=results/$M/attribution-ft-train100
[ -f "$STUDY/region.json" ] || "$EB" attribute --model $M --limit 100 --out "$STUDY"

run unedited        --method unedited
run ft              --method ft
run steering        --method steering       --strengths 0.02,0.05,0.1,0.2
run steering-layer  --method steering-layer --strengths 0.05,0.1,0.2,0.3
run steer2edit      --method steer2edit     --strengths 0.25,0.5,1,2,4
run mega            --method mega           --strengths 0.25,0.5,1,2
run mega-region     --method mega           --strengths 0.5,1,2 --param region_file=$STUDY/region.json
run mega-contrast   --method mega           --strengths 0.5,1,2,4 --param mode=contrast
