"""Held-out text scores of LM runs: masked-LM pseudo-perplexity (Salazar et al. 2020) of an mlm run's δ, or
causal-LM perplexity of a clm run's δ, on the run's own held-out documents (its `lm` section, ftlab.data.text).

    python scripts/lm_eval.py --workdir runs/imdb/dapt/0-head runs/imdb/dapt/1-adapt --docs 100 \
        --out docs/adaptive/imdb_minilm_pppl.json
    python scripts/lm_eval.py --workdir runs/imdb/smollm2 --base --docs 200 --out docs/adaptive/imdb_smollm2_ppl.json

`--base` also scores θ₀ itself (the run's config with its δ at initialisation, the identity for LoRA): the
"before adaptation" row of a decoder. (MiniLM has no pretrained MLM head, so its "before" row is the run that
trained the head alone with the encoder frozen: configs/imdb_mlm.py:head.) Every row scores the same documents:
the first --docs held-out documents of the first workdir's config, each on its own (--max-length tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", nargs="+", required=True, help="finished mlm / clm runs (or stages of one)")
    ap.add_argument("--base", action="store_true", help="also score θ₀ (the first run's δ at initialisation)")
    ap.add_argument("--docs", type=int, default=100, help="held-out documents scored")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per document (truncation)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", help="JSON file (a .md table is written beside it)")
    args = ap.parse_args(argv)

    import jax

    from ftlab import config as config_lib
    from ftlab import deltas
    from ftlab.checkpoint import delta_io
    from ftlab.train import lm
    from ftlab.train.loop import _load_lm_split, init_delta, prepare

    rows, docs = [], None
    jobs = [(args.workdir[0], "base")] if args.base else []
    jobs += [(wd, "delta") for wd in args.workdir]
    for wd, what in jobs:
        with open(os.path.join(wd, "config.json")) as f:
            cfg = config_lib.Config(json.load(f))
        prep = prepare(cfg)
        task, base = prep["task"], prep["base"]
        if task.kind not in ("masked_lm", "causal_lm"):
            raise SystemExit(f"error: {wd} is a {task.kind} run, not an LM stage (task mlm | clm)")
        if docs is None:
            docs = _load_lm_split(cfg, task, base.tokenizer, "dev")[0][: args.docs]
        if what == "base":
            d = init_delta(cfg, prep)
            variables, label = d["delta_mod"].apply(prep["params"], d["delta"]), f"{cfg.model.name} (θ₀)"
        else:
            method, _, delta = delta_io.load(os.path.join(wd, "delta"), prep["params"], base.hash)
            variables, label = deltas.get(method).apply(prep["params"], delta), wd
        model = prep["model"]
        print(f"[lm_eval] {label}: {len(docs)} documents", file=sys.stderr)
        if task.kind == "masked_lm":
            r = lm.pseudo_perplexity(model, variables, docs, base.tokenizer, args.max_length, args.batch_size)
        else:
            r = lm.perplexity(model, variables, docs, base.tokenizer, args.max_length, min(args.batch_size, 16))
        res_path = os.path.join(wd, "results.json")
        trained = json.load(open(res_path)) if what == "delta" and os.path.isfile(res_path) else {}
        rows.append({"run": label, "model": cfg.model.name, "method": cfg.delta.method if what == "delta" else "none",
                     "train_steps": trained.get("train_steps", 0), "lm_train": cfg.lm.train, **r,
                     "eval_perplexity": (trained.get("metrics") or {}).get("perplexity")})
        print(json.dumps(rows[-1]), flush=True)
        jax.clear_caches()
    out = {"documents": args.docs, "max_length": args.max_length, "rows": rows}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
        metric = "pseudo_perplexity" if "pseudo_perplexity" in rows[0] else "perplexity"
        lines = [f"| run | δ | steps | held-out {metric.replace('_', '-')} | tokens |", "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['method']} | {r['train_steps']} | {r[metric]:.2f} | {int(r['tokens'])} |"
                  for r in rows]
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
