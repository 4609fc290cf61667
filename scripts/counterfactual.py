"""Gender sensitivity of finished runs on counterfactual probe sets: prediction flips between swapped pairs.

    python scripts/counterfactual.py --workdir runs/sst2_cda_none runs/sst2_cda --out docs/counterfactual/sst2

For each run workdir (its config.json and exported δ, loaded as `ftlab eval` does) the model predicts both sides
of every pair of each probe (default: the two committed ones, built by scripts/make_cda_probe.py:
ftlab/assets/cda/sst2_dev_probe.tsv, the 176 SST-2 dev sentences holding a listed gendered word, and
ftlab/assets/cda/imdb_test_probe.tsv, 1000 IMDB test-review sentences; each sentence beside its swap).
Reported per run and probe:
  flip rate      fraction of pairs whose predicted label differs between the original and the swapped side
  mean |Δp|      mean over pairs of |p(class 1 | original) − p(class 1 | swapped)| (SST-2: class 1 = positive);
                 for more than two classes, the total-variation distance ½·Σ_c |Δp_c|
  probe accuracy on the original and on the swapped sides (against the original label)
  dev accuracy   the run's own results.json (its best or final eval, as `ftlab train` printed it)
plus, per value of task.augment, the mean and sample standard deviation over the runs, and for runs of the same
seed with and without augmentation a paired count: on how many pairs |Δp| is smaller with augmentation (two-sided
exact sign test). Writes OUT.json (statistics, and the flipped pairs with their probabilities) and OUT.md (the
tables); prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def probe_run(workdir: str, probes: dict[str, list[dict]], delta_dir: str = "delta") -> dict:
    """Class probabilities of a run's δ on both sides of each probe's pairs, and the flip statistics."""
    import jax

    from ftlab import tree
    from ftlab.cli import _load_run
    from ftlab.data.batching import batches
    from ftlab.data.tokenize import encode
    from ftlab.train import loop, step

    cfg, prep, delta_mod, delta = _load_run(workdir, delta_dir)
    task, base = prep["task"], prep["base"]
    if task.kind != "classification":
        raise SystemExit(f"error: {workdir}: task {task.name!r} is {task.kind}; the probe needs a classifier")
    if loop._prompt(cfg, task, base.config) is not None:
        raise SystemExit(f"error: {workdir}: prompt-based runs are not supported by this probe yet")
    train, fixed = tree.split(delta, delta_mod.trainable(delta))
    eval_step = step.make_eval_step(prep["model"], delta_mod, task.kind, with_scores=True)
    pad = base.tokenizer.pad_token_id or 0

    def probabilities(texts: list[str]) -> np.ndarray:  # [N, C]
        examples = [{"text_a": t, "text_b": None, "label": None, "source": f"probe:{i}"} for i, t in enumerate(texts)]
        enc = encode(examples, base.tokenizer, task, cfg.task.max_length,
                     model_max_positions=getattr(base.config, "max_position_embeddings", None))
        out_p: list = []
        for batch in batches(enc, cfg.train.eval_batch_size, shuffle=False, seed=0, epoch=0, pad_id=pad,
                             pad_to_multiple_of=cfg.train.pad_to_multiple_of, drop_remainder=False, pad_final=True):
            out = jax.device_get(eval_step(train, fixed, prep["params"], batch))
            out_p.extend(np.asarray(out["scores"])[batch["example_mask"] > 0])
        return np.stack(out_p).astype(np.float64)

    results_path = os.path.join(workdir, "results.json")
    dev = None
    if os.path.isfile(results_path):
        with open(results_path) as f:
            r = json.load(f)
        m = r.get("best_metrics") or r.get("metrics") or {}
        dev = m.get(r.get("main_metric", "accuracy"))
    augment = cfg.task.get("augment", "none")
    run = {"workdir": workdir, "delta": delta_dir, "task": task.name, "model": cfg.model.name,
           "method": cfg.delta.method, "seed": cfg.seed, "augment": augment,
           "augment_mode": cfg.task.get("augment_mode", "add") if augment != "none" else None,
           "train_subset": cfg.task.train_subset, "dev_score": dev, "probes": {}}
    for name, probe in probes.items():
        n = len(probe)
        p = probabilities([r["text"] for r in probe] + [r["swapped"] for r in probe])
        p_orig, p_swap = p[:n], p[n:]
        pred_orig, pred_swap = p_orig.argmax(-1), p_swap.argmax(-1)
        labels = np.array([r["label"] for r in probe])
        dp = np.abs(p_orig[:, 1] - p_swap[:, 1]) if p.shape[1] == 2 else 0.5 * np.abs(p_orig - p_swap).sum(-1)
        flips = pred_orig != pred_swap
        run["probes"][name] = {
            "n_pairs": n, "flips": int(flips.sum()), "flip_rate": float(flips.mean()),
            "mean_abs_dp": float(dp.mean()), "median_abs_dp": float(np.median(dp)), "max_abs_dp": float(dp.max()),
            "probe_accuracy_original": float((pred_orig == labels).mean()),
            "probe_accuracy_swapped": float((pred_swap == labels).mean()),
            "pairs": [{"id": r["id"], "p_original": [round(float(x), 6) for x in po],
                       "p_swapped": [round(float(x), 6) for x in ps], "abs_dp": float(d), "flipped": bool(fl)}
                      for r, po, ps, d, fl in zip(probe, p_orig, p_swap, dp, flips)],
        }
    return run


def _mean_std(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f}"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value of `wins` vs `losses` (ties dropped) under p = 1/2."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(runs: list[dict], name: str) -> list[dict]:
    """For each seed run both without augmentation and with it: on how many pairs |Δp| is smaller with it."""
    base = {r["seed"]: r for r in runs if r["augment"] == "none"}
    out = []
    for r in runs:
        if r["augment"] == "none" or r["seed"] not in base:
            continue
        a, b = (np.array([x["abs_dp"] for x in run["probes"][name]["pairs"]]) for run in (base[r["seed"]], r))
        wins, losses = int((b < a).sum()), int((b > a).sum())
        out.append({"seed": r["seed"], "augment": _aug(r), "smaller": wins, "larger": losses,
                    "ties": int(len(a) - wins - losses), "sign_test_p": sign_test(wins, losses)})
    return out


def _summary(run: dict, probes: dict[str, list[dict]]) -> dict:
    """A run's result for the JSON file: per probe the statistics and the flipped pairs (not every pair)."""
    out = {k: v for k, v in run.items() if k != "probes"}
    out["probes"] = {}
    for name, q in run["probes"].items():
        rows = {r["id"]: r for r in probes[name]}
        out["probes"][name] = {k: v for k, v in q.items() if k != "pairs"}
        out["probes"][name]["flipped"] = [
            {"id": x["id"], "swaps": rows[x["id"]]["swaps"], "p_original": x["p_original"],
             "p_swapped": x["p_swapped"]} for x in q["pairs"] if x["flipped"]]
    return out


def _aug(r: dict) -> str:
    return r["augment"] + (f" ({r['augment_mode']})" if r["augment_mode"] else "")


def markdown(runs: list[dict], probe_paths: dict[str, str]) -> str:
    lines = ["flip rate = fraction of pairs whose predicted label changes when the gendered words are swapped; "
             "mean |Δp| = mean |p(class 1 | original) − p(class 1 | swapped)| (SST-2 class 1 = positive); "
             "probe accuracy against the original's label; dev acc from the run's results.json.", ""]
    for name, path in probe_paths.items():
        n = runs[0]["probes"][name]["n_pairs"]
        lines += [f"### Probe `{name}`: `{path}` ({n} pairs)", "",
                  "| run | augment | seed | dev acc | probe acc (orig / swapped) | flips | flip rate | mean \\|Δp\\| |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in runs:
            q = r["probes"][name]
            dev = "–" if r["dev_score"] is None else f"{r['dev_score']:.4f}"
            lines.append(f"| `{os.path.basename(os.path.normpath(r['workdir']))}` | {_aug(r)} | {r['seed']} | {dev} | "
                         f"{q['probe_accuracy_original']:.4f} / {q['probe_accuracy_swapped']:.4f} | "
                         f"{q['flips']}/{q['n_pairs']} | {q['flip_rate']:.4f} | {q['mean_abs_dp']:.4f} |")
        groups: dict[str, list[dict]] = {}
        for r in runs:
            groups.setdefault(_aug(r), []).append(r)
        lines += ["", "Mean ± sample std over runs:", "",
                  "| augment | runs | seeds | dev acc | flips (total) | flip rate | mean \\|Δp\\| | median \\|Δp\\| |",
                  "|---|---|---|---|---|---|---|---|"]
        for g, rs in groups.items():
            qs = [r["probes"][name] for r in rs]
            lines.append(f"| {g} | {len(rs)} | {', '.join(str(r['seed']) for r in rs)} | "
                         f"{_mean_std([r['dev_score'] for r in rs])} | {sum(q['flips'] for q in qs)}/"
                         f"{sum(q['n_pairs'] for q in qs)} | {_mean_std([q['flip_rate'] for q in qs])} | "
                         f"{_mean_std([q['mean_abs_dp'] for q in qs])} | {_mean_std([q['median_abs_dp'] for q in qs])} |")
        pairs = paired(runs, name)
        if pairs:
            lines += ["", "Paired by seed (the same pairs, with vs without augmentation): pairs whose |Δp| is smaller "
                      "/ larger with augmentation, and the two-sided sign test.", "",
                      "| seed | augment | smaller | larger | ties | sign test p |", "|---|---|---|---|---|---|"]
            lines += [f"| {x['seed']} | {x['augment']} | {x['smaller']} | {x['larger']} | {x['ties']} | "
                      f"{x['sign_test_p']:.3g} |" for x in pairs]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", nargs="+", required=True, help="finished run directories")
    p.add_argument("--probe", nargs="+", default=None,
                   help="probe TSVs (default: the shipped ones, ftlab/assets/cda/*_probe.tsv)")
    p.add_argument("--delta", default="delta", help="δ folder inside each workdir (as for `ftlab eval`)")
    p.add_argument("--out", default="", help="write OUT.json and OUT.md")
    a = p.parse_args(argv)
    from ftlab.data import counterfactual

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = a.probe or [os.path.join(os.path.dirname(counterfactual.PAIRS_FILE), f)
                        for f in ("sst2_dev_probe.tsv", "imdb_test_probe.tsv")]
    shown = {}
    for path in paths:
        name = os.path.basename(path).removesuffix(".tsv").removesuffix("_probe")
        rel = os.path.relpath(os.path.abspath(path), repo)
        shown[name] = path if rel.startswith("..") else rel
    probes = {name: counterfactual.read_probe(path) for name, path in zip(shown, paths)}
    runs = [probe_run(w, probes, a.delta) for w in a.workdir]
    md = markdown(runs, shown)
    print(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)) or ".", exist_ok=True)
        with open(a.out + ".json", "w") as f:
            json.dump({"probes": shown, "paired": {name: paired(runs, name) for name in shown},
                       "runs": [_summary(r, probes) for r in runs]}, f, indent=1)
            f.write("\n")
        with open(a.out + ".md", "w") as f:
            f.write(md)
        print(f"wrote {a.out}.json, {a.out}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
