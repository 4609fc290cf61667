"""K-shot grids (LM-BFF's protocol): train one config on every (task, K, seed) split, score on the test sets.

    python scripts/kshot_grid.py run --config configs/kshot.py:minilm-standard --tasks sst2,sst5,mr,trec,mrpc \\
        --k 16 --workdir runs/kshot/minilm-standard [--seeds 13,21,42,87,100] [--config.key=value ...]
    python scripts/kshot_grid.py report --grid standard=runs/kshot/minilm-standard \\
        --grid prompt=runs/kshot/minilm-prompt --k 16 --out docs/fewshot/minilm [--extra NAME=FILE.json ...]

run: each cell is an ordinary run in DIR/<task>/<K>-<seed>/ (finished cells are skipped, interrupted ones
resume); DIR/grid.json holds per (task, K) every seed's test score and mean / std / min / max
(`ftlab.train.kshot_grid`). report: a markdown table of mean (std) at --k, one row per grid (and per --extra:
a scripts/fewshot.py result JSON, its accuracy put in its task's column), written to OUT.md with OUT.json, and
the plot of mean ± std against K (OUT.png) when the grids hold several K.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftlab import config as config_lib  # noqa: E402


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    overrides, rest = config_lib.parse_cli_overrides(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="scripts/kshot_grid.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--config", required=True)
    r.add_argument("--workdir", required=True)
    r.add_argument("--tasks", default="sst2")
    r.add_argument("--k", default="16", help="comma-separated K (per class), e.g. 4,8,16,32,64")
    r.add_argument("--seeds", default="13,21,42,87,100")
    r.add_argument("--test-subset", type=int, default=0, help="score on this many test examples (0 = all)")
    p = sub.add_parser("report")
    p.add_argument("--grid", action="append", required=True, help="NAME=DIR (repeatable, in row order)")
    p.add_argument("--extra", action="append", default=[], help="NAME=FILE.json of scripts/fewshot.py "
                   "(repeatable; several files of one NAME: mean (std) of their accuracies; FILE.json:calibrated "
                   "takes its calibrated accuracy)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--out", required=True, help="output prefix: OUT.md, OUT.json, OUT.png")
    a = ap.parse_args(rest)
    from ftlab.train import kshot_grid, pet

    if a.cmd == "run":
        try:
            cfg = config_lib.apply_overrides(config_lib.load(a.config), overrides)
            out = kshot_grid.run_grid(cfg, a.tasks.split(","), _ints(a.k), _ints(a.seeds), a.workdir,
                                      a.test_subset)
        except (config_lib.ConfigError, pet.StepError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps({key: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)}
                          for key, v in out["results"].items()}))
        return 0
    if overrides:
        print(f"error: report takes no --config.* overrides (got {sorted(overrides)})", file=sys.stderr)
        return 2
    grids = {}
    for spec in a.grid:
        name, sep, path = spec.partition("=")
        if not sep:
            print(f"error: --grid {spec!r}: expected NAME=DIR", file=sys.stderr)
            return 2
        try:
            grids[name] = kshot_grid.load(path)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    extra: dict[str, dict[str, list[float]]] = {}
    for spec in a.extra:
        name, sep, path = spec.partition("=")
        if not sep:
            print(f"error: --extra {spec!r}: expected NAME=FILE.json", file=sys.stderr)
            return 2
        path, calibrated = (path[: -len(":calibrated")], True) if path.endswith(":calibrated") else (path, False)
        with open(path) as f:
            res = json.load(f)
        if "task" not in res or "accuracy" not in res:
            print(f"error: {path}: not a scripts/fewshot.py result (needs 'task' and 'accuracy')", file=sys.stderr)
            return 2
        if calibrated and "calibrated" not in res:
            print(f"error: {path}: no calibrated result (run scripts/fewshot.py with --calibrate)", file=sys.stderr)
            return 2
        acc = res["calibrated"]["accuracy"] if calibrated else res["accuracy"]
        extra.setdefault(name, {}).setdefault(res["task"], []).append(acc)
    rows = {n: {t: kshot_grid.summary_cell(v) for t, v in per.items()} for n, per in extra.items()}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    md = kshot_grid.table(grids, a.k, rows)
    with open(a.out + ".md", "w") as f:
        f.write(md + "\n")
    with open(a.out + ".json", "w") as f:
        json.dump({"k": a.k, "grids": {n: g["results"] for n, g in grids.items()}, "extra": extra}, f, indent=1)
    if any(len(g["ks"]) > 1 for g in grids.values()):
        kshot_grid.plot_k_curve(grids, a.out + ".png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
