# Shared settings for the tpu/*.sh scripts (sourced, not run). Every value can be set in the environment.
#   TPU_NAME          name of the TPU VM / pod slice            (default: ftlab-tpu)
#   ZONE              zone with capacity for ACCELERATOR_TYPE   (default: us-central2-b, where v4 lives)
#   ACCELERATOR_TYPE  v4-8 = one host, 4 chips; v4-32 = 4 hosts (16 chips)        (default: v4-8)
#   TPU_VERSION       TPU VM software image                    (default: tpu-ubuntu2204-base, for v4)
#   PROJECT           gcloud project ('' = gcloud's configured default)
#   REMOTE_DIR        where the repository lives on every worker (default: ftlab, i.e. ~/ftlab)
# shellcheck shell=bash

TPU_NAME="${TPU_NAME:-ftlab-tpu}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
REMOTE_DIR="${REMOTE_DIR:-ftlab}"

# Flags every gcloud call gets.
GCLOUD_FLAGS=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then
  GCLOUD_FLAGS+=(--project="$PROJECT")
fi

# The repository root (the parent of this tpu/ folder).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Run a shell command on every worker of the slice (the same command everywhere).
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command "$1"
}

# Quote arguments so that they survive the remote shell unchanged.
quote_args() {
  local out="" a
  for a in "$@"; do
    out+="$(printf '%q' "$a") "
  done
  printf '%s' "${out% }"
}
