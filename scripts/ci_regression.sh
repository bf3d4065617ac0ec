#!/usr/bin/env bash
# CI regression check: rerun a small, fast configuration on the embedded SmolLM2-135M (the first 20
# CounterFact `edit` cases; the unedited model and Steer2Edit at strength 1) into a temporary
# directory and compare each run with the committed reference in results/ci using
# `editbench compare` (a metric regresses when it drops by more than its tolerance AND leaves the
# reference's 95% CI; see harness/compare.py).
#
#   bash scripts/ci_regression.sh                  # check; exit 0 ok, 1 regression, 2 not comparable
#   bash scripts/ci_regression.sh --format github  # also print ::error/::warning annotations
#   bash scripts/ci_regression.sh --update         # regenerate results/ci (how it was produced)
#
# Env: EB = editbench executable (default .venv/bin/editbench); EDITBENCH_DATA as for `editbench run`.
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${EB:-.venv/bin/editbench}
REF=results/ci
FORMAT=text
UPDATE=0
while [ $# -gt 0 ]; do
  case $1 in
    --update) UPDATE=1 ;;
    --format) FORMAT=$2; shift ;;
    --format=*) FORMAT=${1#--format=} ;;
    *) echo "ci_regression.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

COMMON=(--model smollm2-135m --split edit --limit 20 --quiet)
NAMES=(unedited steer2edit)
args_for() {
  case $1 in
    unedited)   echo "--method unedited" ;;
    steer2edit) echo "--method steer2edit --strengths 1" ;;
  esac
}

start=$SECONDS
if [ $UPDATE = 1 ]; then
  for name in "${NAMES[@]}"; do
    rm -rf "${REF:?}/$name"
    # shellcheck disable=SC2046
    "$EB" run "${COMMON[@]}" $(args_for "$name") --out "$REF/$name" >/dev/null
    echo "wrote $REF/$name"
  done
  echo "ci_regression.sh: reference regenerated in $((SECONDS - start)) s"
  exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
status=0
for name in "${NAMES[@]}"; do
  [ -f "$REF/$name/summary.json" ] || { echo "ci_regression.sh: missing reference $REF/$name/summary.json" >&2; exit 2; }
  # shellcheck disable=SC2046
  "$EB" run "${COMMON[@]}" $(args_for "$name") --out "$TMP/$name" >/dev/null
  rc=0
  "$EB" compare "$TMP/$name" "$REF/$name" --format "$FORMAT" || rc=$?
  if [ $rc -gt $status ]; then status=$rc; fi
done
echo "ci_regression.sh: exit $status after $((SECONDS - start)) s"
exit $status
