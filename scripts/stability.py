"""Stability report over seed sweeps: a table (mean, std, min, max, failed runs) and a strip/box plot per recipe,
expected-validation-performance curves, and the early stopping of bad seeds replayed on the logged curves.

    python scripts/stability.py runs/stability/cola-vanilla runs/stability/cola-mosbach ... --out docs/stability
    python scripts/stability.py docs/stability/sweeps/*.json --out docs/stability   # regenerate from the repo

Each argument is an `ftlab sweep` workdir (its sweep.json) or a copy of a sweep.json named `<name>.json`; the
sweep.json of every workdir given is copied to OUT/sweeps/<name>.json, so the report can be regenerated from
what is committed. A name `<task>-<recipe>` is grouped by task and labelled by recipe; any other name is its
own label. A run has *failed* when its best dev score is at or below the majority-class score of the task
(Mosbach et al. 2021; regression: Pearson ≤ 0). Writes
OUT/stability.json, OUT/stability.md (the tables), OUT/stability.png (strip + box per recipe, one panel per
task) and OUT/evp.png (expected best dev score vs number of seeds, Dodge et al. 2019).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from ftlab.train import sweep

FRACTIONS = (0.1, 0.2, 0.3, 0.5)
KEEPS = (1, 2, 3, 5)


def scores_from_expected_max(em: list[float]) -> np.ndarray:
    """The sorted scores whose `sweep.expected_max` curve (n = 1..N, N = len(em)) is `em`.

    expected_max is linear in the sorted scores, E_n = Σ_i v_(i)·((i/N)^n − ((i−1)/N)^n), and the N×N matrix
    is invertible (a Vandermonde matrix times a difference operator), so a report that kept only the curve
    still determines every seed's best score (without which seed had which). Rounded to 1e-9 (the solve's
    error is ~1e-12 for N = 10)."""
    N = len(em)
    i = np.arange(1, N + 1, dtype=np.float64)
    m = np.array([(i / N) ** n - ((i - 1) / N) ** n for n in range(1, N + 1)])
    return np.round(np.linalg.solve(m, np.asarray(em, np.float64)), 9)


def load(src: str) -> dict:
    path = src if src.endswith(".json") else os.path.join(src, "sweep.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (run `ftlab sweep ... --workdir {src}` first)")
    with open(path) as f:
        s = json.load(f)
    name = os.path.basename(os.path.normpath(src)).removesuffix(".json")
    s["name"], s["path"] = name, path
    task, _, recipe = name.partition("-")
    if task != s["task"] or not recipe:
        task, recipe = s["task"], name
    s["label"], s["group"] = recipe, task
    return s


def row(s: dict) -> dict:
    best = np.asarray(s["best_scores"], np.float64)
    if "per_seed" in s:
        finals = np.asarray([v["final_score"] for v in s["per_seed"].values() if v["final_score"] is not None])
    else:  # a summary without per-seed records (see `recovered` in the sweep file)
        finals = np.asarray([s["final_mean"]] if s.get("final_mean") is not None else [])
    majority = s.get("majority_score")
    failed = int(np.sum(best <= majority + 1e-12)) if majority is not None else None
    return {"task": s["group"], "recipe": s["label"], "metric": s["main_metric"], "n": int(len(best)),
            "mean": float(best.mean()), "std": float(best.std()), "min": float(best.min()),
            "max": float(best.max()), "final_mean": float(finals.mean()) if len(finals) else None,
            "failed": failed, "majority": majority, "expected_max": s["expected_max"],
            "steps": s["total_steps"], "seconds": s["train_seconds"],
            "examples_per_second": s["train_examples_per_second"], "mode": s["mode"]}


def stop_rows(s: dict) -> list[dict]:
    if "per_seed" not in s:
        return s.get("early_stopping", [])
    curves = {int(k): v["curve"] for k, v in s["per_seed"].items() if v["steps_run"] == s["total_steps"]}
    if len(curves) < 2:
        return []
    return sweep.stop_table(curves, s["total_steps"], FRACTIONS, KEEPS)


def markdown(rows: list[dict], stops: dict[str, list[dict]]) -> str:
    out = ["| task | recipe | metric | seeds | mean | std | min | max | failed | majority | E[best of 3] | E[best of 10] |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        em = r["expected_max"]
        pick = lambda n, em=em: f"{em[n - 1]:.4f}" if len(em) >= n else "–"  # noqa: E731
        maj = f"{r['majority']:.4f}" if r["majority"] is not None else "–"
        out.append(f"| {r['task']} | {r['recipe']} | {r['metric']} | {r['n']} | {r['mean']:.4f} | {r['std']:.4f} | "
                   f"{r['min']:.4f} | {r['max']:.4f} | {r['failed']} | {maj} | {pick(3)} | {pick(10)} |")
    out += ["", "Early stopping of bad seeds, replayed on the logged dev curves (Dodge et al. 2020): after a fraction "
            "f of the steps only the k best seeds so far go on. 'best' is the best dev score the kept seeds reach, "
            "'all' the best of every seed trained to the end, 'compute' the share of that full cost.", "",
            "| task | recipe | f | k | best | all | compute |", "|---|---|---|---|---|---|---|"]
    for label, rs in stops.items():
        task, recipe = label.split("/", 1)
        for x in rs:
            out.append(f"| {task} | {recipe} | {x['fraction']} | {x['keep']} | {x['best']:.4f} | {x['best_all']:.4f} "
                       f"| {x['compute']:.2f} |")
    return "\n".join(out) + "\n"


def plot(sweeps: list[dict], out_png: str, evp_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({s["group"] for s in sweeps})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, g in zip(axes[0], groups):
        ss = [s for s in sweeps if s["group"] == g]
        data = [s["best_scores"] for s in ss]
        ax.boxplot(data, showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.7, zorder=3)
        if ss[0].get("majority_score") is not None:
            ax.axhline(ss[0]["majority_score"], ls="--", lw=0.8, color="grey", label="majority class")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(1, len(ss) + 1), [s["label"] for s in ss], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{g} ({ss[0]['main_metric']}, dev)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("best dev score per seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for s in (s for s in sweeps if s["group"] == g):
            em = s["expected_max"]
            ax.plot(range(1, len(em) + 1), em, marker="o", ms=3, label=s["label"])
        ax.set_xlabel("number of seeds tried")
        ax.set_ylabel(f"expected best dev {sweeps[0]['main_metric'] if len(groups) == 1 else ''}")
        ax.set_title(g, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("expected validation performance (Dodge et al. 2019)", fontsize=10)
    fig.tight_layout()
    fig.savefig(evp_png, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdirs", nargs="+", help="ftlab sweep workdirs")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    sweeps = [load(w) for w in args.workdirs]
    rows = [row(s) for s in sweeps]
    stops = {f"{s['group']}/{s['label']}": stop_rows(s) for s in sweeps}
    os.makedirs(os.path.join(args.out, "sweeps"), exist_ok=True)
    for s in sweeps:
        keep = os.path.join(args.out, "sweeps", f"{s['name']}.json")
        if os.path.abspath(s["path"]) != os.path.abspath(keep):
            shutil.copyfile(s["path"], keep)
    with open(os.path.join(args.out, "stability.json"), "w") as f:
        json.dump({"rows": rows, "early_stopping": stops}, f, indent=2)
    md = markdown(rows, stops)
    with open(os.path.join(args.out, "stability.md"), "w") as f:
        f.write(md)
    plot(sweeps, os.path.join(args.out, "stability.png"), os.path.join(args.out, "evp.png"))
    print(md)
    print(f"wrote {args.out}/stability.{{json,md,png}} and evp.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
