#!/usr/bin/env bash
# Create a Cloud TPU VM (one host, e.g. v4-8) or pod slice (several hosts, e.g. v4-32).
#
#   tpu/create.sh [NAME [ZONE [ACCELERATOR_TYPE [VERSION]]]]
#   ACCELERATOR_TYPE=v4-32 TPU_NAME=ftlab-pod tpu/create.sh
#   SPOT=1 tpu/create.sh             # a spot (preemptible) VM; resume by re-running tpu/run.sh
#
# Arguments override the environment (see tpu/common.sh for the defaults).
set -euo pipefail

TPU_NAME="${1:-${TPU_NAME:-ftlab-tpu}}"
ZONE="${2:-${ZONE:-us-central2-b}}"
ACCELERATOR_TYPE="${3:-${ACCELERATOR_TYPE:-v4-8}}"
TPU_VERSION="${4:-${TPU_VERSION:-tpu-ubuntu2204-base}}"
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

extra=()
if [[ "${SPOT:-0}" == "1" ]]; then
  extra+=(--spot)
fi

echo "creating $TPU_NAME: $ACCELERATOR_TYPE ($TPU_VERSION) in $ZONE" >&2
gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION" "${extra[@]+"${extra[@]}"}"
gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
  --format='value(state,acceleratorType,networkEndpoints[].ipAddress)'
