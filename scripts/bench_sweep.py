"""Throughput of a seed sweep in one program (vmap over N seeds) against N separate steps, at a fixed shape.

    python scripts/bench_sweep.py --config configs/stability.py:cola-vanilla --seeds 10 --length 32 --out docs/stability/bench_sweep.json

Both sides run the same un-jitted train step of ftlab.train.step (full model, real weights of the config's base):
'separate' jits it alone and runs it once per seed's state; 'vmap' jits `jax.vmap` of it over the N stacked
states. Median of --steps timed steps after --warmup, the two sides interleaved, examples/s = N × batch / step time. A benchmark script,
not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import config as config_lib
from ftlab import tree
from ftlab.train import loop, sweep


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--length", type=int, default=32, help="padded tokens per row")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", help="JSON file")
    overrides, rest = config_lib.parse_cli_overrides(argv)
    args = ap.parse_args(rest)
    cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
    prep = loop.prepare(cfg)
    b, t = cfg.train.batch_size, args.length
    rng = np.random.default_rng(0)
    vocab = prep["base"].config.vocab_size
    batch = {"input_ids": jnp.asarray(rng.integers(1000, vocab, (b, t)), jnp.int32),
             "attention_mask": jnp.ones((b, t), jnp.int32), "token_type_ids": jnp.zeros((b, t), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, prep["task"].num_labels, b), jnp.int32),
             "example_mask": jnp.ones((b,), jnp.float32)}
    if prep["task"].kind == "regression":
        batch["labels"] = jnp.asarray(rng.uniform(0, 5, b), jnp.float32)
    states = []
    for s in range(args.seeds):
        cs = sweep.with_seed(cfg, s)
        d = loop.init_delta(cs, prep)
        tr = loop.init_training(cs, prep["params"], d, 1000, prep["task"].kind, jit=False)
        states.append(tr["state"])
    step = tr["train_step"]

    def timed(fn, n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    single = jax.jit(step, donate_argnums=(0,))

    def run_separate():
        for i in range(args.seeds):
            states[i], m = single(states[i], prep["params"], batch)
        jax.block_until_ready(m["loss"])

    stacked = sweep._stack(states)  # a copy: both sides keep their own states
    vbatch = jax.tree_util.tree_map(lambda x: jnp.stack([x] * args.seeds), batch)
    vstep = jax.jit(jax.vmap(step, in_axes=(0, None, 0)), donate_argnums=(0,))
    box = {"s": stacked}

    def run_vmap():
        box["s"], m = vstep(box["s"], prep["params"], vbatch)
        jax.block_until_ready(m["loss"])

    first = {}
    for name, fn in (("separate", run_separate), ("vmap", run_vmap)):
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        timed(fn, args.warmup - 1)
    sep, vm = [], []
    for _ in range(args.steps):  # interleaved, so both sides see the same machine load
        sep += timed(run_separate, 1)
        vm += timed(run_vmap, 1)
    compile_separate, compile_vmap = first["separate"], first["vmap"]
    n_ex = args.seeds * b
    res = {"config": args.config, "seeds": args.seeds, "batch": b, "length": t,
           "trainable_params_per_seed": tree.count(d["train"]),
           "separate_s_per_round": float(np.median(sep)), "vmap_s_per_step": float(np.median(vm)),
           "separate_examples_per_s": n_ex / float(np.median(sep)), "vmap_examples_per_s": n_ex / float(np.median(vm)),
           "throughput_ratio_vmap_over_separate": float(np.median(sep) / np.median(vm)),
           "first_call_s": {"separate": compile_separate, "vmap": compile_vmap},
           "device": jax.devices()[0].device_kind, "jax_version": jax.__version__,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(json.dumps(res, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
