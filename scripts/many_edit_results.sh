#!/usr/bin/env bash
# Many-edit reference results (issue 31), the part that fits a 2-core CPU: sequential CounterFact
# curves (T = 1, 10, 100) for the methods whose edits are cheap to fit, and single-edit zsRE tables.
# Each run directory is resumable; delete it to recompute from scratch.
# Usage: [MODEL=smollm2-135m|gemma3-270m] [LIMIT=100] [METHODS="mega grace ft"] bash scripts/many_edit_results.sh [EDITBENCH_BIN]
#   (SmolLM2, 1 thread: about 10 min per sequential method, 5-10 min per zsRE run)
# Not run here for lack of CPU time: sequential rome / memit / alphaedit (about 40 s per ROME edit on
# this CPU) and T = 1000; `editbench run --method alphaedit --sequential --edit-batch-size 10 ...` is
# the command for them.
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${1:-.venv/bin/editbench}
M=${MODEL:-smollm2-135m}
LIMIT=${LIMIT:-100}
METHODS=${METHODS:-mega grace ft}
for method in $METHODS; do
  echo "== sequential $method"
  "$EB" run --model "$M" --method "$method" --sequential --checkpoints 1,10,$LIMIT --limit "$LIMIT" --quiet \
    --out "results/$M/sequential-counterfact/$method"
done
for method in unedited $METHODS; do
  echo "== zsre $method"
  "$EB" run --model "$M" --benchmark zsre --method "$method" --limit "$LIMIT" --quiet --out "results/$M/zsre/$method"
done
