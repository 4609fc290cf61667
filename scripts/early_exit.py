"""Early exit on a trained run: quality vs measured speed-up of every exit policy, and of static layer removal.

For a workdir trained with `config.exit.routine` != none (configs/sst2_exit.py, configs/stsb_exit.py):
 1. every exit's outputs on the eval split (one layer-by-layer pass), from which each policy and threshold is
    simulated: dev metric and average exit layer;
 2. the measured wall-clock of each setting at batch size 1 with inference that stops at the exit layer
    (`ftlab.exits.ExitRunner.run_one`), against the same examples through the plain model (embeddings, all
    layers and the last exit in one jitted call); both see the same examples, padded to a multiple of 8
    tokens, every shape compiled before timing. The measured predictions are checked against the simulation;
 3. the batched mode (finished rows dropped after every layer) at batch 32 for the best setting within
    1 point of the full model;
 4. optionally, `--removed DIR ...`: runs of the `remove` delta (top layers removed, then fine-tuned) timed the
    same way, as the static baseline on the same curve.
Writes OUT/<task>_<routine>.json, appends a table to OUT.md's section for that run and draws OUT/<task>.png.

    python scripts/early_exit.py --workdir runs/sst2_exit --out docs/early_exit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ftlab import exits, tree  # noqa: E402
from ftlab.cli import _load_run  # noqa: E402
from ftlab.tasks import metrics as metrics_lib  # noqa: E402
from ftlab.train import loop  # noqa: E402

GRIDS = {
    "entropy": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.68),
    "patience": (1, 2, 3, 4, 5),
    "learned": (0.99, 0.95, 0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.5),
}


def _pad(ids: np.ndarray, multiple: int, pad_id: int) -> np.ndarray:
    t = -(-len(ids) // multiple) * multiple
    return np.concatenate([ids, np.full(t - len(ids), pad_id, ids.dtype)])


def examples(enc, pad_id: int, multiple: int = 8) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for i, ids in enumerate(enc.input_ids):
        ids = np.asarray(ids, np.int32)
        am = _pad(np.ones(len(ids), np.int32), multiple, 0)
        tt = np.zeros(len(am), np.int32) if enc.token_type_ids is None else \
            _pad(np.asarray(enc.token_type_ids[i], np.int32), multiple, 0)
        out.append((_pad(ids, multiple, pad_id)[None], tt[None], am[None]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", default="docs/early_exit", help="OUT.md, OUT/<task>_<routine>.json, OUT/<task>.png")
    ap.add_argument("--limit", type=int, default=0, help="time only the first N eval examples (0 = all)")
    ap.add_argument("--removed", nargs="*", default=[], help="workdirs of `remove`-delta runs (static baseline)")
    ap.add_argument("--tol", type=float, default=0.1, help="patience's tolerance for regression outputs")
    args = ap.parse_args(argv)

    cfg, prep, delta_mod, delta = _load_run(args.workdir)
    task, model = prep["task"], prep["model"]
    if model.head != "early_exit":
        raise SystemExit(f"error: {args.workdir} was not trained with exits (config exit.routine is none)")
    variables = delta_mod.apply(prep["params"], delta)
    tok = prep["base"].tokenizer
    pad_id = tok.pad_token_id or 0
    _, enc = loop._load_split(cfg, task, tok, cfg.task.eval_split)
    refs = [float(x) if task.kind == "regression" else int(x) for x in enc.labels]
    runner = exits.ExitRunner(model, variables)
    n_layers = runner.num_layers
    all_exs = examples(enc, pad_id)
    exs = all_exs[: args.limit] if args.limit else all_exs
    main_metric = task.main_metric

    # 1. every exit's outputs, one example at a time (the padded shapes timing will use: compiles them too)
    t0 = time.perf_counter()
    outs = [runner.all_exits(*e) for e in all_exs]
    logits = np.concatenate([o[0] for o in outs])
    lte = np.concatenate([o[1] for o in outs])
    print(f"[early_exit] all exits on {len(refs)} examples in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    per_layer = [metrics_lib.compute(task, exits.Policy("static", k, task.kind, n_layers).prediction(logits[:, k - 1])
                                     .tolist(), refs)[main_metric] for k in range(1, n_layers + 1)]
    full_score = per_layer[-1]

    # 2. batch-size-1 timing: baseline first (compiles every length), then each setting
    for e in exs:
        runner.full(*e)

    def time_full() -> float:
        t = time.perf_counter()
        for e in exs:
            runner.full(*e)
        return time.perf_counter() - t

    t_full = min(time_full(), time_full())  # timed again at the end: the smallest of the three is used
    settings = [("static", k) for k in range(1, n_layers + 1)]
    for name, grid in GRIDS.items():
        if name == "entropy" and task.kind != "classification":
            continue
        if name == "learned" and task.kind == "regression":  # u = 1 − tanh|error| rarely exceeds 0.5
            grid = (0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.2)
        settings += [(name, th) for th in grid]
    rows = []
    for name, th in settings:
        pol = exits.Policy(name, th, task.kind, n_layers, tol=args.tol)
        pred_sim, layer_sim = exits.simulate(pol, logits, lte)
        score = metrics_lib.compute(task, pred_sim.tolist(), refs)[main_metric]
        wall = float("inf")
        for _ in range(2):  # best of two passes: the machine is shared, timings are noisy
            t = time.perf_counter()
            measured = [runner.run_one(pol, *e) for e in exs]
            wall = min(wall, time.perf_counter() - t)
        layers_run = np.array([m[1] for m in measured])
        agree = float(np.mean(layers_run == layer_sim[: len(exs)]))
        rows.append({"policy": name, "threshold": th, main_metric: score, "avg_exit_layer": float(layer_sim.mean()),
                     "seconds_batch1": wall, "speedup": t_full / wall, "layer_speedup": n_layers / layer_sim.mean(),
                     "agreement_with_simulation": agree})
        print(f"[early_exit] {pol}: {main_metric}={score:.4f} avg layer {layer_sim.mean():.2f} "
              f"speed-up {t_full / wall:.2f}x (agree {agree:.3f})", file=sys.stderr)

    t_end = time_full()
    if t_end < t_full:  # the baseline got faster during the sweep: rescale every speed-up to the fastest
        for row in rows:
            row["speedup"] = t_end / row["seconds_batch1"]
        t_full = t_end

    # 3. batched mode at batch 32, for the fastest setting within 1 point of the full model
    ok = [r for r in rows if r["policy"] != "static" and r[main_metric] >= full_score - 0.01]
    batched = None
    if ok:
        best = max(ok, key=lambda r: r["speedup"])
        pol = exits.Policy(best["policy"], best["threshold"], task.kind, n_layers, tol=args.tol)
        from ftlab.data.batching import batches

        bs = list(batches(enc, 32, shuffle=False, seed=0, epoch=0, pad_id=pad_id, pad_to_multiple_of=16,
                          drop_remainder=False, pad_final=True))
        feed = [(b["input_ids"], b.get("token_type_ids", np.zeros_like(b["input_ids"])), b["attention_mask"])
                for b in bs]
        for f in feed:  # compile
            runner.full(*f)
            runner.run_batched(pol, *f)

        def run_all(fn):
            t = time.perf_counter()
            for f in feed:
                fn(*f)
            return time.perf_counter() - t

        tf = min(run_all(runner.full), run_all(runner.full))
        tb = min(run_all(lambda *f: runner.run_batched(pol, *f)), run_all(lambda *f: runner.run_batched(pol, *f)))
        batched = {"policy": best["policy"], "threshold": best["threshold"], "batch_size": 32, "seconds_full": tf,
                   "seconds_early_exit": tb, "speedup": tf / tb}
        print(f"[early_exit] batched (32) {pol}: {tf / tb:.2f}x", file=sys.stderr)

    # 4. removed-layer runs timed the same way
    removed = []
    for wd in args.removed:
        rcfg, rprep, rmod, rdelta = _load_run(wd)
        rvars = rmod.apply(rprep["params"], rdelta)
        d = loop.init_delta(rcfg, rprep)
        rmodel = d["model"]
        fwd = jax.jit(lambda v, ids, tt, am, m=rmodel: m.apply(v, ids, attention_mask=am, token_type_ids=tt))
        for e in exs:
            fwd(rvars, *e)
        wall = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            for e in exs:
                np.asarray(fwd(rvars, *e))
            wall = min(wall, time.perf_counter() - t)
        res = json.load(open(os.path.join(wd, "results.json")))
        score = (res["best_metrics"] or res["metrics"])[main_metric]
        n_kept = rmodel.config.num_hidden_layers
        removed.append({"layers": n_kept, main_metric: score, "seconds_batch1": wall, "speedup": t_full / wall,
                        "workdir": wd})

    result = {"workdir": args.workdir, "task": task.name, "routine": cfg.exit.routine, "main_metric": main_metric,
              "num_layers": n_layers, "eval_examples": len(refs), "timed_examples": len(exs),
              "full_score": full_score, "per_layer_score": per_layer, "seconds_full_batch1": t_full,
              "rows": rows, "batched": batched, "removed": removed, "device": jax.devices()[0].device_kind,
              "jax_version": jax.__version__, "trainable_params": tree.count(delta)}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{task.name}_{cfg.exit.routine}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2, default=float)
    plot(result, stem + ".png")
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    m = r["main_metric"]
    lines = [f"### {r['task']} — routine `{r['routine']}` ({r['workdir']})", "",
             f"Full model (last exit): {m} {r['full_score']:.4f}; per-layer exits: "
             + ", ".join(f"{s:.3f}" for s in r["per_layer_score"]) + f". Batch-1 time of the plain model over "
             f"{r['timed_examples']} examples: {r['seconds_full_batch1']:.2f} s.", "",
             f"| policy | threshold | {m} | Δ vs full | avg exit layer | measured speed-up (batch 1) | agreement |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['policy']} | {row['threshold']:g} | {row[m]:.4f} | {100 * (row[m] - r['full_score']):+.1f} "
                     f"| {row['avg_exit_layer']:.2f} | {row['speedup']:.2f}× | {row['agreement_with_simulation']:.3f} |")
    for rm in r["removed"]:
        lines.append(f"| removal (retrained) | {rm['layers']} layers | {rm[m]:.4f} | {100 * (rm[m] - r['full_score']):+.1f} "
                     f"| {rm['layers']} | {rm['speedup']:.2f}× | – |")
    if r["batched"]:
        b = r["batched"]
        lines += ["", f"Batched mode (batch {b['batch_size']}, finished rows dropped after each layer), "
                      f"{b['policy']}={b['threshold']:g}: {b['seconds_full']:.2f} s plain vs "
                      f"{b['seconds_early_exit']:.2f} s early exit = {b['speedup']:.2f}×."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: str) -> None:
    from ftlab import plots

    plots.early_exit(r, path)


if __name__ == "__main__":
    sys.exit(main())
