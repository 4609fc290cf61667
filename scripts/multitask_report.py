"""Multi-task vs single-task table: `python scripts/multitask_report.py MULTI_WORKDIR [--single DIR ...] --out DIR`.

Reads the multi-task run's results.json (ftlab.train.multitask) and the single-task runs' results.json (by default
the workdirs in the run's multitask.single_task), and writes OUT/<name>.json (every figure the table shows, the
configs' key settings, steps and times) and OUT/<name>.md (the table), <name> = the multi-task workdir's name.
Scores: each single-task run's best dev eval (its own early-stopping choice) against the multi-task run's eval
selected by the mean of the tasks' main metrics (one δ for all tasks); final evals beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

THRESHOLD = 0.97


def _load(workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (has the run finished?)")
    with open(path) as f:
        return json.load(f)


def report(multi_dir: str, single_dirs: list[str] | None = None) -> dict:
    multi = _load(multi_dir)
    heads = list(multi["main_metrics"])
    tasks = dict(zip(heads, multi["tasks"]))
    singles = single_dirs or list(multi["config"]["multitask"]["single_task"])
    if len(singles) != len(heads):
        raise SystemExit(f"error: {len(singles)} single-task workdirs for the {len(heads)} tasks {heads}")
    rows = []
    for head, wd in zip(heads, singles):
        s = _load(wd)
        if s["task"] != tasks[head]:
            raise SystemExit(f"error: {wd} is a run of {s['task']!r}, not {tasks[head]!r}")
        metric = multi["main_metrics"][head]
        single_best, multi_best = s["best_metrics"][metric], multi["best_metrics"][head][metric]
        rows.append({
            "task": tasks[head], "metric": metric,
            "single_best": single_best, "single_best_step": s["best_step"], "single_final": s["metrics"][metric],
            "single_steps": s["train_steps"], "single_train_examples": s["train_examples"],
            "single_wall_seconds": s.get("wall_seconds"), "single_workdir": os.path.abspath(wd),
            "multi_selected": multi_best, "multi_final": multi["metrics"][head][metric],
            "ratio": multi_best / single_best if single_best else None,
            "ratio_final": multi["metrics"][head][metric] / s["metrics"][metric] if s["metrics"][metric] else None,
            "multi_rows_per_step": multi["sampling"]["batch_size"][head],
            "multi_epochs_seen": multi["sampling"]["epochs_seen"][head],
        })
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    cfg = multi["config"]
    return {
        "multi_workdir": os.path.abspath(multi_dir), "method": multi["method"], "model": multi["model"],
        "sampling": multi["sampling"]["rule"], "width": multi["sampling"]["width"],
        "batch_size": cfg["train"]["batch_size"], "epochs": cfg["train"]["epochs"], "lr": cfg["optim"]["lr"],
        "max_length": cfg["task"]["max_length"], "train_subset": cfg["task"]["train_subset"],
        "multi_best_step": multi["best_step"], "multi_steps": multi["train_steps"],
        "multi_selected_mean": multi["best_score"], "multi_wall_seconds": multi["wall_seconds"],
        "single_steps_total": sum(r["single_steps"] for r in rows),
        "rows": rows, "min_ratio": min(ratios) if ratios else None,
        "threshold": THRESHOLD, "all_at_least_threshold": bool(ratios) and all(x >= THRESHOLD for x in ratios),
    }


def markdown(rep: dict) -> str:
    lines = [
        f"| task | metric | single-task (best eval) | multi-task (selected eval) | multi / single | ≥ {rep['threshold']:.0%} "
        "| single final | multi final | multi rows/step | multi epochs seen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        ok = "yes" if r["ratio"] is not None and r["ratio"] >= rep["threshold"] else "**no**"
        lines.append(f"| {r['task']} | {r['metric']} | {r['single_best']:.4f} (step {r['single_best_step']}) | "
                     f"{r['multi_selected']:.4f} | {r['ratio']:.3f} | {ok} | {r['single_final']:.4f} | "
                     f"{r['multi_final']:.4f} | {r['multi_rows_per_step']} | {r['multi_epochs_seen']:.2f} |")
    lines.append("")
    lines.append(f"Multi-task: one δ ({rep['method']}, {rep['model']}), {rep['sampling']} sampling, "
                 f"{rep['multi_steps']} steps of {rep['batch_size']} examples, selected at step "
                 f"{rep['multi_best_step']} (mean of the main metrics {rep['multi_selected_mean']:.4f}). "
                 f"Single-task: {rep['single_steps_total']} steps of {rep['batch_size']} in all. "
                 f"Lowest ratio {rep['min_ratio']:.3f}: ≥ {rep['threshold']:.0%} on all tasks: "
                 f"**{'yes' if rep['all_at_least_threshold'] else 'no'}**.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("multi", help="the multi-task run's workdir")
    ap.add_argument("--single", nargs="*", help="single-task workdirs in the order of multitask.tasks "
                                                "(default: the run's multitask.single_task)")
    ap.add_argument("--out", required=True, help="folder for <name>.json and <name>.md")
    args = ap.parse_args(argv)
    multi = _load(args.multi)
    if not args.single and not any(multi["config"]["multitask"]["single_task"]):
        print("no single-task runs to compare with (multitask.single_task is empty; pass --single)", file=sys.stderr)
        return 0
    rep = report(args.multi, args.single)
    name = os.path.basename(os.path.normpath(args.multi))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(rep, f, indent=2)
    md = markdown(rep)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
