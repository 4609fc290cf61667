#!/usr/bin/env bash
# The README's first command: install, then fine-tune MiniLM on the SST-2 copy shipped inside ftlab
# (20,000 training sentences, one epoch) and print the dev accuracy. Offline; ~10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/python scripts/train.py --config configs/sst2_full.py:quick --workdir "${WORKDIR:-runs/quickstart}" "$@"
.venv/bin/python - "${WORKDIR:-runs/quickstart}" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/results.json"))
print(f"SST-2 dev accuracy: {r['best_metrics']['accuracy']:.4f}  ({r['train_steps']} steps, "
      f"{r['steps_per_second']:.2f} steps/s, results in {sys.argv[1]}/results.json)")
PY
