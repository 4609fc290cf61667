#!/usr/bin/env bash
# Copy a run's workdir from worker 0 (process 0 writes metrics.jsonl, results.json, config.json and the
# exported δ; with a bucket-backed workdir you can also read them from the bucket directly).
#
#   tpu/fetch.sh runs/sst2_full [LOCAL_DEST]      # default LOCAL_DEST: ./tpu-runs/
#   SKIP_CHECKPOINTS=1 tpu/fetch.sh runs/sst2_full   # leave the (large) Orbax checkpoints behind
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $# -lt 1 ]]; then
  echo "usage: tpu/fetch.sh WORKDIR [LOCAL_DEST]   (WORKDIR as given to tpu/run.sh)" >&2
  exit 2
fi
workdir="$1"
dest="${2:-tpu-runs}"
mkdir -p "$dest"
# A relative workdir lives under ~/$REMOTE_DIR on the worker; ~/x is x relative to the remote home.
if [[ "$workdir" == "~/"* ]]; then
  remote="${workdir#"~/"}"
elif [[ "$workdir" != /* ]]; then
  remote="$REMOTE_DIR/$workdir"
else
  remote="$workdir"
fi

if [[ "${SKIP_CHECKPOINTS:-0}" == "1" ]]; then
  name="$(basename "$workdir")"
  remote_q="$(quote_args "$remote")"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=0 \
    --command "tar -C \"\$(dirname $remote_q)\" --exclude=checkpoints -czf /tmp/ftlab-fetch.tar.gz \"\$(basename $remote_q)\""
  gcloud compute tpus tpu-vm scp "$TPU_NAME:/tmp/ftlab-fetch.tar.gz" "$dest/$name.tar.gz" "${GCLOUD_FLAGS[@]}" --worker=0
  tar -C "$dest" -xzf "$dest/$name.tar.gz" && rm "$dest/$name.tar.gz"
else
  gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$remote" "$dest/" "${GCLOUD_FLAGS[@]}" --worker=0
fi
echo "fetched into $dest/$(basename "$workdir")" >&2
