"""Ahead-of-time compile of the sharded train step for a target device count and mesh, without real weights.

Every array is a jax.ShapeDtypeStruct carrying its sharding (θ₀ from jax.eval_shape of the model's init, δ
and the optimizer state from eval_shape of theirs), so a 135M- or 1B-parameter layout can be checked on a
laptop CPU with fake devices. Prints the per-device bytes of θ₀, δ and the optimizer state under the mesh
against the replicated layout, and XLA's memory analysis of the compiled per-device program.

    python scripts/compile_check.py --devices 8 --mesh 1,8,1 --model minilm --method full
    python scripts/compile_check.py --devices 8 --mesh 2,2,2 --model smollm2 --method lora --delta '{"r": 16}'
    python scripts/compile_check.py --devices 8 --mesh 1,8,1 --model path/to/config.json --head causal_lm

--model: tiny-bert | minilm | smollm2 | gpt2 | a Hugging Face config.json (shapes only; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=8, help="fake CPU devices (0 = use the real devices)")
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes; one may be -1")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--head", default="sequence_classification",
                    help="sequence_classification | token_classification | causal_lm | masked_lm")
    ap.add_argument("--method", default="full", help="delta method (ftlab/deltas/<method>.py)")
    ap.add_argument("--delta", default="{}", help="JSON dict of the method's config keys")
    ap.add_argument("--batch", type=int, default=32, help="global batch size")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--remat", default="none", help="model.remat: none | full | dots | dots_no_batch")
    ap.add_argument("--table", action="store_true", help="print the sharding table (every path and its spec)")
    return ap.parse_args(argv)


def model_config(name: str):
    from ftlab.models import BertConfig, GPT2Config, LlamaConfig, config_from_hf

    if name == "tiny-bert":
        return BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32)
    if name == "minilm":  # all-MiniLM-L6-v2
        return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=1536)
    if name == "smollm2":  # SmolLM2-135M
        return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                           rope_theta=100000.0, tie_word_embeddings=True)
    if name == "gpt2":
        return GPT2Config()
    if os.path.isfile(name):
        with open(name) as f:
            return config_from_hf(json.load(f))
    raise SystemExit(f"unknown --model {name!r} (tiny-bert, minilm, smollm2, gpt2 or a config.json path)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.devices:  # must be set before JAX initialises its backends
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    from ftlab import deltas, optim, parallel, tree
    from ftlab.deltas.subset import num_layers
    from ftlab.models import build_model
    from ftlab.train import step as step_lib

    mesh = parallel.make_mesh(dict(zip(parallel.AXES, (int(s) for s in args.mesh.split(",")))))
    cfg = model_config(args.model)
    if args.remat != "none":
        import dataclasses

        cfg = dataclasses.replace(cfg, remat=args.remat)
    model = build_model(cfg, head=args.head)
    kind = {"sequence_classification": "classification", "token_classification": "tagging"}.get(args.head, args.head)

    # 1. Shapes only: θ₀, δ, optimizer state, batch.
    key = jax.random.key(0)
    params = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, jnp.ones((1, 8), jnp.int32)),
                            key)["params"]
    mod = deltas.get(args.method)
    dcfg = deltas.check_config(mod, json.loads(args.delta))
    delta = jax.eval_shape(lambda p: mod.init(key, p, dcfg), params)
    train, fixed = tree.split(delta, mod.trainable(delta))
    tx, _ = optim.build({}, train, 1000, num_layers(params))
    sds = jax.ShapeDtypeStruct
    state = {"step": sds((), jnp.int32), "train": train, "fixed": fixed,
             "opt_state": jax.eval_shape(tx.init, train), "rng": sds((2,), jnp.uint32)}
    b, t = args.batch, args.seq
    batch = {"input_ids": sds((b, t), jnp.int32), "attention_mask": sds((b, t), jnp.int32),
             "labels": sds((b, t) if kind in ("tagging", "causal_lm", "masked_lm") else (b,), jnp.int32),
             "example_mask": sds((b,), jnp.float32)}
    if args.model in ("tiny-bert", "minilm") or type(cfg).__name__ == "BertConfig":
        batch["token_type_ids"] = sds((b, t), jnp.int32)

    # 2. Shardings, attached to the shapes.
    sh = parallel.train_shardings(mesh, state, params)
    if args.table:
        print(parallel.describe(params, mesh, delta=delta))
    attach = lambda x, s: jax.tree_util.tree_map(lambda a, z: sds(a.shape, a.dtype, sharding=z), x, s)
    state_in, base_in = attach(state, sh["state"]), attach(params, sh["base"])
    batch_in = jax.tree_util.tree_map(lambda a: sds(a.shape, a.dtype, sharding=sh["batch"]), batch)

    # 3. Compile.
    step = step_lib.make_train_step(model, mod, tx, kind, shardings=sh)
    compiled = step.lower(state_in, base_in, batch_in).compile()

    # 4. Report.
    n_dev = mesh.devices.size
    print(f"model {args.model} ({tree.count(params):,} parameters), method {args.method} "
          f"({tree.count(train):,} trainable), mesh {dict(mesh.shape)} on {n_dev} {jax.devices()[0].platform} "
          f"devices, global batch {b}×{t}")
    rows = [("θ₀ (base params)", params, sh["base"]), ("δ trainable", train, sh["state"]["train"]),
            ("δ fixed", fixed, sh["state"]["fixed"]), ("optimizer state", state["opt_state"], sh["state"]["opt_state"])]
    total_dev = total_rep = 0
    print(f"{'':<20} {'per-device bytes':>18} {'replicated bytes':>18} {'ratio':>7}")
    for name, x, s in rows:
        dev, rep = parallel.per_device_bytes(x, s), tree.nbytes(x)
        total_dev, total_rep = total_dev + dev, total_rep + rep
        print(f"{name:<20} {dev:>18,} {rep:>18,} {dev / max(rep, 1):>7.3f}")
    print(f"{'params+opt state':<20} {total_dev:>18,} {total_rep:>18,} {total_dev / max(total_rep, 1):>7.3f}"
          f"   (1/{n_dev // mesh.shape['data']} would be {mesh.shape['data'] / n_dev:.3f})")
    ma = compiled.memory_analysis()
    if ma is None:
        print("memory analysis: not available on this backend")
    else:
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes")
        print("compiled per-device memory (XLA memory_analysis):")
        for f in fields:
            if hasattr(ma, f):
                print(f"  {f:<30} {getattr(ma, f):>16,}")
        if hasattr(ma, "argument_size_in_bytes") and hasattr(ma, "temp_size_in_bytes"):
            peak = ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes
            print(f"  {'peak estimate (arg+out-alias+temp)':<30} {peak:>16,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
