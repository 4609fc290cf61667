"""Where one compiled training step spends its time: a jax.profiler trace, summed per XLA operation.

Builds the step exactly as `scripts/bench.py` does (the loop's own code path, random token ids, dropout on),
runs `--warmup` steps, traces one more with `jax.profiler.trace(..., create_perfetto_trace=True)` and sums
the trace's complete events by name: the fusions, dots and copies XLA executed, largest first, and the same
grouped by kind (the name without its `.N` suffix). This is how the adapters' slow backward was found
(docs/bench.md): five `copy_bitcast_fusion`s held 2.1 s of a 5.1 s step.

    taskset -c 1 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" \\
        .venv/bin/python scripts/profile_step.py --model minilm --method houlsby --top 15

`--batch` / `--seq` override the bench's shape; `--hlo FILE` also writes the compiled HLO text, to look up
what a fusion computes. The trace folder is temporary unless `--trace DIR` is given.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def profile(model: str, method: str, batch: int = 0, seq: int = 0, warmup: int = 2, trace_dir: str | None = None,
            hlo: str | None = None) -> dict:
    """{"ops": {name: ms}, "kinds": {kind: ms}, "total_ms": ms of all op events, "trace": the trace file}."""
    import bench
    import jax

    from ftlab.train import loop

    spec = dict(bench.MODELS[model])
    spec["batch"], spec["seq"] = batch or spec["batch"], seq or spec["seq"]
    cfg = loop.default_config()
    cfg.model.name = bench.base_name(model)
    cfg.task.max_length = spec["seq"]
    cfg.train.batch_size = spec["batch"]
    cfg.delta.method = bench.METHOD_BASE.get(method, method)
    cfg.model.remat = bench.METHOD_REMAT.get(method, "none")
    for k, v in bench.DELTA_CONFIG.get(method, {}).items():
        cfg.delta[k] = v
    lm = spec["kind"] == "causal_lm"
    prep = loop.prepare(cfg, head="causal_lm" if lm else None)
    d = loop.init_delta(cfg, prep)
    t = loop.init_training(cfg, prep["params"], d, total_steps=warmup + 2, kind=spec["kind"])
    state, base = t["state"], prep["params"]
    old = bench.MODELS[model]
    bench.MODELS[model] = spec  # random_batch reads the shape from here
    try:
        data = jax.device_put(bench.random_batch(model, prep["base"].config.vocab_size))
    finally:
        bench.MODELS[model] = old
    compiled = t["train_step"].lower(state, base, data).compile()
    if hlo:
        with open(hlo, "w") as f:
            f.write(compiled.as_text())
    for _ in range(warmup):
        state, m = compiled(state, base, data)
        jax.block_until_ready((state, m))
    out = trace_dir or tempfile.mkdtemp(prefix="ftlab_profile_")
    with jax.profiler.trace(out, create_perfetto_trace=True):
        state, m = compiled(state, base, data)
        jax.block_until_ready((state, m))
    files = sorted(glob.glob(os.path.join(out, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise RuntimeError(f"{out}: jax.profiler wrote no perfetto trace")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    ops: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        # complete events of XLA operations; runtime scopes (ThunkExecutor…) and Python frames ($…) excluded
        if e.get("ph") == "X" and "Thunk" not in name and not name.startswith("$"):
            ops[name] += e.get("dur", 0) / 1000.0
    kinds: collections.Counter = collections.Counter()
    for name, ms in ops.items():
        kinds[name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1].isdigit() else name] += ms
    return {"ops": dict(ops.most_common()), "kinds": dict(kinds.most_common()), "total_ms": sum(ops.values()),
            "trace": files[-1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm", help="a scripts/bench.py model (minilm, smollm2, ...)")
    ap.add_argument("--method", default="full", help="a bench method (full, lora, houlsby, said, ...)")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trace", default=None, help="keep the trace in this folder")
    ap.add_argument("--hlo", default=None, help="write the compiled HLO text here")
    ap.add_argument("--json", default=None, help="write the per-op and per-kind sums here")
    args = ap.parse_args(argv)
    import bench

    if args.model not in bench.MODELS:
        print(f"error: --model {args.model!r}: one of {sorted(bench.MODELS)}", file=sys.stderr)
        return 2
    r = profile(args.model, args.method, args.batch, args.seq, args.warmup, args.trace, args.hlo)
    print(f"{args.model} {args.method}: {r['total_ms']:.1f} ms in XLA operations (one traced step)")
    print("by kind:")
    for k, ms in list(r["kinds"].items())[: args.top]:
        print(f"  {ms:9.1f} ms  {100 * ms / r['total_ms']:5.1f}%  {k}")
    print("largest operations:")
    for k, ms in list(r["ops"].items())[: args.top]:
        print(f"  {ms:9.1f} ms  {k}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
