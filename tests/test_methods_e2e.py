"""Every delta method through the real training loop (2 steps + eval) on a tiny random BERT: the config keys,
the loop's split into trainable/fixed leaves, the step, evaluation and δ export all work together."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab import deltas
from ftlab.train.loop import train_and_evaluate

# Methods whose defaults need something the tiny model lacks, or that need a previous stage.
SKIP = {"diffprune": None}  # covered below in its two phases
METHOD_OVERRIDES = {
    "did": ["delta.d=64"],
    "said": ["delta.d=256"],
    "topk": ["delta.k=1"],
    "reinit": ["delta.k=1"],
    "remove": ["delta.k=1"],
    "prefix": [],
    "prompt": [],
    # movement scores make trainable > total (W and S); movement runs through the loop in test_prune.py
    "prune": ["delta.criterion=magnitude"],
    "prune_units": ["delta.criterion=magnitude"],  # movement: test_prune_units.py
}


def _cfg(tiny_bert_dir, *overrides):
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py:runlocal"))
    return config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                            "train.pad_to_multiple_of=32", "train.progress=false",
                                            "train.eval_batch_size=256", "train.max_steps=2",
                                            "train.export_delta=final", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in deltas.available() if m not in SKIP])
def test_method_trains_through_the_loop(method, tmp_path, tiny_bert_dir):
    cfg = _cfg(tiny_bert_dir, f"delta.method={method}", *METHOD_OVERRIDES.get(method, []))
    r = train_and_evaluate(cfg, str(tmp_path))
    assert r["method"] == method and r["train_steps"] == 2
    assert np.isfinite(r["metrics"]["loss"]) and 0 <= r["metrics"]["accuracy"] <= 1
    assert 0 < r["trainable_params"] <= r["total_params"]
    meta = json.load(open(tmp_path / "delta" / "delta.json"))
    assert meta["array_bytes"] == r["delta_bytes"]


@pytest.mark.slow
def test_diffprune_two_stages(tmp_path, tiny_bert_dir):
    stage1 = _cfg(tiny_bert_dir, "delta.method=diffprune", "optim.groups=[('diffprune/log_alpha/.*', 100.0), ('.*', 1.0)]")
    r1 = train_and_evaluate(stage1, str(tmp_path / "l0"))
    stage2 = _cfg(tiny_bert_dir, "delta.method=diffprune", "delta.phase=fixed_mask",
                  f"delta.init_from={tmp_path / 'l0' / 'delta'}", "delta.target_fraction=0.01")
    r2 = train_and_evaluate(stage2, str(tmp_path / "fixed"))
    assert r2["trainable_params"] < r1["trainable_params"]
    assert np.isfinite(r2["metrics"]["loss"])
