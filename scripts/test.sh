#!/usr/bin/env bash
# The README's second command (and what CI runs): install if needed, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check ftlab scripts tests configs
.venv/bin/python -m pytest -q "$@"
