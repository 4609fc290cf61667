"""End-to-end training on a tiny random BERT: results.json, exact resume after SIGKILL, refusal to resume
another config's checkpoint, clear CLI errors. Data: the SST-2 copy shipped with ftlab."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

TRAIN = os.path.join(REPO, "scripts", "train.py")


def _run(workdir, tiny_bert_dir, *extra, check=True, script=TRAIN, env_extra=None):
    cmd = [sys.executable, script, "--config", os.path.join(REPO, "configs", "sst2_full.py:runlocal"),
           "--workdir", str(workdir), f"--config.model.name={tiny_bert_dir}", "--config.task.max_length=32",
           "--config.train.pad_to_multiple_of=32", "--config.train.progress=false", "--config.train.eval_batch_size=256",
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_end_to_end_results_json(tmp_path, tiny_bert_dir):
    _run(tmp_path, tiny_bert_dir)
    r = json.load(open(tmp_path / "results.json"))
    for key in ("config", "task", "metrics", "best_metrics", "trainable_params", "total_params", "delta_bytes",
                "train_steps", "steps_per_second", "peak_rss_mb", "seed"):
        assert key in r, key
    assert r["train_steps"] == 8 and r["task"] == "sst2"
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    assert r["trainable_params"] == r["total_params"]                 # full fine-tuning
    assert r["delta_bytes"] == 4 * r["trainable_params"]               # float32 copy of θ
    assert os.path.isfile(tmp_path / "delta" / "delta.safetensors")
    kinds = [m["kind"] for m in _metrics(tmp_path)]
    assert kinds.count("eval") == 1 and kinds.count("train") == 2


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path, tiny_bert_dir):
    common = ["--config.train.max_steps=12", "--config.train.checkpoint_every=4", "--config.train.log_every=1",
              "--config.train.eval_every=6"]
    _run(tmp_path / "straight", tiny_bert_dir, *common)
    killed = _run(tmp_path / "killed", tiny_bert_dir, *common, "--config.train.crash_after_checkpoint=8", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]              # really SIGKILLed
    assert not os.path.exists(tmp_path / "killed" / "results.json")
    _run(tmp_path / "killed", tiny_bert_dir, *common)                  # same command: resumes from step 8
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "killed")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    assert a == b                                                      # bit-identical logged values
    ra = json.load(open(tmp_path / "straight" / "results.json"))
    rb = json.load(open(tmp_path / "killed" / "results.json"))
    assert ra["metrics"] == rb["metrics"] and ra["best_metrics"] == rb["best_metrics"]


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_bert_dir):
    """Killed after step 8's arrays are in Orbax's temporary directory but before it is finalised: step 4's
    checkpoint is intact, the half-written step 8 is ignored, and the rerun resumes from 4 to the same values."""
    common = ["--config.train.max_steps=12", "--config.train.checkpoint_every=4", "--config.train.log_every=1",
              "--config.train.eval_every=6"]
    _run(tmp_path / "straight", tiny_bert_dir, *common)
    killed = _run(tmp_path / "killed", tiny_bert_dir, *common, check=False,
                  script=os.path.join(REPO, "tests", "_kill_during_checkpoint.py"),
                  env_extra={"FTLAB_TEST_KILL_STEP": "8"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = sorted(os.listdir(tmp_path / "killed" / "checkpoints"))
    assert "4" in ckpts and "8" not in ckpts, ckpts                     # 8 never became a checkpoint ...
    assert any("tmp" in name for name in ckpts), ckpts                  # ... its write was really cut short
    resumed = _run(tmp_path / "killed", tiny_bert_dir, *common)
    assert "resum" in (resumed.stdout + resumed.stderr).lower()
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "killed")
    assert a == b                                                      # steps 5-8 redone, same values
    assert json.load(open(tmp_path / "straight" / "results.json"))["metrics"] == json.load(
        open(tmp_path / "killed" / "results.json"))["metrics"]


def test_refuses_to_resume_a_different_config(tmp_path, tiny_bert_dir):
    _run(tmp_path, tiny_bert_dir, "--config.train.max_steps=4")
    p = _run(tmp_path, tiny_bert_dir, "--config.train.max_steps=4", "--config.optim.lr=1e-3", check=False)
    assert p.returncode != 0
    assert "different config" in p.stderr and "optim.lr" in p.stderr


def test_unknown_config_key_names_closest(tmp_path, tiny_bert_dir):
    p = _run(tmp_path, tiny_bert_dir, "--config.optim.learning_rate=1e-3", check=False)
    assert p.returncode == 2
    assert "unknown config key 'optim.learning_rate'" in p.stderr and "did you mean" in p.stderr


@pytest.mark.slow
def test_layer_removal_trains_a_smaller_model(tmp_path, tiny_bert_dir):
    _run(tmp_path, tiny_bert_dir, "--config.delta.method=remove", "--config.delta.k=1", "--config.train.max_steps=2")
    r = json.load(open(tmp_path / "results.json"))
    assert r["method"] == "remove" and r["trainable_params"] < r["total_params"]
    assert "accuracy" in r["metrics"]


def test_config_saved_before_new_keys_existed_still_fingerprints_equal():
    """A config.json written before a feature's keys existed (here: the sweep section and the EMA keys) fills
    them with their defaults, so the run resumes instead of being refused as another config."""
    from ftlab import config as config_lib
    from ftlab.train import loop

    cfg = config_lib.load(os.path.join(REPO, "configs", "mrpc_full.py"))
    old = cfg.to_dict()
    del old["sweep"], old["train"]["ema_decay"]
    ignore = loop.RESUME_IGNORED_KEYS
    assert config_lib.fingerprint(old, ignore=[k for k in ignore if k != "sweep"]) != config_lib.fingerprint(
        cfg, ignore=[k for k in ignore if k != "sweep"])
    filled = loop.with_defaults(old)
    assert config_lib.fingerprint(filled, ignore=ignore) == config_lib.fingerprint(cfg, ignore=ignore)
    old["train"]["lr_typo"] = 1  # a real difference still shows
    assert config_lib.fingerprint(loop.with_defaults(old), ignore=ignore) != config_lib.fingerprint(cfg, ignore=ignore)
