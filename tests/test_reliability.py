"""Clear failures: non-finite loss (stop or skip), unwritable or full workdir, corrupt checkpoint, delta on another
base."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab.checkpoint import delta_io
from ftlab.checkpoint.train_state import CheckpointError
from ftlab.train.loop import WorkdirError, train_and_evaluate


def _cfg(tiny_bert_dir, *overrides):
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py:runlocal"))
    return config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                            "train.pad_to_multiple_of=32", "train.progress=false",
                                            "train.eval_batch_size=256", *overrides])


def test_nonfinite_loss_stops_with_clear_error(tmp_path, tiny_bert_dir):
    cfg = _cfg(tiny_bert_dir, "optim.lr=1e30", "optim.grad_clip=0", "train.log_every=1")
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at or before step"):
        train_and_evaluate(cfg, str(tmp_path))


@pytest.mark.slow
def test_nonfinite_skip_keeps_delta_finite(tmp_path, tiny_bert_dir):
    from safetensors.numpy import load_file

    cfg = _cfg(tiny_bert_dir, "optim.lr=1e30", "optim.grad_clip=0", "train.on_nonfinite=skip",
               "train.export_delta=final")
    train_and_evaluate(cfg, str(tmp_path))
    arrays = load_file(str(tmp_path / "delta" / "delta.safetensors"))
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_unwritable_workdir_fails_before_training(tmp_path, tiny_bert_dir):
    if os.geteuid() == 0:
        target = "/proc/ftlab-cannot-write-here"  # root ignores permission bits; /proc refuses everyone
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "run")
    with pytest.raises(WorkdirError, match="not writable"):
        train_and_evaluate(_cfg(tiny_bert_dir), target)


def test_full_disk_fails_before_training(tmp_path, tiny_bert_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 100 * 2**20, 100 * 2**20))
    with pytest.raises(WorkdirError, match=r"only 100 MiB free on its disk"):
        train_and_evaluate(_cfg(tiny_bert_dir), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")  # refused before anything was written


@pytest.mark.slow
def test_corrupt_checkpoint_names_the_directory(tmp_path, tiny_bert_dir):
    cfg = _cfg(tiny_bert_dir, "train.max_steps=4", "train.checkpoint_every=4")
    train_and_evaluate(cfg, str(tmp_path))
    step_dir = tmp_path / "checkpoints" / "4"
    damaged = 0
    for root, _, files in os.walk(step_dir / "state"):
        for f in files:
            p = os.path.join(root, f)
            if os.path.getsize(p) > 64:
                with open(p, "r+b") as fh:
                    fh.truncate(16)
                damaged += 1
    assert damaged
    cfg2 = _cfg(tiny_bert_dir, "train.max_steps=8", "train.checkpoint_every=4")
    # same trajectory config except max_steps -> a different fingerprint; use the same config to resume
    with pytest.raises(CheckpointError, match=r"checkpoints/4 is corrupt or partial"):
        train_and_evaluate(cfg, str(tmp_path))
    del cfg2


def test_delta_on_a_different_base_is_refused(tmp_path, tiny_bert_dir):
    cfg = _cfg(tiny_bert_dir, "train.max_steps=2", "train.export_delta=final")
    train_and_evaluate(cfg, str(tmp_path))
    meta = json.load(open(tmp_path / "delta" / "delta.json"))
    with pytest.raises(delta_io.DeltaError, match="refusing to apply it"):
        delta_io.load(str(tmp_path / "delta"), None, "0" * 16)
    assert meta["base_hash"] != "0" * 16
