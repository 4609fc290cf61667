"""K-shot grids: one config trained on every (task, K, seed) LM-BFF split, scored on the original test sets.

Gao, Fisch & Chen 2021 (LM-BFF) report few-shot results as mean (std) over five K-shot splits (seeds 13, 21,
42, 87, 100) of each task, each run selecting its δ on its own K-shot dev split and scored on the task's original
evaluation set. `run_grid(cfg, tasks, ks, seeds, workdir)` (entry point: scripts/kshot_grid.py) does that for any
config (standard fine-tuning with a head, prompt-based fine-tuning, with demonstrations, any δ):

    cell (task, K, seed)   the config with task.name = task, task.kshot = "K-seed", task.eval_split = 'dev'
                           (the K-shot dev split: δ selection), trained by `loop.train_and_evaluate` in
                           DIR/<task>/<K>-<seed>/ (a finished cell is skipped after checking it was made from the
                           same config; an interrupted one resumes from its checkpoint)
    test                   its exported δ scored on the task's original evaluation set (`kshot.TEST_SPLIT`),
                           cached in DIR/<task>/<K>-<seed>/test.json with the md5 of the δ it scored
    DIR/grid.json          per (task, K): the main metric of every seed, mean, std (numpy's, ddof=0), min, max;
                           the config; per cell the K-shot dev score and the training time

`report(grids)` puts several grids (e.g. standard vs prompt-based) side by side: a markdown table of mean (std)
per task at one K, and `plot_k_curve` the mean ± std against K per task.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ftlab import config as config_lib

SEEDS = (13, 21, 42, 87, 100)  # LM-BFF's


def _log(msg: str) -> None:
    print(f"[kshot] {msg}", file=sys.stderr, flush=True)


def cell_config(cfg: config_lib.Config, task: str, k: int, seed: int) -> config_lib.Config:
    """The config of one cell: `cfg` with its task, K-shot split and model-selection split set."""
    if cfg.task.get("soft_labels") or cfg.task.get("train_extra"):
        raise config_lib.ConfigError("a K-shot grid trains on the K-shot splits: task.soft_labels / "
                                     "task.train_extra must be empty")
    pattern = cfg.get("prompt", {}).get("pattern", "")
    if pattern and ":" in pattern and not pattern.startswith(f"{task}:"):
        raise config_lib.ConfigError(f"prompt.pattern {pattern!r} names another task than {task!r}; use '<i>' "
                                     "(pattern i of each task) in a grid over several tasks")
    c = config_lib.Config(json.loads(json.dumps(cfg.to_dict())))  # a copy
    c.task.name, c.task.kshot, c.task.eval_split = task, f"{k}-{seed}", "dev"
    return c


def test_metrics(cfg: config_lib.Config, run_dir: str, subset: int = 0) -> dict[str, float]:
    """Metrics of the run's exported δ on the task's original evaluation set (`subset` > 0: that many examples,
    drawn as task.eval_subset draws; for quick checks), cached with the δ's md5."""
    from ftlab.train import pet

    delta_md5 = pet.file_md5(os.path.join(run_dir, "delta", "delta.safetensors"))
    path = os.path.join(run_dir, "test.json")
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("delta_md5") == delta_md5 and cached.get("subset", 0) == subset:
            return cached["metrics"]
    metrics = pet.evaluate_run(cfg, run_dir, "test", subset)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"delta_md5": delta_md5, "split": "test", "subset": subset, "metrics": metrics}, f, indent=1)
    os.replace(tmp, path)
    return metrics


def summarize(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": len(v)}


def summary_cell(values: Sequence[float]) -> str:
    """'mean (std)' in percent; a single value alone."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    s = summarize(values)
    return f"{100 * s['mean']:.1f} ({100 * s['std']:.1f})"


def run_grid(cfg: config_lib.Config, tasks: Sequence[str], ks: Sequence[int], seeds: Sequence[int] = SEEDS,
             workdir: str = "runs/kshot", test_subset: int = 0) -> dict[str, Any]:
    from ftlab.tasks import get_task
    from ftlab.train import pet

    if not tasks or not ks or not seeds:
        raise ValueError("a K-shot grid needs at least one task, one K and one seed")
    os.makedirs(workdir, exist_ok=True)
    cells, out = [], {"config": cfg.to_dict(), "tasks": list(tasks), "ks": list(ks), "seeds": list(seeds),
                      "test_subset": test_subset, "results": {}}
    total, n = len(tasks) * len(ks) * len(seeds), 0
    for task in tasks:
        main = get_task(task).main_metric
        for k in ks:
            scores = []
            for seed in seeds:
                n += 1
                c = cell_config(cfg, task, k, seed)
                run_dir = os.path.join(workdir, task, f"{k}-{seed}")
                t = time.time()
                res = pet.train_run(c, run_dir, f"{task} K={k} seed {seed} ({n}/{total})", _log)
                test = test_metrics(c, run_dir, test_subset)
                _log(f"{task} K={k} seed {seed}: K-shot dev {main} {res['best_metrics'][main]:.4f}, "
                     f"test {main} {test[main]:.4f} ({time.time() - t:.0f} s)")
                scores.append(test[main])
                cells.append({"task": task, "k": k, "seed": seed, "dev": res["best_metrics"][main],
                              "test": test, "wall_seconds": res.get("wall_seconds")})
            out["results"][f"{task}/{k}"] = {"metric": main, "seeds": dict(zip(map(str, seeds), scores,
                                                                              strict=True)),
                                             **summarize(scores)}
            out["cells"] = cells
            _write(out, workdir)  # after every (task, K): a partial grid is readable while the rest runs
    return out


def _write(out: dict[str, Any], workdir: str) -> None:
    tmp = os.path.join(workdir, "grid.json.tmp")
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, os.path.join(workdir, "grid.json"))


def load(path: str) -> dict[str, Any]:
    """A grid.json (or the folder holding it)."""
    p = os.path.join(path, "grid.json") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{p}: no grid.json (run scripts/kshot_grid.py first)")
    with open(p) as f:
        return json.load(f)


def table(grids: dict[str, dict], k: int, extra_rows: dict[str, dict[str, str]] | None = None) -> str:
    """Markdown: one row per grid (and per extra row: {task: cell text}), one column per task: mean (std) at K."""
    tasks = sorted({t for g in grids.values() for t in g["tasks"]} | {t for r in (extra_rows or {}).values()
                                                                     for t in r})
    metric = {}
    for g in grids.values():
        for key, r in g["results"].items():
            metric[key.split("/")[0]] = r["metric"]
    # a task only extra rows fill is scored by scripts/fewshot.py, whose score is accuracy
    head = "| method | " + " | ".join(f"{t} ({metric.get(t, 'accuracy')})" for t in tasks) + " |"
    lines = [head, "|---|" + "---|" * len(tasks)]
    for name, g in grids.items():
        cells = []
        for t in tasks:
            r = g["results"].get(f"{t}/{k}")
            cells.append(f"{100 * r['mean']:.1f} ({100 * r['std']:.1f})" if r else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, row in (extra_rows or {}).items():
        lines.append(f"| {name} | " + " | ".join(row.get(t, "") for t in tasks) + " |")
    return "\n".join(lines)


def plot_k_curve(grids: dict[str, dict], path: str) -> None:
    """Mean ± std of the main metric against K (log scale), one panel per task, one line per grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for g in grids.values() for t in g["tasks"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        for name, g in grids.items():
            ks = sorted(int(key.split("/")[1]) for key in g["results"] if key.split("/")[0] == t)
            if not ks:
                continue
            m = np.array([g["results"][f"{t}/{k}"]["mean"] for k in ks])
            s = np.array([g["results"][f"{t}/{k}"]["std"] for k in ks])
            ax.errorbar(ks, m, yerr=s, marker="o", capsize=3, label=f"{name} ({g['results'][f'{t}/{ks[0]}']['n']}"
                        " seeds)")
            metric = g["results"][f"{t}/{ks[0]}"]["metric"]
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (training examples per class)")
        ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
