"""Pruning results as a table and a plot: dev score against the encoder weights kept, one line per criterion.

    python scripts/pruning_report.py docs/pruning --out docs/pruning/report --majority \
        --dense sst2=docs/results/sst2_full_quick.json mrpc=docs/results/mrpc_full.json

Reads every `<task>_<variant>.json` in the folder (each a pruning run's results.json, copied there by hand or by
scripts/run_experiments.sh) and, optionally, the dense reference runs given with `--dense TASK=FILE` (a full
fine-tuning results.json of the same protocol). Writes OUT.md (one row per run: criterion, budget, encoder
weights kept as measured by `delta_stats.density`, best-eval score, change vs dense, stored δ bytes, the
pruned encoder's share of them) and OUT.png (one panel per task, score vs kept fraction on a log axis, the
dense score as a dashed line, with `--majority` the majority-class score as a dotted one: a run on that line
has collapsed to one class). Nothing is averaged: each point is one run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        r = json.load(open(path))
        if r.get("method") != "prune" or "delta_stats" not in r:
            continue
        d, stats = r["config"]["delta"], r["delta_stats"]
        metric = r["main_metric"]
        best = r.get("best_metrics") or r["metrics"]
        n = stats["pruned_params"]
        rows.append({
            "run": os.path.splitext(os.path.basename(path))[0], "task": r["task"], "criterion": d["criterion"],
            # soft movement has one threshold on σ(S) for every tensor: its budget key is unused
            "budget": "threshold" if d["criterion"] == "soft_movement" else d.get("budget", "global"),
            "keep_target": d.get("keep") if d["criterion"] != "soft_movement" else None,
            "penalty_weight": d.get("penalty_weight") if d["criterion"] == "soft_movement" else None,
            "density": stats["density"], "kept": stats["kept"], "pruned_params": n, "metric": metric,
            "score": float(best[metric]), "final": float(r["metrics"][metric]), "steps": r["train_steps"],
            "others": {k: float(v) for k, v in best.items() if k not in (metric, "loss")},
            "epochs": r["config"]["train"]["epochs"], "delta_bytes": r["delta_bytes"],
        })
    return rows


def majority_scores(tasks: set[str]) -> dict[str, float]:
    """Per task: the main metric of predicting the train split's most frequent label for every dev example
    (data from $FTLAB_DATA or the shipped copy, as training reads it): the floor a collapsed run sits on."""
    from collections import Counter

    from ftlab.data.paths import resolve_data_dir
    from ftlab.tasks import get_task
    from ftlab.tasks import metrics as metrics_lib

    out = {}
    for name in sorted(tasks):
        task = get_task(name)
        root = resolve_data_dir(name, None)
        top = Counter(e["label"] for e in task.read("train", root)).most_common(1)[0][0]
        refs = [e["label"] for e in task.read("dev", root)]
        out[name] = float(metrics_lib.compute(task, [top] * len(refs), refs)[task.main_metric])
    return out


def table(rows: list[dict], dense: dict[str, float]) -> str:
    out = ["| run | task | criterion | budget | λ (soft) | encoder weights kept | epochs | dev (best eval) | Δ vs dense "
           "| stored δ bytes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["criterion"], -r["density"], r["run"])):
        ref = dense.get(r["task"])
        delta = f"{100 * (r['score'] - ref):+.1f}" if ref is not None else "–"
        lam = f"{r['penalty_weight']:g}" if r["penalty_weight"] is not None else "–"
        out.append(f"| {r['run']} | {r['task']} | {r['criterion']} | {r['budget']} | {lam} | {100 * r['density']:.2f}% "
                   f"| {r['epochs']:g} | {r['metric']} **{r['score']:.4f}**"
                   + "".join(f", {k} {v:.4f}" for k, v in r.get("others", {}).items())
                   + f" | {delta} | {r['delta_bytes']:,} |")
    return "\n".join(out)


def plot(rows: list[dict], dense: dict[str, float], path: str, majority: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4), squeeze=False)
    marker = {"magnitude": "o", "movement": "s", "soft_movement": "^"}
    color = {"magnitude": "C0", "movement": "C1", "soft_movement": "C2"}
    for ax, task in zip(axes[0], tasks):
        for crit in ("magnitude", "movement", "soft_movement"):
            for budget, ls in (("per_layer", "-"), ("global", ":"), ("threshold", "-")):
                pts = sorted((r["density"], r["score"]) for r in rows
                             if r["task"] == task and r["criterion"] == crit and r["budget"] == budget)
                if pts:
                    ax.plot([100 * x for x, _ in pts], [y for _, y in pts], ls, marker=marker[crit], color=color[crit],
                            label=f"{crit} ({budget.replace('_', '-')})")
        if task in dense:
            ax.axhline(dense[task], color="gray", ls="--", lw=1, label="dense (full fine-tuning)")
        if majority and task in majority:
            ax.axhline(majority[task], color="red", ls=":", lw=1, label="majority class")
        metric = next(r["metric"] for r in rows if r["task"] == task)
        ax.set_xscale("log")
        ax.set_xlabel("encoder weights kept (%)")
        ax.set_ylabel(f"dev {metric}")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--out", required=True, help="writes OUT.md and OUT.png")
    ap.add_argument("--dense", nargs="*", default=[], metavar="TASK=RESULTS_JSON",
                    help="full fine-tuning results.json of the same protocol, per task")
    ap.add_argument("--majority", action="store_true",
                    help="also the majority-class score of each task (reads its train and dev split)")
    args = ap.parse_args(argv)
    rows = load(args.folder)
    if not rows:
        print(f"error: no pruning results (results.json with delta_stats) in {args.folder}", file=sys.stderr)
        return 1
    dense = {}
    for spec in args.dense:
        task, _, path = spec.partition("=")
        if not os.path.isfile(path):
            print(f"error: --dense {spec}: {path} not found", file=sys.stderr)
            return 1
        r = json.load(open(path))
        dense[task] = float((r.get("best_metrics") or r["metrics"])[r["main_metric"]])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(table(rows, dense) + "\n")
    majority = majority_scores({r["task"] for r in rows}) if args.majority else {}
    with open(args.out + ".json", "w") as f:
        json.dump({"dense": dense, "majority": majority, "runs": rows}, f, indent=2)
    plot(rows, dense, args.out + ".png", majority)
    print(table(rows, dense))
    if majority:
        print("majority class: " + ", ".join(f"{t} {v:.4f}" for t, v in majority.items()))
    print(f"wrote {args.out}.md, .json and .png ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
