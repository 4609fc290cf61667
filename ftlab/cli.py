"""The `ftlab` command: train, eval, info, export, plot, bench.

    ftlab train  --config configs/<exp>.py[:variant] --workdir DIR [--config.key=value ...]
    ftlab sweep  --config configs/<exp>.py[:variant] --workdir DIR --seeds 10|13,21,42 [--mode vmap|sequential]
                 [--stop-fraction F --keep K] [--config.key=value ...]   # N seeds in one program (ftlab.train.sweep)
    ftlab multitask --config configs/<exp>.py[:variant] --workdir DIR [--config.key=value ...]
                 # several tasks, one head each, on one backbone in one run (ftlab.train.multitask)
    ftlab eval   --workdir DIR [--split dev]              # re-evaluate the exported δ of a finished run (every
                                                          #   task of a multi-task run)
                 [--delta delta_last_k]                   #   or another δ folder of it (e.g. the last-k average)
    ftlab info   --workdir DIR | --config FILE[:variant]  # trainable parameters by path group, δ bytes, base hash
    ftlab export --workdir DIR --out FOLDER [--delta D]   # merge δ into θ₀, write a Hugging Face folder
    ftlab plot   --workdir DIR [DIR ...] --out FILE.png   # learning curves (train loss, dev score)
                 [--kind curves|compare|seeds|early-exit]  # + dev-score bars, seed variance (--group-by),
                                                          #   early-exit curves (--json from scripts/early_exit.py)
    ftlab bench  [--models minilm,smollm2] [--methods ...] [--steps N] [--warmup N] [--out docs/bench]
                                                          # CPU benchmark vs transformers + PEFT (scripts/bench.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ftlab import config as config_lib


def _is_multitask(workdir: str) -> bool:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get("multitask", {}).get("tasks"))


def _load_run(workdir: str, delta_dir: str = "delta") -> tuple[config_lib.Config, dict[str, Any], Any, Any]:
    """(config, prepared model/task/base, delta module, δ) of a finished run's exported delta (or of the δ
    folder `delta_dir` inside the workdir, e.g. 'delta_last_k' or 'best_delta')."""
    from ftlab import deltas
    from ftlab.checkpoint import delta_io
    from ftlab.train.loop import prepare

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (is {workdir} a ftlab workdir?)")
    with open(path) as f:
        cfg = config_lib.Config(json.load(f))
    if cfg.get("multitask", {}).get("tasks"):
        raise SystemExit(f"error: {workdir} is a multi-task run (one δ, a head per task): `ftlab eval` evaluates "
                         "it; for one task's model use ftlab.models.single_head on the merged parameters")
    prep = prepare(cfg)
    method, _, delta = delta_io.load(os.path.join(workdir, delta_dir), prep["params"], prep["base"].hash)
    return cfg, prep, deltas.get(method), delta


def cmd_train(argv: list[str]) -> int:
    overrides, rest = config_lib.parse_cli_overrides(argv)
    ap = argparse.ArgumentParser(prog="ftlab train")
    ap.add_argument("--config", required=True, help="configs/<exp>.py[:variant]")
    ap.add_argument("--workdir", required=True, help="output directory (created; resumed if it has a checkpoint)")
    args = ap.parse_args(rest)
    try:
        cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.get("multitask", {}).get("tasks"):
        print(f"error: {args.config} sets multitask.tasks: train it with `ftlab multitask` (ftlab train trains "
              "task.name alone)", file=sys.stderr)
        return 2
    if cfg.get("pet", {}).get("patterns"):
        print(f"error: {args.config} sets pet.patterns: run PET with `python scripts/pet.py --config ... --workdir "
              "...` (ftlab train trains one model)", file=sys.stderr)
        return 2
    from ftlab import parallel
    from ftlab.train.loop import train_and_evaluate

    # Several workers (the launcher's JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or
    # FTLAB_DISTRIBUTED=auto on Cloud TPU pod slices): join them before anything touches a device.
    parallel.initialize()
    if cfg.get("stages"):  # adaptive pre-training -> task, intermediate -> target task (ftlab.train.stages)
        from ftlab.train import stages

        try:
            summary = stages.run(cfg, args.workdir)
        except config_lib.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps({"stages": [{"name": s["name"], "task": s["task"], s["main_metric"]:
                                      (s["best_metrics"] or s["metrics"] or {}).get(s["main_metric"])}
                                     for s in summary["stages"]], "workdir": args.workdir}))
        return 0
    results = train_and_evaluate(cfg, args.workdir)
    m = results["best_metrics"] or results["metrics"] or {}
    print(json.dumps({"task": results["task"], "method": results["method"],
                      "dev": {k: round(v, 4) for k, v in m.items()},
                      "trainable_params": results["trainable_params"], "delta_bytes": results["delta_bytes"],
                      "steps_per_second": results["steps_per_second"], "workdir": args.workdir}))
    return 0


def cmd_sweep(argv: list[str]) -> int:
    overrides, rest = config_lib.parse_cli_overrides(argv)
    ap = argparse.ArgumentParser(prog="ftlab sweep", description="train several seeds of one config; see "
                                 "ftlab.train.sweep (vmap: one program for all seeds)")
    ap.add_argument("--config", required=True, help="configs/<exp>.py[:variant]")
    ap.add_argument("--workdir", required=True, help="output directory (resumed if it has a checkpoint)")
    ap.add_argument("--seeds", help="N (N seeds from config.seed on) or a comma list; default config.sweep.seeds")
    ap.add_argument("--mode", choices=["vmap", "sequential"], help="default config.sweep.mode")
    ap.add_argument("--stop-fraction", type=float, help="stop all but --keep seeds after this fraction of steps")
    ap.add_argument("--keep", type=int, help="seeds that go on after --stop-fraction")
    args = ap.parse_args(rest)
    try:
        cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
        if args.seeds:
            try:
                seeds = (tuple(range(cfg.seed, cfg.seed + int(args.seeds))) if args.seeds.isdigit()
                         else tuple(int(s) for s in args.seeds.split(",")))
            except ValueError:
                raise config_lib.ConfigError(f"--seeds {args.seeds!r}: expected N or a comma list of ints") from None
            cfg.sweep.seeds = seeds
        for key, value in (("mode", args.mode), ("stop_fraction", args.stop_fraction), ("keep", args.keep)):
            if value is not None:
                cfg.sweep[key] = value
        from ftlab.train import sweep

        summary = sweep.train_seeds(cfg, args.workdir)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"task": summary["task"], "method": summary["method"], "metric": summary["main_metric"],
                      "best_by_seed": {s: r["best_score"] for s, r in summary["per_seed"].items()},
                      "mean": summary["mean"], "std": summary["std"], "workdir": args.workdir}))
    return 0


def cmd_multitask(argv: list[str]) -> int:
    overrides, rest = config_lib.parse_cli_overrides(argv)
    ap = argparse.ArgumentParser(prog="ftlab multitask", description="train multitask.tasks in one run, one head "
                                 "each on a shared backbone (ftlab.train.multitask)")
    ap.add_argument("--config", required=True, help="configs/<exp>.py[:variant]")
    ap.add_argument("--workdir", required=True, help="output directory (created; resumed if it has a checkpoint)")
    args = ap.parse_args(rest)
    from ftlab.train import multitask

    try:
        cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
        results = multitask.train_multitask(cfg, args.workdir)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = results["best_metrics"] or results["metrics"] or {}
    out = {"tasks": results["tasks"], "method": results["method"], "best_step": results["best_step"],
           "mean": results["best_score"], "dev": {n: {k: round(v, 4) for k, v in m.items()} for n, m in best.items()},
           "trainable_params": results["trainable_params"], "delta_bytes": results["delta_bytes"],
           "steps_per_second": results["steps_per_second"], "workdir": args.workdir}
    if "single_task" in results:
        out["ratio_to_single_task"] = {n: round(v["ratio"], 4) for n, v in results["single_task"].items()
                                       if isinstance(v, dict) and v["ratio"] is not None}
    print(json.dumps(out))
    return 0


def cmd_eval(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ftlab eval")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--split", default=None, help="default: the run's eval split")
    ap.add_argument("--delta", default="delta", help="δ folder inside the workdir: delta (the exported δ), "
                    "best_delta, delta_last_k (train.average_last_k)")
    args = ap.parse_args(argv)
    from ftlab import tree
    from ftlab.train import loop, step

    if _is_multitask(args.workdir):  # every task's head, each on its own dev split
        from ftlab.train import multitask

        metrics = multitask.evaluate_workdir(args.workdir, args.delta, args.split)
        print(json.dumps({"split": args.split or "default", "mean": round(metrics.pop("mean"), 6),
                          **{n: {k: round(v, 6) for k, v in m.items()} for n, m in metrics.items()}}))
        return 0
    cfg, prep, delta_mod, delta = _load_run(args.workdir, args.delta)
    split = args.split or cfg.task.eval_split
    subset = cfg.task.get("eval_subset", 0) if split == cfg.task.eval_split else 0  # the run's own eval set
    _, enc = loop._load_split(cfg, prep["task"], prep["base"].tokenizer, split, subset, prep["base"].config)
    train, fixed = tree.split(delta, delta_mod.trainable(delta))
    eval_step = step.make_eval_step(prep["model"], delta_mod, prep["task"].kind,
                                    scores=loop.eval_scores(cfg, prep["task"], prep["base"].config))
    pad = prep["base"].tokenizer.pad_token_id or 0
    metrics = loop.evaluate(eval_step, {"train": train, "fixed": fixed}, prep["params"], prep["task"], enc,
                            cfg.train.eval_batch_size, pad, cfg.train.pad_to_multiple_of)
    print(json.dumps({"split": split, **{k: round(v, 6) for k, v in metrics.items()}}))
    return 0


def cmd_info(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ftlab info")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--workdir")
    g.add_argument("--config")
    ap.add_argument("--depth", type=int, default=4, help="path components per group")
    args, rest = ap.parse_known_args(argv)
    import jax

    from ftlab import deltas, tree
    from ftlab.train.loop import prepare

    if args.workdir:
        cfg, prep, delta_mod, delta = _load_run(args.workdir)
    else:
        overrides, _ = config_lib.parse_cli_overrides(rest)
        cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
        prep = prepare(cfg)
        dcfg = dict(cfg.delta)
        delta_mod = deltas.get(dcfg.pop("method"))
        delta = delta_mod.init(jax.random.key(cfg.seed), prep["params"], deltas.check_config(delta_mod, dcfg))
    trainable, _ = tree.split(delta, delta_mod.trainable(delta))
    total = tree.count(prep["params"])
    groups: dict[str, int] = {}
    for p, x in tree.flatten(trainable).items():
        key = "/".join(p.split("/")[: args.depth])
        groups[key] = groups.get(key, 0) + int(x.size)
    width = max([len(k) for k in groups] + [20])
    print(f"{'trainable path group':<{width}}  {'params':>12}")
    for k, v in groups.items():
        print(f"{k:<{width}}  {v:>12,}")
    n = tree.count(trainable)
    stored = sum(a.nbytes for a in delta_mod.to_disk(delta).values())
    print(f"{'total trainable':<{width}}  {n:>12,}  ({100 * n / total:.4f}% of {total:,})")
    print(f"δ bytes on disk (arrays): {stored:,}")
    print(f"base: {prep['base'].source}  hash {prep['base'].hash}")
    return 0


def cmd_export(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ftlab export")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="folder for config.json + model.safetensors (+ tokenizer)")
    ap.add_argument("--delta", default="delta", help="δ folder inside the workdir (as for `ftlab eval`)")
    args = ap.parse_args(argv)
    import jax

    from ftlab.checkpoint import export_hf

    cfg, prep, delta_mod, delta = _load_run(args.workdir, args.delta)
    variables = delta_mod.apply(prep["params"], delta)
    if set(variables) != {"params"}:
        raise SystemExit(f"error: method {cfg.delta.method} adds modules at run time; merge it first "
                         "(module deltas export in PEFT format instead)")
    params = jax.device_get(variables["params"])
    from ftlab.train.loop import TASK_HEADS, _prompt

    prompt = _prompt(cfg, prep["task"], prep["base"].config)  # prompt-based: the LM head it was trained with
    head = prompt["head"] if prompt is not None else TASK_HEADS[prep["task"].kind]
    export_hf(params, prep["model"].config if hasattr(prep["model"], "config") else prep["base"].config, args.out,
              head=head, num_labels=prep["task"].num_labels, tokenizer=prep["base"].tokenizer)
    print(f"wrote {args.out}")
    return 0


def cmd_plot(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ftlab plot", description="PNG plots of finished runs (see ftlab.plots)")
    ap.add_argument("--kind", default="curves", choices=["curves", "compare", "seeds", "early-exit"],
                    help="curves: loss/dev score vs step; compare: dev score bars; seeds: seed variance per "
                         "group; early-exit: a scripts/early_exit.py JSON's quality vs speed-up")
    ap.add_argument("--workdir", nargs="+", help="run directories (curves, compare, seeds)")
    ap.add_argument("--json", help="early-exit: the JSON scripts/early_exit.py wrote")
    ap.add_argument("--group-by", default="method", choices=["method", "task", "dir"], help="seeds: grouping")
    ap.add_argument("--out", required=True, help="PNG file")
    args = ap.parse_args(argv)
    from ftlab import plots

    try:
        if args.kind == "early-exit":
            if not args.json:
                raise SystemExit("error: --kind early-exit needs --json (written by scripts/early_exit.py)")
            plots.early_exit(args.json, args.out)
        elif not args.workdir:
            raise SystemExit(f"error: --kind {args.kind} needs --workdir")
        elif args.kind == "curves":
            plots.curves(args.workdir, args.out)
        elif args.kind == "compare":
            plots.compare(args.workdir, args.out)
        else:
            groups = plots.seeds(args.workdir, args.out, args.group_by)
            for k, v in groups.items():
                print(f"{k}: n={len(v)} mean={sum(v) / len(v):.4f} min={min(v):.4f} max={max(v):.4f}")
    except (FileNotFoundError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {args.out}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    """scripts/bench.py of the source checkout (it needs torch and peft, the `test` extras)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: `ftlab bench` runs from a source checkout")
    spec = importlib.util.spec_from_file_location("ftlab_bench_script", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.main(argv)


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "multitask": cmd_multitask, "eval": cmd_eval, "info": cmd_info, "export": cmd_export, "plot": cmd_plot,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r} (one of: {', '.join(COMMANDS)})", file=sys.stderr)
            return 2
        return 0
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
