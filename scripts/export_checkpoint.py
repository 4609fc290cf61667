"""Export the δ of one training checkpoint as a δ folder beside the run's own exports.

A run exports its best (or final) δ; this writes the δ held by checkpoint N (default: the latest), e.g. the
final state of a run whose `delta/` is an earlier best, so that `ftlab eval`, `ftlab info` and `ftlab export`
can use it:

    python scripts/export_checkpoint.py --workdir runs/mrpc_prune_soft_l5200
    .venv/bin/ftlab eval --workdir runs/mrpc_prune_soft_l5200 --delta delta_step1145

Writes WORKDIR/delta_step<N> (or --out) with `ftlab.checkpoint.delta_io.save`, and prints the δ's size and,
for deltas that report them (pruning), its `stats`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftlab import config as config_lib  # noqa: E402
from ftlab import tree  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ap.add_argument("--out", default=None, help="δ folder to write (default: WORKDIR/delta_step<N>)")
    args = ap.parse_args(argv)
    from ftlab.checkpoint import delta_io
    from ftlab.checkpoint import train_state as ckpt
    from ftlab.train import loop

    path = os.path.join(args.workdir, "config.json")
    if not os.path.isfile(path):
        print(f"error: {path} not found (is {args.workdir} a ftlab workdir?)", file=sys.stderr)
        return 2
    with open(path) as f:
        cfg = config_lib.Config(loop.with_defaults(json.load(f)))
    mngr = ckpt.manager(os.path.join(args.workdir, "checkpoints"))
    steps = sorted(mngr.all_steps())
    step = args.step if args.step is not None else (steps[-1] if steps else None)
    if step is None or step not in steps:
        print(f"error: {args.workdir}/checkpoints has no step {step} (steps: {steps})", file=sys.stderr)
        return 2
    prep = loop.prepare(cfg)
    d = loop.init_delta(cfg, prep)
    like = loop.init_training(cfg, prep["params"], d, max(step, 1), prep["task"].kind)["state"]
    state, _ = ckpt.restore(mngr, step, like)
    delta = tree.merge(state["train"], state["fixed"])
    out = args.out or os.path.join(args.workdir, f"delta_step{step}")
    info = delta_io.save(out, d["method"], d["delta_cfg"], delta, prep["base"].source, prep["base"].hash,
                         {"step": int(step), "task": cfg.task.name})
    summary = {"out": out, "step": int(step), "array_bytes": info.get("array_bytes")}
    if hasattr(d["delta_mod"], "stats"):
        summary["stats"] = d["delta_mod"].stats(prep["params"], delta)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
