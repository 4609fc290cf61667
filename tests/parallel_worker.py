"""Runs in a subprocess of tests/test_parallel.py, so that fake CPU devices are set before JAX starts.

    python tests/parallel_worker.py meshes OUT.json COMBOS       # 8 fake devices; COMBOS "2,2,2/lora;1,8,1/full"
    python tests/parallel_worker.py process ID PORT DIR          # one of two processes (4 fake devices each)
    python tests/parallel_worker.py restore DIR OUT.json         # one process restores the two's checkpoint

Everything is built the way ftlab.train.loop builds it: δ split into train/fixed, optimizer from
ftlab.optim, state {step, train, fixed, opt_state, rng}, θ₀ a separate argument, the step from
ftlab.train.step.make_train_step.
"""

from __future__ import annotations

import json
import os
import sys
import time

N_DEVICES = {"meshes": 8, "process": 4, "restore": 8}[sys.argv[1]]
# Cheaper XLA:CPU code generation: compilation dominates these tests' time.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
                           " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ftlab import deltas, optim, parallel, tree  # noqa: E402
from ftlab.models import BertConfig, build_model  # noqa: E402
from ftlab.train import step as step_lib  # noqa: E402

CFG = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32)
METHODS = {"full": {}, "lora": {"r": 4}, "said": {"d": 64}}
MESHES = [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
B, T = 16, 16


_SETUPS: dict = {}


def setup(method: str):
    """(model, delta module, tx, state (host arrays), θ₀) for `method` on the tiny BERT (built once)."""
    if method not in _SETUPS:
        _SETUPS[method] = _setup(method)
    return _SETUPS[method]


def _setup(method: str):
    model = build_model(CFG, head="sequence_classification", num_labels=2)
    rng = jax.random.key(0)
    params = model.init({"params": rng, "dropout": rng}, jnp.ones((1, 8), jnp.int32))["params"]
    mod = deltas.get(method)
    dcfg = deltas.check_config(mod, METHODS[method])
    delta = mod.init(jax.random.key(2), params, dcfg)
    train, fixed = tree.split(delta, mod.trainable(delta))
    # A large Adam eps: gradients that are analytically zero (e.g. of the key bias) are rounding noise whose
    # sign depends on the summation order; Adam's m/√v would turn that noise into ±lr updates.
    tx, _ = optim.build({"lr": 1e-3, "eps": 1e-3, "warmup_steps": 0}, train, 10, CFG.num_hidden_layers)
    state = {"step": jnp.zeros([], jnp.int32), "train": train, "fixed": fixed, "opt_state": tx.init(train),
             "rng": jax.random.key_data(jax.random.key(3))}
    return model, mod, tx, jax.device_get(state), jax.device_get(params)


def make_batch(step: int = 0) -> dict:
    r = np.random.default_rng(step)
    lengths = r.integers(4, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": (r.integers(1, CFG.vocab_size, size=(B, T)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((B, T), np.int32),
            "labels": r.integers(0, 2, size=B).astype(np.int32), "example_mask": np.ones(B, np.float32)}


def rel_err(a, b, origin=None) -> float:
    """‖a − b‖ / ‖b‖ over all leaves of two trees (of a − origin and b − origin when origin is given)."""
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert set(fa) == set(fb)
    fo = tree.flatten(origin) if origin is not None else {p: 0.0 for p in fa}
    vec = lambda f: np.concatenate([(np.asarray(f[p], np.float64) - np.asarray(fo[p], np.float64)).ravel()
                                    for p in sorted(fa)])
    va, vb = vec(fa), vec(fb)
    return float(np.linalg.norm(va - vb) / max(np.linalg.norm(vb), 1e-30))


def reference(method: str) -> dict:
    """One unsharded step on one device, as the loop runs it today."""
    model, mod, tx, state, params = setup(method)
    step = step_lib.make_train_step(model, mod, tx, "classification")
    new, m = step(jax.device_put(state, jax.devices()[0]), jax.device_put(params, jax.devices()[0]), make_batch())
    return {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "train": jax.device_get(new["train"])}


def run_meshes(out_path: str, combos: str) -> None:
    results = {"meshes": {}}
    todo = [(tuple(int(n) for n in c.split("/")[0].split(",")), c.split("/")[1]) for c in combos.split(";")]
    refs = {m: reference(m) for m in sorted({m for _, m in todo})}
    for shape, method in todo:
        mesh = parallel.make_mesh(dict(zip(parallel.AXES, shape)))
        t0 = time.perf_counter()
        model, mod, tx, state, params = setup(method)
        sh = parallel.train_shardings(mesh, state, params)
        step = step_lib.make_train_step(model, mod, tx, "classification", shardings=sh)
        g_state, g_params = parallel.shard(state, sh["state"]), parallel.shard(params, sh["base"])
        new, m = step(g_state, g_params, parallel.global_batch(make_batch(0), mesh))
        loss, new_train = float(m["loss"]), jax.device_get(new["train"])
        new, m2 = step(new, g_params, parallel.global_batch(make_batch(1), mesh))
        jax.block_until_ready(m2)
        ref = refs[method]
        flat_base = tree.flatten(g_params)
        flat_train = tree.flatten(new["train"])
        shards = {p: [list(s.data.shape) for s in flat_base[p].addressable_shards[:1]][0]
                  for p in ("backbone/encoder/layer/0/intermediate/dense/kernel",
                            "backbone/encoder/layer/0/output/dense/kernel",
                            "backbone/encoder/layer/0/attention/self/query/kernel",
                            "backbone/embeddings/word_embeddings/embedding")}
        train_shards = {p: list(x.addressable_shards[0].data.shape) for p, x in flat_train.items()}
        results["meshes"][f"{shape}/{method}"] = {
            "loss": loss, "loss_ref": ref["loss"], "grad_norm": float(m["grad_norm"]),
            "grad_norm_ref": ref["grad_norm"], "delta_rel_err": rel_err(new_train, ref["train"]),
            "update_rel_err": rel_err(new_train, ref["train"], state["train"]),
            "loss_rel_err": abs(loss - ref["loss"]) / abs(ref["loss"]),
            "base_shards": shards, "train_shards": train_shards,
            "train_shapes": {p: list(np.shape(x)) for p, x in flat_train.items()},
            "cache_size": step._cache_size(),
            "bytes_params_opt": parallel.per_device_bytes(
                {"base": g_params, "opt": new["opt_state"], "train": new["train"]},
                {"base": sh["base"], "opt": sh["state"]["opt_state"], "train": sh["state"]["train"]}),
            "bytes_on_device0": sum(s.data.nbytes for x in jax.tree_util.tree_leaves(
                {"b": g_params, "o": new["opt_state"], "t": new["train"]})
                for s in x.addressable_shards if s.device == jax.devices()[0]),
            "bytes_replicated_leaves": sum(  # leaves every device holds whole (norms, biases, counts)
                x.nbytes for x, sd in zip(*(jax.tree_util.tree_leaves(t) for t in (
                    {"b": g_params, "o": new["opt_state"], "t": new["train"]},
                    {"b": sh["base"], "o": sh["state"]["opt_state"], "t": sh["state"]["train"]})))
                if sd.is_fully_replicated),
            "bytes_replicated": tree.nbytes(params) + tree.nbytes(jax.device_get(new["opt_state"]))
            + tree.nbytes(new_train),
            "seconds": time.perf_counter() - t0,
        }
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


def run_process(pid: int, port: int, workdir: str) -> None:
    """Process `pid` of 2: one sharded step on a (2, 2, 2) mesh over both processes' 8 devices."""
    os.environ.update({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                       "JAX_PROCESS_ID": str(pid)})
    assert parallel.initialize()
    assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model, mod, tx, state, params = setup("full")
    sh = parallel.train_shardings(mesh, state, params)
    step = step_lib.make_train_step(model, mod, tx, "classification", shardings=sh)
    g_state, g_params = parallel.shard(state, sh["state"]), parallel.shard(params, sh["base"])
    batch = make_batch(0)
    b = B // 2
    local = {k: v[pid * b:(pid + 1) * b] for k, v in batch.items()}  # what batches(process_index=pid) yields
    new, m = step(g_state, g_params, parallel.global_batch(local, mesh))
    host_train = parallel.to_host(new["train"])
    from ftlab.checkpoint import train_state as ckpt

    mngr = ckpt.manager(os.path.join(workdir, "ckpt"))
    ckpt.save(mngr, 1, new, {"note": "two processes"})
    if pid == 0:
        np.savez(os.path.join(workdir, "train.npz"), **tree.flatten(host_train))
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump({"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                       "ref": {k: v for k, v in reference("full").items() if k != "train"}}, f)
    jax.distributed.shutdown()


def run_restore(workdir: str, out_path: str) -> None:
    """Restore the two processes' checkpoint in one process, onto one device, and compare."""
    from ftlab.checkpoint import train_state as ckpt

    _, _, _, state, _ = setup("full")
    like = jax.device_put(state, jax.devices()[0])
    restored, meta = ckpt.restore(ckpt.manager(os.path.join(workdir, "ckpt")), 1, like)
    saved = dict(np.load(os.path.join(workdir, "train.npz")))
    ref = reference("full")
    out = {"meta": meta, "step": int(restored["step"]),
           "restored_vs_saved": rel_err(jax.device_get(restored["train"]), tree.unflatten(saved)),
           "two_process_vs_single": rel_err(tree.unflatten(saved), ref["train"]),
           "two_process_update_vs_single": rel_err(tree.unflatten(saved), ref["train"], state["train"])}
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "meshes":
        run_meshes(sys.argv[2], sys.argv[3])
    elif mode == "process":
        run_process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        run_restore(sys.argv[2], sys.argv[3])
