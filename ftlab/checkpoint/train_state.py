"""Orbax train-state checkpoints: atomic, resumable, refused when the workdir belongs to another config.

Orbax writes each step into a temporary directory and renames it when complete, so a process killed while
writing (SIGKILL included) leaves the previous checkpoint intact; unfinished temporaries are ignored on
restore. Next to the array state we store a small JSON `meta` (loop counters, best score, the config
fingerprint) in the same atomic step directory.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: other config, corrupt or partial files."""


def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    mngr.wait_until_finished()


def latest(mngr: ocp.CheckpointManager) -> int | None:
    return mngr.latest_step()


def restore(mngr: ocp.CheckpointManager, step: int, like_state: Any) -> tuple[Any, dict]:
    """Restore (state, meta) at `step`, with the structure, shapes and dtypes of `like_state`."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
    path = os.path.join(str(mngr.directory), str(step))
    try:
        out = mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
    except Exception as e:  # orbax raises many types for damaged files; name the directory
        raise CheckpointError(
            f"checkpoint {path} is corrupt or partial and cannot be restored: "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from e
    return out["state"], out["meta"]
