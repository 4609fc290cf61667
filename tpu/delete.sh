#!/usr/bin/env bash
# Delete the TPU VM / pod slice (billing stops; its disks and anything not fetched are gone).
#
#   tpu/delete.sh [NAME]        # default: $TPU_NAME (tpu/common.sh); add YES=1 to skip the prompt
set -euo pipefail
TPU_NAME="${1:-${TPU_NAME:-ftlab-tpu}}"
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flags=()
if [[ "${YES:-0}" == "1" ]]; then
  flags+=(--quiet)
fi
gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "${flags[@]+"${flags[@]}"}"
