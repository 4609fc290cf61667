#!/usr/bin/env bash
# The README's second command: install if needed, lint, then the default test suite (tests marked `slow`
# are left to CI: `.ci/run` runs them after this). Extra arguments go to pytest (e.g. -m slow, -k lora).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check ftlab scripts tests configs
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
.venv/bin/python -m pytest -q "$@"
