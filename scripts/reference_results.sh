#!/usr/bin/env bash
# Regenerate the committed CounterFact reference results under results/ (100 cases of the `edit`
# split; SPLIT=rome500 for the ROME-format split). Every run measures the scope tests and model
# health (on by default). Each run directory is resumable; delete it to recompute from scratch.
# Usage: [MODEL=smollm2-135m|gemma3-270m] [SPLIT=edit|rome500] [LIMIT=100] [RUN_ARGS="--device cuda --dtype bfloat16"]
#        bash scripts/reference_results.sh [EDITBENCH_BIN]
#   (2-core CPU, one thread per model: SmolLM2 edit about 2.5 h, Gemma-3-270M edit about 4 h)
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${1:-.venv/bin/editbench}
M=${MODEL:-smollm2-135m}
SPLIT=${SPLIT:-edit}
LIMIT=${LIMIT:-100}
OUT=results/$M/counterfact-$SPLIT
read -r -a EXTRA <<< "${RUN_ARGS:-}"   # e.g. the GPU path; the committed runs used the CPU float32 default
run() { local name=$1; shift; echo "== $name"; /usr/bin/time -f "$name wall %e s" "$EB" run --model $M --split $SPLIT --limit $LIMIT --quiet --out "$OUT/$name" "${EXTRA[@]}" "$@"; }

case $M in
  smollm2-135m) STEER=0.05; S2E=(--strengths 1,2) ;;
  # on Gemma 3 the neuron edits collapse both targets (degenerate); heads only is the usable configuration
  gemma3-270m)  STEER=0.02; S2E=(--strengths 0.5,1 --param rho_mlp=-1) ;;
  *) echo "reference_results.sh: MODEL must be smollm2-135m or gemma3-270m" >&2; exit 2 ;;
esac

run unedited        --method unedited
run mega            --method mega           --strengths 1
run mega-nogate     --method mega           --strengths 1 --param gate=off   # the gate ablation
run rome            --method rome
run grace           --method grace
run memit           --method memit
run steering-gated  --method steering-gated --strengths $STEER               # the gate, without MEGA's vectors
run steering        --method steering       --strengths $STEER
run ft              --method ft
run steer2edit      --method steer2edit     "${S2E[@]}"
