#!/usr/bin/env bash
# Run one training command on every worker at once (JAX's multi-controller model: the same program on all
# hosts). Arguments are those of scripts/train.py.
#
#   tpu/run.sh --config configs/sst2_full.py --workdir runs/sst2_full [--config.key=value ...]
#
# Every worker gets FTLAB_DISTRIBUTED=auto: ftlab.parallel.initialize() then calls
# jax.distributed.initialize() with no arguments, which finds the slice's coordinator, process count and
# process id from the TPU VM metadata (one host: one process, harmless). On a pod slice the --workdir must be
# shared by all workers (e.g. runs/, the bucket `BUCKET=... tpu/setup.sh` mounts there): Orbax writes each
# worker's shards into the same checkpoint directory. A relative --workdir is relative to ~/$REMOTE_DIR; do
# not write ~/... unquoted (your local shell would expand it to your local home).
#
# Output of all workers streams here (prefixed by gcloud per worker); stop with Ctrl-C, which ends the
# ssh sessions (and with them the training processes). LOG=FILE also writes each worker's output to
# ~/$REMOTE_DIR/FILE on that worker.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $# -eq 0 ]]; then
  echo "usage: tpu/run.sh --config configs/<exp>.py[:variant] --workdir DIR [--config.key=value ...]" >&2
  exit 2
fi

args="$(quote_args "$@")"
remote_dir="$(quote_args "$REMOTE_DIR")"
distributed="$(quote_args "${FTLAB_DISTRIBUTED:-auto}")"
redirect=""
if [[ -n "${LOG:-}" ]]; then
  redirect=" 2>&1 | tee $(quote_args "$LOG")"
fi
on_all_workers "set -euo pipefail
cd $remote_dir
export HF_HUB_OFFLINE=1 FTLAB_DISTRIBUTED=$distributed
.venv/bin/python scripts/train.py $args$redirect"
