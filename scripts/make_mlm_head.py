"""Ship a masked-LM head trained with the encoder frozen (configs/imdb_mlm.py:head) as `ftlab/assets/<name>/`,
so that `model.name=minilm-mlm` loads all-MiniLM-L6-v2 with it (ftlab.checkpoint.hf.HEAD_ADDONS).

    python scripts/make_mlm_head.py --workdir runs/imdb/dapt/0-head --out ftlab/assets/minilm_mlm_head

Writes head.safetensors (the head/ leaves of the run's δ, ftlab paths) and head.json (the base's hash, which
load_base checks, and the run's provenance: text, steps, lr, held-out perplexity).
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
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from safetensors.numpy import load_file, save_file

    meta = json.load(open(os.path.join(args.workdir, "delta", "delta.json")))
    res = json.load(open(os.path.join(args.workdir, "results.json")))
    cfg = res["config"]
    if meta["method"] != "frozen" or cfg["task"]["name"] != "mlm":
        raise SystemExit(f"error: {args.workdir} is not an mlm run with the encoder frozen (delta frozen)")
    tensors = load_file(os.path.join(args.workdir, "delta", "delta.safetensors"))
    if not tensors or not all(k.startswith("head/predictions/") for k in tensors):
        raise SystemExit(f"error: {args.workdir}: δ holds {sorted(tensors)[:3]}..., not only head/predictions/")
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "head.safetensors"))
    info = {"base": cfg["model"]["name"], "base_hash": meta["base_hash"], "trained_by": "ftlab (newly trained; "
            "the released all-MiniLM-L6-v2 has no masked-LM head)", "config": "configs/imdb_mlm.py:head",
            "text": cfg["lm"]["train"], "documents": cfg["lm"]["max_documents"], "block_size": cfg["lm"]["block_size"],
            "steps": res["train_steps"], "batch_size": cfg["train"]["batch_size"], "lr": cfg["optim"]["lr"],
            "heldout_documents": cfg["lm"]["heldout"], "heldout_metrics": res["metrics"],
            "parameters": int(sum(v.size for v in tensors.values()))}
    with open(os.path.join(args.out, "head.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
