"""Staged runs (ftlab.train.stages): MLM stage -> task stage, intermediate task -> target (head new / kept),
each stage starting from the previous stage's merged weights; skip on resume; config errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ftlab import config as config_lib
from ftlab import tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(tiny_bert_dir, stages, **extra):
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py:runlocal"))
    overrides = [f"model.name={tiny_bert_dir}", "task.max_length=32", "task.train_subset=64", "train.batch_size=8",
                 "train.max_steps=3", "train.eval_every=3", "train.progress=false", "train.checkpoint_every=0",
                 "train.export_delta=final", "task.eval_subset=64", "lm.block_size=32", "lm.heldout=4"]
    cfg = config_lib.apply_overrides(cfg, overrides + [f"{k}={v}" for k, v in extra.items()])
    cfg.stages = stages
    return cfg


def _params(folder):
    from ftlab.checkpoint import load_base

    return tree.flatten(load_base(folder).params)


@pytest.mark.slow
def test_mlm_then_task_and_sst2_then_sst2_keep_head(tmp_path, tiny_bert_dir):
    from ftlab.train import stages

    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(f"the film number {i} was quite good and fun" for i in range(40)) + "\n")
    plan = ({"name": "mlm", "task.name": "mlm", "lm.train": str(docs), "delta.method": "full"},
            {"name": "sst2", "task.name": "sst2"},
            {"name": "again", "model.head": "keep", "seed": 7})
    cfg = _cfg(tiny_bert_dir, plan)
    summary = stages.run(cfg, str(tmp_path / "run"))
    names = [s["name"] for s in summary["stages"]]
    assert names == ["mlm", "sst2", "again"] and summary["stages"][0]["main_metric"] == "perplexity"
    # stage 2's θ₀ is stage 1's trained encoder (+ its MLM head, dropped by model.head=new)
    mlm = _params(str(tmp_path / "run" / "0-mlm" / "merged"))
    assert any(p.startswith("head/predictions/") for p in mlm)
    r1 = json.load(open(tmp_path / "run" / "1-sst2" / "results.json"))
    assert r1["config"]["model"]["name"].endswith("0-mlm/merged") and r1["config"]["model"]["head"] == "new"
    base = _params(tiny_bert_dir)
    moved = [p for p in base if p.startswith("backbone/encoder") and not np.array_equal(base[p], mlm[p])]
    assert moved, "the MLM stage must have changed the encoder that the task stage starts from"
    # stage 3 keeps stage 2's classifier: its merged θ₀ head equals stage 2's trained head
    sst2 = _params(str(tmp_path / "run" / "1-sst2" / "merged"))
    r2 = json.load(open(tmp_path / "run" / "2-again" / "results.json"))
    assert r2["config"]["model"]["head"] == "keep" and r2["config"]["seed"] == 7
    from ftlab.train.loop import prepare

    prep = prepare(config_lib.Config(r2["config"]))
    head = {p: x for p, x in tree.flatten(prep["params"]).items() if p.startswith("head/")}
    assert head and all(np.array_equal(np.asarray(x), sst2[p]) for p, x in head.items())
    assert not prep["fresh_paths"]
    # a finished staged run is skipped when run again
    again = stages.run(cfg, str(tmp_path / "run"))
    assert [s["metrics"] for s in again["stages"]] == [s["metrics"] for s in summary["stages"]]
    assert os.path.isfile(tmp_path / "run" / "stages.json")


def test_stage_config_errors(tmp_path, tiny_bert_dir):
    from ftlab.train import stages

    with pytest.raises(config_lib.ConfigError, match="unique 'name'"):
        stages.stage_configs(_cfg(tiny_bert_dir, ({"name": "a"}, {"name": "a"})))
    with pytest.raises(config_lib.ConfigError, match="model.name is the previous stage"):
        stages.stage_configs(_cfg(tiny_bert_dir, ({"name": "a"}, {"name": "b", "model.name": "x"})))
    with pytest.raises(config_lib.ConfigError, match=r"stages\[0\] \(a\).*unknown"):
        stages.stage_configs(_cfg(tiny_bert_dir, ({"name": "a", "train.epochz": 1},)))
    with pytest.raises(config_lib.ConfigError, match="export_delta=none"):
        stages.stage_configs(_cfg(tiny_bert_dir, ({"name": "a", "train.export_delta": "none"}, {"name": "b"})))


def test_keep_head_that_does_not_fit_names_the_fix(tmp_path, tiny_bert_dir):
    """An MLM stage's folder carries an MLM head: keeping it for a classifier is an error naming model.head=new."""
    import jax
    import jax.numpy as jnp

    from ftlab.checkpoint import export_hf, load_base
    from ftlab.models import build_model, init_params
    from ftlab.train.loop import prepare

    base = load_base(tiny_bert_dir)
    model = build_model(base.config, "masked_lm")
    params, _ = init_params(model, jax.random.key(0), base.params, jnp.ones((1, 8), jnp.int32))
    export_hf(jax.device_get(params), base.config, tmp_path / "mlm", head="masked_lm", tokenizer=base.tokenizer)
    cfg = _cfg(tiny_bert_dir, (), **{"model.name": str(tmp_path / "mlm")})
    with pytest.raises(ValueError, match="model.head=new"):
        prepare(cfg)
    cfg = config_lib.apply_overrides(cfg, ["model.head=new"])
    # a fresh classifier (and the pooler, which BertForMaskedLM folders do not carry)
    assert all(p.startswith(("head/classifier", "backbone/pooler")) for p in prepare(cfg)["fresh_paths"])
