#!/usr/bin/env bash
# Run a list of experiment configs one after another and copy each results.json to docs/results/<name>.json.
# Usage: bash scripts/run_experiments.sh mrpc_full stsb_full ...   (names of configs/<name>.py[:variant])
# Data other than the shipped SST-2: set FTLAB_DATA (e.g. ../shared/data on the development machines).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
export FTLAB_DATA=${FTLAB_DATA:-$(cd .. && pwd)/shared/data}
mkdir -p runs docs/results
for spec in "$@"; do
  name=${spec//:/_}
  echo "[run_experiments] $(date -u +%H:%M:%S) start $spec"
  if .venv/bin/python scripts/train.py --config "configs/${spec%%:*}.py${spec#"${spec%%:*}"}" --workdir "runs/$name" \
       --config.train.progress=false > "runs/$name.log" 2>&1; then
    cp "runs/$name/results.json" "docs/results/$name.json"
    echo "[run_experiments] $(date -u +%H:%M:%S) done $spec: $(tail -1 runs/$name.log)"
  else
    echo "[run_experiments] $(date -u +%H:%M:%S) FAILED $spec (see runs/$name.log)"
  fi
done
