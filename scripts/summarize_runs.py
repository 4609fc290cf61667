"""Mean ± std of finished runs' main metric, grouped (e.g. one group per condition, one run per seed).

    python scripts/summarize_runs.py direct=runs/imdb/ft-direct-1,runs/imdb/ft-direct-2,runs/imdb/ft-direct-3 \
        dapt=runs/imdb/ft-dapt-1,runs/imdb/ft-dapt-2,runs/imdb/ft-dapt-3 --out docs/adaptive/imdb_500.json

Each run's score is its best eval of the main metric (results.json). Writes OUT (JSON: every run's score, seed,
steps, model) and OUT's .md table (n, mean, std (ddof 1), min, max, and the difference of each group's mean to
the first group's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("groups", nargs="+", metavar="NAME=DIR[,DIR...]")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    groups = {}
    for g in args.groups:
        name, _, dirs = g.partition("=")
        runs = []
        for d in dirs.split(","):
            path = os.path.join(d, "results.json")
            if not os.path.isfile(path):
                raise SystemExit(f"error: {path} not found (group {name})")
            r = json.load(open(path))
            m = r["best_metrics"] or r["metrics"]
            runs.append({"workdir": d, "seed": r["seed"], "score": float(m[r["main_metric"]]),
                         "metric": r["main_metric"], "model": r["model"], "steps": r["train_steps"],
                         "wall_seconds": r.get("wall_seconds")})
        groups[name] = runs
    metric = next(iter(groups.values()))[0]["metric"]
    rows = []
    first = None
    for name, runs in groups.items():
        x = np.array([r["score"] for r in runs])
        row = {"group": name, "n": len(x), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
               "min": float(x.min()), "max": float(x.max())}
        first = row["mean"] if first is None else first
        row["vs_first"] = row["mean"] - first
        rows.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"metric": metric, "summary": rows, "runs": groups}, f, indent=2)
    lines = [f"| group | n | mean {metric} | std | min | max | Δ mean vs {rows[0]['group']} |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['n']} | {r['mean']:.4f} | {r['std']:.4f} | {r['min']:.4f} | {r['max']:.4f} | "
              f"{r['vs_first']:+.4f} |" for r in rows]
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
