"""PNG plots of finished runs (matplotlib, Agg backend): what `ftlab plot --kind ...` draws.

  curves      training loss and dev score against the step, one line per workdir (metrics.jsonl)
  compare     the dev score of each workdir as a bar, labelled with its method and trainable fraction
  seeds       seed variance: one strip of points + box per group of workdirs (grouped by method, task/method
              or parent directory), with mean ± std in the label
  early-exit  quality vs measured speed-up of every exit policy (a JSON written by scripts/early_exit.py)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _results(wd: str) -> dict[str, Any]:
    path = os.path.join(wd, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (is {wd} a finished ftlab run?)")
    with open(path) as f:
        return json.load(f)


def _score(r: dict[str, Any]) -> float:
    m = r.get("best_metrics") or r.get("metrics") or {}
    if r.get("main_metric") not in m:
        raise KeyError(f"results.json of task {r.get('task')} has no {r.get('main_metric')!r} metric")
    return float(m[r["main_metric"]])


def curves(workdirs: Sequence[str], out: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for wd in workdirs:
        path = os.path.join(wd, "metrics.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found")
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        label = os.path.basename(os.path.normpath(wd))
        tr = [r for r in rows if r["kind"] == "train"]
        ev = [r for r in rows if r["kind"] == "eval"]
        ax1.plot([r["step"] for r in tr], [r["loss"] for r in tr], label=label)
        main = _results(wd).get("main_metric") if os.path.isfile(os.path.join(wd, "results.json")) else None
        main = main or next((k for k in (ev[0] if ev else {}) if k not in ("step", "kind", "loss")), None)
        if main:
            ax2.plot([r["step"] for r in ev], [r[main] for r in ev], marker="o", label=f"{label} ({main})")
    ax1.set(xlabel="step", ylabel="train loss", title="training loss")
    ax2.set(xlabel="step", ylabel="dev score", title="dev score")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def compare(workdirs: Sequence[str], out: str) -> None:
    plt = _plt()
    rs = [(os.path.basename(os.path.normpath(wd)), _results(wd)) for wd in workdirs]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rs) + 2), 3.8))
    xs = range(len(rs))
    scores = [_score(r) for _, r in rs]
    ax.bar(xs, scores, color="#4c72b0")
    for x, (_, r), s in zip(xs, rs, scores):
        ax.text(x, s, f"{s:.3f}\n{100 * r['trainable_fraction']:.2g}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{name}\n({r['method']})" for name, r in rs], rotation=30, ha="right", fontsize=7)
    metric = {r["main_metric"] for _, r in rs}
    ax.set_ylabel("dev " + "/".join(sorted(metric)))
    ax.set_ylim(min(0.0, min(scores)), max(scores) * 1.15 if max(scores) > 0 else 1.0)
    ax.set_title("method comparison (label: dev score, trainable % of parameters)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def seed_groups(workdirs: Sequence[str], group_by: str = "method") -> dict[str, list[float]]:
    """{group: [score of each seed]}; group_by 'method' | 'task' (task/method) | 'dir' (parent directory)."""
    groups: dict[str, list[float]] = {}
    for wd in workdirs:
        r = _results(wd)
        if group_by == "method":
            key = r["method"]
        elif group_by == "task":
            key = f"{r['task']}/{r['method']}"
        elif group_by == "dir":
            key = os.path.basename(os.path.dirname(os.path.normpath(wd)))
        else:
            raise ValueError(f"group_by must be method, task or dir, got {group_by!r}")
        groups.setdefault(key, []).append(_score(r))
    return groups


def seeds(workdirs: Sequence[str], out: str, group_by: str = "method") -> dict[str, list[float]]:
    import numpy as np

    plt = _plt()
    groups = seed_groups(workdirs, group_by)
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 3.8))
    ax.boxplot([groups[n] for n in names], positions=range(len(names)), widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        ys = groups[n]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(ys)), ys, s=14, alpha=0.8, zorder=3)
    ax.set_xticks(range(len(names)),
                  [f"{n}\n{np.mean(groups[n]):.3f}±{np.std(groups[n]):.3f} (n={len(groups[n])})" for n in names],
                  fontsize=7)
    ax.set_ylabel("dev score")
    ax.set_title("seed variance")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return groups


def early_exit(result: dict[str, Any] | str, out: str) -> None:
    """`result`: the dict (or JSON path) scripts/early_exit.py writes."""
    if isinstance(result, str):
        with open(result) as f:
            result = json.load(f)
    r = result
    plt = _plt()
    m = r["main_metric"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, marker in (("entropy", "o"), ("patience", "s"), ("learned", "^"), ("static", "x")):
        pts = sorted((row["speedup"], row[m]) for row in r["rows"] if row["policy"] == name)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=name if name != "static" else "static exit (no retraining)")
    if r.get("removed"):
        pts = sorted((rm["speedup"], rm[m]) for rm in r["removed"])
        ax.plot(*zip(*pts), marker="D", linestyle="--", label="top layers removed, retrained")
    ax.axhline(r["full_score"] - 0.01, color="grey", linestyle=":", label="full model − 1 point")
    ax.set_xlabel("measured speed-up at batch size 1")
    ax.set_ylabel(f"dev {m}")
    ax.set_title(f"{r['task']}: early exit ({r['routine']} training)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
