"""Intermediate-task transfer table (STILTs, Phang et al. 2018): gain of each intermediate task on each target.

    FTLAB_DATA=../shared/data python scripts/transfer.py \
        --intermediate sst2=runs/multitask/sst2-single mrpc=runs/multitask/mrpc-single \
                       stsb=runs/multitask/stsb-single cola=runs/multitask/cola-single \
        --config configs/stilts.py --workdir runs/transfer --out docs/adaptive/transfer.json

Each intermediate run (any finished ftlab run with an exported δ) is merged into a Hugging Face folder once
(`<workdir>/merged-<task>`, ftlab.train.stages.export_merged). Then for every target task T (a variant of
--config) it trains T from the released model (the direct baseline) and from every intermediate model of
another task (the head re-created: model.head=new), each an ordinary run in `<workdir>/<from>-to-<T>`, and
writes the table: the target's best dev score per start, and the gain over direct. Finished cells are reused
(rerunning the script resumes the grid). --same adds the intermediate == target cells (more data of T first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _score(res: dict) -> float:
    m = res["best_metrics"] or res["metrics"]
    return float(m[res["main_metric"]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intermediate", nargs="+", required=True, metavar="TASK=WORKDIR")
    ap.add_argument("--targets", default="", help="comma-separated target variants (default: the intermediates')")
    ap.add_argument("--config", default="configs/stilts.py", help="config whose variants are the targets")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="JSON (a .md table and a .png heatmap are written beside it)")
    ap.add_argument("--same", action="store_true", help="also the intermediate == target cells")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every cell")
    args = ap.parse_args(argv)

    from ftlab import config as config_lib
    from ftlab.train.loop import train_and_evaluate
    from ftlab.train.stages import export_merged

    inter = dict(x.split("=", 1) for x in args.intermediate)
    targets = [t for t in args.targets.split(",") if t] or list(inter)
    os.makedirs(args.workdir, exist_ok=True)
    for task, wd in inter.items():
        if not os.path.isfile(os.path.join(wd, "results.json")):
            raise SystemExit(f"error: intermediate {task}: {wd} has no results.json (not a finished run)")
    cells = []
    for start in ["direct", *inter]:  # start-major: a rerun with more intermediates reuses every finished cell
        merged = None
        for target in targets:
            if start == target and not args.same:
                continue
            wd = os.path.join(args.workdir, f"{start}-to-{target}")
            res_path = os.path.join(wd, "results.json")
            if os.path.isfile(res_path):
                res = json.load(open(res_path))
            else:
                if start != "direct" and merged is None:
                    merged = os.path.join(args.workdir, f"merged-{start}")
                    if not os.path.isfile(os.path.join(merged, "model.safetensors")):
                        print(f"[transfer] merging {inter[start]} -> {merged}", file=sys.stderr)
                        export_merged(inter[start], merged)
                cfg = config_lib.load(f"{args.config}:{target}")
                over = list(args.set) + ([f"model.name={merged}"] if start != "direct" else [])
                cfg = config_lib.apply_overrides(cfg, over)
                print(f"[transfer] {start} -> {target}", file=sys.stderr)
                res = train_and_evaluate(cfg, wd)
            cells.append({"start": start, "target": target, "metric": res["main_metric"], "score": _score(res),
                          "model": res["config"]["model"]["name"], "steps": res["train_steps"],
                          "train_examples": res["train_examples"]})
    direct = {c["target"]: c["score"] for c in cells if c["start"] == "direct"}
    for c in cells:
        c["gain"] = c["score"] - direct[c["target"]]
    out = {"intermediate": inter, "config": args.config, "overrides": args.set, "cells": cells}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    starts = ["direct", *inter]
    metric = {c["target"]: c["metric"] for c in cells}
    lines = ["| intermediate ↓ / target → | " + " | ".join(f"{t} ({metric[t]})" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for s in starts:
        row = []
        for t in targets:
            c = next((c for c in cells if c["start"] == s and c["target"] == t), None)
            row.append("—" if c is None else (f"{c['score']:.4f}" if s == "direct" else
                                              f"{c['score']:.4f} ({c['gain']:+.4f})"))
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    _heatmap(cells, list(inter), targets, os.path.splitext(args.out)[0] + ".png")
    print("\n".join(lines))
    return 0


def _heatmap(cells, starts, targets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    g = np.full((len(starts), len(targets)), np.nan)
    for c in cells:
        if c["start"] in starts:
            g[starts.index(c["start"]), targets.index(c["target"])] = c["gain"]
    lim = np.nanmax(np.abs(g)) if np.isfinite(g).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.4 * len(targets) + 2, 1.1 * len(starts) + 1.5))
    im = ax.imshow(g, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(targets)), targets)
    ax.set_yticks(range(len(starts)), starts)
    ax.set_xlabel("target task")
    ax.set_ylabel("intermediate task")
    for i in range(len(starts)):
        for j in range(len(targets)):
            if np.isfinite(g[i, j]):
                ax.text(j, i, f"{g[i, j]:+.3f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="dev score gain over direct fine-tuning")
    ax.set_title("Intermediate-task transfer (MiniLM)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
