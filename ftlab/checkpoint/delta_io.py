"""Save and load δ alone: `delta.safetensors` (the method's `to_disk` arrays) + `delta.json`.

`delta.json` holds the method, its config, the base's identity (source and hash of θ₀'s pretrained
leaves) and the exact byte counts; loading checks the hash of the base it is applied to. Both files are
written into a temporary directory that is renamed into place, so a crash never leaves half a delta.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ftlab import deltas


class DeltaError(ValueError):
    """A stored delta that does not fit the base or is damaged."""


def save(
    directory: str,
    method: str,
    config: Mapping[str, Any],
    delta: Any,
    base_source: str,
    base_hash: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write δ; returns the metadata written (with `array_bytes` = Σ bytes of the stored arrays)."""
    module = deltas.get(method)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in module.to_disk(delta).items()}
    meta = {
        "method": method,
        "config": dict(config),
        "base_source": base_source,
        "base_hash": base_hash,
        "array_bytes": int(sum(a.nbytes for a in arrays.values())),
        "num_arrays": len(arrays),
        **(dict(extra) if extra else {}),
    }
    parent = os.path.dirname(os.path.abspath(directory)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".delta-tmp-", dir=parent)
    try:
        save_file(arrays, os.path.join(tmp, "delta.safetensors"), metadata={"method": method})
        meta["file_bytes"] = os.path.getsize(os.path.join(tmp, "delta.safetensors"))
        with open(os.path.join(tmp, "delta.json"), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        if os.path.exists(directory):
            old = directory.rstrip("/") + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def load(directory: str, base_params: Any, base_hash: str | None) -> tuple[str, dict, Any]:
    """(method, config, δ). Raises DeltaError if the base hash differs or files are missing/damaged."""
    meta_path = os.path.join(directory, "delta.json")
    arr_path = os.path.join(directory, "delta.safetensors")
    for p in (meta_path, arr_path):
        if not os.path.isfile(p):
            raise DeltaError(f"{p}: missing (not a saved delta directory?)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        arrays = load_file(arr_path)
    except Exception as e:
        raise DeltaError(f"{directory}: damaged delta files: {type(e).__name__}: {e}") from e
    if base_hash is not None and meta.get("base_hash") != base_hash:
        raise DeltaError(
            f"{directory}: this delta was trained on base {meta.get('base_source')} with hash "
            f"{meta.get('base_hash')}, but the base given has hash {base_hash}; refusing to apply it"
        )
    module = deltas.get(meta["method"])
    return meta["method"], meta["config"], module.from_disk(arrays, base_params, meta["config"])
