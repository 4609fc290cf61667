"""Staged runs in one config: adaptive pre-training -> task fine-tuning, intermediate task -> target task.

    c.stages = (
        {"name": "dapt", "task.name": "mlm", "lm.train": "imdb/unsup.txt.gz", "train.max_steps": 200},
        {"name": "task", "task.name": "imdb", "model.head": "new"},
    )

`ftlab train` on a config with `stages` runs them in order, each as an ordinary run (`train_and_evaluate`) in
`<workdir>/<i>-<name>/` with its own δ, optimiser, checkpoints and results.json. A stage's config is the
outer config (command-line overrides included) without `stages`, with the stage's keys as dotted overrides:
what a stage does not set, it shares with the others. Stage k > 0 starts from stage k−1's weights: θ₀ of stage k is
apply(θ₀ of stage k−1, its exported δ), written once as a merged Hugging Face folder
`<i>-<name>/merged/` (atomic) and loaded through the ordinary checkpoint path, so every later check (base hash
on δ load, head fit) holds as for any base model. Head (STILTs, Phang et al. 2018): `model.head` of stage
k > 0 is 'new' (the previous stage's head is dropped, a fresh one is initialised) unless the stage sets
`"model.head": "keep"` (e.g. SST-2 -> IMDB, both binary sentiment).

Resume: a stage with results.json (and, when a later stage needs it, merged/) is done and skipped after its
saved config is checked against the stage's config; an interrupted stage resumes from its own checkpoint
(the loop's rule). `<workdir>/stages.json` summarises every stage's metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import jax

from ftlab import config as config_lib

RESERVED = ("name",)


def stage_configs(cfg: config_lib.Config) -> list[tuple[str, config_lib.Config]]:
    """[(name, config)] of the stages of `cfg` (model.name of stages > 0 is set by `run`)."""
    stages = cfg.get("stages") or ()
    if not isinstance(stages, (list, tuple)) or not all(isinstance(s, dict) for s in stages):
        raise config_lib.ConfigError("stages must be a list of dicts ({'name': ..., 'dotted.key': value, ...})")
    outer = cfg.to_dict()
    outer["stages"] = ()
    out, names = [], set()
    for i, st in enumerate(stages):
        name = st.get("name")
        if not name or not isinstance(name, str) or "/" in name or name in names:
            raise config_lib.ConfigError(f"stages[{i}]: needs a unique 'name' without '/' (got {name!r})")
        names.add(name)
        sc = config_lib.Config(json.loads(json.dumps(outer)))
        overrides = {k: v for k, v in st.items() if k not in RESERVED}
        if i > 0:
            overrides.setdefault("model.head", "new")
        if "stages" in overrides:
            raise config_lib.ConfigError(f"stages[{i}] ({name}): a stage cannot have stages")
        if i > 0:
            if "model.name" in overrides:
                raise config_lib.ConfigError(f"stages[{i}] ({name}): model.name is the previous stage's weights")
        try:
            sc = config_lib.apply_overrides(sc, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                 for k, v in overrides.items()])
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"stages[{i}] ({name}): {e}") from None
        if i < len(stages) - 1 and sc.train.export_delta == "none":
            raise config_lib.ConfigError(f"stages[{i}] ({name}): train.export_delta=none, but the next stage "
                                         "starts from its δ")
        out.append((name, sc))
    if not out:
        raise config_lib.ConfigError("stages is empty")
    return out


def merged_params(delta_mod, base_params: Any, delta: Any) -> Any:
    """θ = apply(θ₀, δ) as a plain params tree (module deltas via their `merge`, e.g. LoRA's W + s·A·B)."""
    variables = delta_mod.apply(base_params, delta)
    if set(variables) == {"params"}:
        return variables["params"]
    if hasattr(delta_mod, "merge"):
        return delta_mod.merge(base_params, delta)
    raise ValueError(f"δ method {delta_mod.__name__.rsplit('.', 1)[-1]} adds modules at run time and has no "
                     "merge: a later stage cannot start from it")


def export_merged(workdir: str, out: str, delta_dir: str = "delta") -> str:
    """Merge a finished run's δ into its θ₀ and write a Hugging Face folder at `out` (atomically)."""
    from ftlab import deltas
    from ftlab.checkpoint import delta_io, export_hf
    from ftlab.train.loop import TASK_HEADS, prepare

    with open(os.path.join(workdir, "config.json")) as f:
        cfg = config_lib.Config(json.load(f))
    prep = prepare(cfg)
    method, _, delta = delta_io.load(os.path.join(workdir, delta_dir), prep["params"], prep["base"].hash)
    params = jax.device_get(merged_params(deltas.get(method), prep["params"], delta))
    task = prep["task"]
    if "exit" in params.get("head", {}) or prep["model"].head not in TASK_HEADS.values():
        raise ValueError(f"{workdir}: head {prep['model'].head!r} has no Hugging Face export")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_hf(params, prep["model"].config, tmp, head=prep["model"].head,
              num_labels=task.num_labels if task.kind not in ("masked_lm", "causal_lm") else None,
              tokenizer=prep["base"].tokenizer)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def run(cfg: config_lib.Config, workdir: str) -> dict[str, Any]:
    """Run the stages of `cfg` in `workdir` (module docstring); returns the stages.json summary."""
    from ftlab.train.loop import RESUME_IGNORED_KEYS, train_and_evaluate, with_defaults

    plan = stage_configs(cfg)
    os.makedirs(workdir, exist_ok=True)
    prev_merged = None
    summary: dict[str, Any] = {"stages": []}
    for i, (name, sc) in enumerate(plan):
        wd = os.path.join(workdir, f"{i}-{name}")
        if prev_merged is not None:
            sc = config_lib.apply_overrides(sc, [f"model.name={prev_merged}"])
        res_path = os.path.join(wd, "results.json")
        if os.path.isfile(res_path):
            with open(os.path.join(wd, "config.json")) as f:
                old = with_defaults(json.load(f))
            if config_lib.fingerprint(old, ignore=RESUME_IGNORED_KEYS) != config_lib.fingerprint(
                    sc, ignore=RESUME_IGNORED_KEYS):
                raise RuntimeError(f"{wd} holds a finished stage of a different config; use a new workdir")
            with open(res_path) as f:
                res = json.load(f)
            print(f"[ftlab] stage {i} ({name}): done, skipped ({res_path})", file=sys.stderr)
        else:
            print(f"[ftlab] stage {i} ({name}): task {sc.task.name}, delta {sc.delta.method}, "
                  f"from {sc.model.name}", file=sys.stderr)
            res = train_and_evaluate(sc, wd)
        entry = {"name": name, "workdir": wd, "task": res["task"], "method": res["method"],
                 "model": sc.model.name, "main_metric": res["main_metric"], "metrics": res["metrics"],
                 "best_metrics": res["best_metrics"], "train_steps": res["train_steps"]}
        summary["stages"].append(entry)
        if i < len(plan) - 1:
            merged = os.path.join(wd, "merged")
            if not os.path.isfile(os.path.join(merged, "model.safetensors")) and jax.process_index() == 0:
                export_merged(wd, merged)
            prev_merged = merged
    summary["final"] = summary["stages"][-1]
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "stages.json.tmp"), "w") as f:
            json.dump(summary, f, indent=2, default=float)
        os.replace(os.path.join(workdir, "stages.json.tmp"), os.path.join(workdir, "stages.json"))
    return summary
