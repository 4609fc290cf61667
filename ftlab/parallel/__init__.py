"""Scale out: a (data, fsdp, tensor) device mesh from config, path-regex sharding rules for θ₀ that δ,
optimizer state and batches inherit, and multi-host start-up and host ↔ global arrays.

How a sharded run is put together (what `ftlab.train.loop` does with `config.parallel`):

    parallel.initialize()                                   # before any device is touched; no-op on one host
    mesh = parallel.make_mesh(cfg.parallel)                 # (data, fsdp, tensor), -1 fills
    sh = parallel.train_shardings(mesh, state, params, cfg.parallel.rules)   # {'state', 'base', 'batch'}
    print(parallel.describe(params, mesh, cfg.parallel.rules, delta))        # the table, once
    state, params = parallel.shard(state, sh['state']), parallel.shard(params, sh['base'])
    train_step = step.make_train_step(model, delta_mod, tx, kind, shardings=sh)
    state, metrics = train_step(state, params, parallel.global_batch(local_batch, mesh))
    out = eval_step(train, fixed, params, parallel.global_batch(whole_batch, mesh, whole=True))
    # eval: every process passes the whole batch, so the (replicated) output rows line up with its mask

Modules: `sharding` (mesh, rules, inheritance, per-device bytes), `multihost` (initialize, global_batch,
shard, to_host).
"""

from ftlab.parallel.multihost import global_batch, initialize, shard, to_host
from ftlab.parallel.sharding import (
    AXES,
    DEFAULT_RULES,
    DEFAULTS,
    batch_sharding,
    delta_specs,
    describe,
    eval_shardings,
    make_mesh,
    mesh_shape,
    opt_state_specs,
    param_specs,
    per_device_bytes,
    replicated,
    train_shardings,
)

__all__ = [
    "AXES",
    "DEFAULTS",
    "DEFAULT_RULES",
    "batch_sharding",
    "delta_specs",
    "describe",
    "eval_shardings",
    "global_batch",
    "initialize",
    "make_mesh",
    "mesh_shape",
    "opt_state_specs",
    "param_specs",
    "per_device_bytes",
    "replicated",
    "shard",
    "to_host",
    "train_shardings",
]
