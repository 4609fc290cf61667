"""Which of the pretrained model's largest weights a pruned δ keeps: a diagnostic for pruning runs.

For each run (a workdir, whose exported `delta/` is read, or a δ folder) and each pruned tensor, the share of
its largest ⌈q·n⌉ weights by |W₀| (the base's, before fine-tuning) that the final mask keeps, for q = 0.1%, 1%
and 10% (`ftlab.deltas.prune.largest_kept`). Magnitude pruning keeps nearly all of them; a mask independent of
|W₀| keeps about its own density. Large-magnitude parameters matter out of proportion in BERT-family models
(Kovaleva et al. 2021, "BERT Busters", for LayerNorm outlier dimensions), so this separates a collapsed run
whose mask dropped the largest weights from one that kept them.

    python scripts/prune_diagnostics.py runs/sst2_prune_movement10 runs/sst2_prune_magnitude10 \\
        --out docs/pruning/diagnostics.json

Prints a markdown table (means over tensors); `--out` writes it with the per-tensor rows as JSON. The base is
the run's `model.name` (config.json), else `--model`; its hash must equal the δ's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRACTIONS = (0.001, 0.01, 0.1)


def _delta_dir(path: str) -> tuple[str, str | None]:
    """(δ folder, the workdir's model name or None)."""
    if os.path.isfile(os.path.join(path, "delta.json")):
        return path, None
    cfg_path, d = os.path.join(path, "config.json"), os.path.join(path, "delta")
    if not os.path.isfile(os.path.join(d, "delta.json")):
        raise FileNotFoundError(f"{path}: neither a δ folder (delta.json) nor a workdir with delta/delta.json")
    with open(cfg_path) as f:
        return d, json.load(f).get("model", {}).get("name")


def diagnose(path: str, model: str | None = None) -> dict:
    from safetensors.numpy import load_file

    from ftlab import tree
    from ftlab.checkpoint.hf import load_base
    from ftlab.deltas import prune

    d, run_model = _delta_dir(path)
    with open(os.path.join(d, "delta.json")) as f:
        meta = json.load(f)
    if meta.get("method") != "prune":
        raise ValueError(f"{d}: method {meta.get('method')!r}, not 'prune'")
    name = run_model or model
    if name is None:
        raise ValueError(f"{path}: a δ folder alone does not name its base; pass --model")
    base = load_base(name)
    if meta.get("base_hash") != base.hash:
        raise ValueError(f"{d}: trained on base hash {meta.get('base_hash')}, but {name} has {base.hash}")
    arrays = load_file(os.path.join(d, "delta.safetensors"))
    stored = tree.unflatten({k: v for k, v in arrays.items() if k.startswith("prune/")})
    stored["prune"].setdefault("indices", {})
    res = prune.largest_kept(base.params, stored, FRACTIONS)
    res.update(run=os.path.basename(os.path.normpath(path)), delta=d, step=meta.get("step"),
               criterion=meta["config"].get("criterion"), budget=meta["config"].get("budget"))
    return res


def to_markdown(rows: list[dict]) -> str:
    head = "| run | criterion | budget | density | " + " | ".join(f"kept of top {q:.1%} |W₀|" for q in FRACTIONS)
    lines = [head + " |", "|" + "---|" * (4 + len(FRACTIONS))]
    for r in rows:
        m = r["mean"]
        lines.append(f"| {r['run']} | {r['criterion']} | {r['budget']} | {m['density']:.3f} | "
                     + " | ".join(f"{m[f'top{q:g}']:.3f}" for q in FRACTIONS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="workdirs (their delta/) or δ folders")
    ap.add_argument("--model", default=None, help="base model for δ folders given without their workdir")
    ap.add_argument("--out", default=None, help="write the rows (with per-tensor values) as JSON")
    args = ap.parse_args(argv)
    try:
        rows = [diagnose(p, args.model) for p in args.runs]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("Means over the pruned tensors; 'kept of top q' = share of each tensor's largest q of base weights kept.\n")
    print(to_markdown(rows))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
