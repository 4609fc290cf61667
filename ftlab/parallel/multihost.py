"""Several processes (hosts), one program: start-up from the launcher's environment, host ↔ global arrays.

The same command runs on every worker. `initialize()` must come before anything touches a JAX device.
Each process reads its own slice of every batch (`ftlab.data.batching.batches(process_index=...,
process_count=...)`); `global_batch` assembles the slices into one array split over (data, fsdp).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from ftlab.parallel.sharding import batch_sharding

# The launcher's environment (JAX's own names; the first is also read by jax.distributed itself).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_AUTO = "FTLAB_DISTRIBUTED"  # 'auto': let JAX detect the cluster (Cloud TPU pod slices, SLURM, Open MPI)


def initialize(env: Mapping[str, str] | None = None) -> bool:
    """Join the other processes via `jax.distributed.initialize`; returns whether it did.

    With JAX_COORDINATOR_ADDRESS set, JAX_NUM_PROCESSES and JAX_PROCESS_ID give the rest (left unset, JAX
    detects them on supported clusters); with FTLAB_DISTRIBUTED=auto everything is detected. Without
    either, or with JAX_NUM_PROCESSES=1, this is a single-process run and nothing happens. Calling it twice
    is harmless."""
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    address = env.get(ENV_COORDINATOR)
    if address:
        n = env.get(ENV_NUM_PROCESSES)
        if n is not None and int(n) == 1:
            return False
        pid = env.get(ENV_PROCESS_ID)
        jax.distributed.initialize(address, int(n) if n is not None else None,
                                   int(pid) if pid is not None else None)
        return True
    if env.get(ENV_AUTO, "").lower() == "auto":
        jax.distributed.initialize()
        return True
    if env.get(ENV_NUM_PROCESSES) not in (None, "1") or env.get(ENV_PROCESS_ID) not in (None, "0"):
        raise ValueError(f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID} are set but {ENV_COORDINATOR} is not")
    return False


def global_batch(local: Mapping[str, Any], mesh: Mesh, whole: bool = False) -> dict[str, jax.Array]:
    """This process's batch slice (leaves [b, ...], b = B / process_count) -> global arrays [B, ...] split
    over (data, fsdp). Single process: the same as device_put with `batch_sharding(mesh)`.

    The slices are placed in the order of the global rows the processes' devices hold, which need not be
    process order: fine for a training step (a permutation of the batch), not for outputs read back row by
    row. `whole=True`: every process passes the whole batch [B, ...] (the same on all) and each puts only
    its devices' rows; the global array's rows are then exactly the batch's (evaluation uses this)."""
    sharding = batch_sharding(mesh)
    n = 1 if whole else jax.process_count()

    def one(v):
        v = np.asarray(v)
        return jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * n, *v.shape[1:]))

    return {k: one(v) for k, v in local.items()}


def shard(x: Any, shardings: Any) -> Any:
    """Tree of host values (NumPy or single-device arrays, the same on every process) -> global arrays laid
    out by `shardings` (a matching tree of NamedShardings, or one). Each process builds only its shards."""

    def one(a, s: NamedSharding):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    if isinstance(shardings, NamedSharding):
        return jax.tree_util.tree_map(lambda a: one(a, shardings), x)
    return jax.tree_util.tree_map(one, x, shardings)


def to_host(x: Any) -> Any:
    """Tree of global arrays -> NumPy on every process (gathering shards other processes hold)."""
    if jax.process_count() == 1:
        return jax.device_get(x)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(
        lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)) if isinstance(a, jax.Array)
        else a, x)
