"""Seed sweeps (ftlab.train.sweep): N seeds in one vmapped program equal N separate runs; early stopping of bad
seeds keeps the best ones and their trajectories; expected max against brute force; resume after SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab.train import sweep


def test_expected_max_equals_brute_force_enumeration():
    scores = [0.5, 0.8, 0.6, 0.9, 0.6]
    got = sweep.expected_max(scores, 4)
    for n in range(1, 5):  # every ordered draw of n runs with replacement is equally likely
        draws = [max(c) for c in itertools.product(scores, repeat=n)]
        assert got[n - 1] == pytest.approx(np.mean(draws), abs=1e-12)
    assert got[0] == pytest.approx(np.mean(scores)) and np.all(np.diff(got) >= 0)


def test_stop_table_by_hand():
    curves = {1: [[10, 0.5], [20, 0.9]], 2: [[10, 0.7], [20, 0.72]], 3: [[10, 0.6], [20, 0.65]]}
    rows = {(r["fraction"], r["keep"]): r for r in sweep.stop_table(curves, 20, fractions=(0.5,), keeps=(1, 2))}
    # at step 10 seed 2 leads (0.7), then seed 3 (0.6): keeping one misses seed 1's late 0.9
    assert rows[(0.5, 1)]["kept_seeds"] == [2] and rows[(0.5, 1)]["best"] == 0.72
    assert rows[(0.5, 2)]["kept_seeds"] == [2, 3] and rows[(0.5, 2)]["best"] == 0.72
    assert rows[(0.5, 1)]["compute"] == pytest.approx((3 * 0.5 + 1 * 0.5) / 3)
    assert rows[(0.5, 1)]["best_all"] == 0.9
    assert sweep.stop_table(curves, 20, fractions=(0.4,), keeps=(1,)) == []  # no eval by step 8: no ranking


def test_majority_score():
    from ftlab.tasks import get_task

    assert sweep.majority_score(get_task("sst2"), [1, 1, 0, 1]) == pytest.approx(0.75)
    assert sweep.majority_score(get_task("cola"), [1, 1, 0, 1]) == pytest.approx(0.0)  # MCC of a constant
    assert sweep.majority_score(get_task("stsb"), [0.5, 2.0]) == 0.0


def test_stack_batches_pads_to_the_widest():
    a = {"input_ids": np.ones((2, 3), np.int32), "attention_mask": np.ones((2, 3), np.int32),
         "labels": np.array([0, 1]), "example_mask": np.ones(2, np.float32)}
    b = {k: (np.ones((2, 5), np.int32) if v.ndim == 2 else v) for k, v in a.items()}
    s = sweep.stack_batches([a, b], pad_id=7)
    assert s["input_ids"].shape == (2, 2, 5) and (s["input_ids"][0, :, 3:] == 7).all()
    assert (s["attention_mask"][0, :, 3:] == 0).all() and s["labels"].shape == (2, 2)


def _cfg(tiny_bert_dir, **extra):
    # pad_to_multiple_of = max_length: every batch has the same width, so the seeds' stacked batches are padded
    # exactly like their separate runs' (dropout masks are a function of the padded shape).
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py:runlocal"))
    overrides = [f"train.max_steps={extra.pop('max_steps', 6)}", "train.eval_every=3", "train.log_every=1",
                 "train.checkpoint_every=0", "train.progress=false", f"model.name={tiny_bert_dir}",
                 "task.max_length=32", "train.pad_to_multiple_of=32", "train.eval_batch_size=256",
                 "task.train_subset=128", "train.export_delta=none"]
    return config_lib.apply_overrides(cfg, overrides + [f"{k}={v}" for k, v in extra.items()])


def _train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f]
    return rows


@pytest.mark.slow  # four compilations of the vmapped step: minutes on 2 cores
def test_vmapped_seeds_equal_separate_runs_and_bad_seeds_stop(tmp_path, tiny_bert_dir):
    """3 seeds in one program, the best 2 (by dev accuracy at step 3 of 6) go on: every seed's logged losses and
    evals equal its own separate run's up to where it stopped."""
    from ftlab.train.loop import train_and_evaluate

    seeds = (3, 5, 11)
    cfg = _cfg(tiny_bert_dir, **{"sweep.seeds": seeds, "delta.method": "lora", "optim.lr": 5e-3,
                                 "sweep.stop_fraction": 0.5, "sweep.keep": 2})
    summary = sweep.train_seeds(cfg, str(tmp_path / "sweep"))
    rows = _train_losses(tmp_path / "sweep")
    at3, stopped = {}, {}
    for s in seeds:
        single = train_and_evaluate(sweep.with_seed(cfg, s), str(tmp_path / f"single{s}"))
        singles = _train_losses(tmp_path / f"single{s}")
        steps_run = summary["per_seed"][str(s)]["steps_run"]
        stopped[s] = steps_run < 6
        lo_sweep = [r["loss_by_seed"][r["seeds"].index(s)] for r in rows if r["kind"] == "train" and s in r["seeds"]]
        lo_single = [r["loss"] for r in singles if r["kind"] == "train"]
        assert len(lo_sweep) == steps_run and len(lo_single) == 6
        np.testing.assert_allclose(lo_sweep, lo_single[:steps_run], rtol=2e-5)
        ev_sweep = [r for r in rows if r["kind"] == "eval" and r["seed"] == s]
        ev_single = [r for r in singles if r["kind"] == "eval" and r["step"] <= steps_run]
        assert [r["step"] for r in ev_sweep] == [r["step"] for r in ev_single] == [3, 6][: 1 + (steps_run == 6)]
        for a, b in zip(ev_sweep, ev_single):
            assert a["accuracy"] == b["accuracy"]
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        at3[s] = ev_sweep[0]["accuracy"]
        if not stopped[s]:
            assert summary["per_seed"][str(s)]["best_score"] == single["best_metrics"]["accuracy"]
        per = json.load(open(tmp_path / "sweep" / "seeds" / str(s) / "results.json"))
        assert per["seed"] == s and per["train_steps"] == steps_run
    assert sum(stopped.values()) == 1
    dropped = next(s for s in seeds if stopped[s])
    assert at3[dropped] <= min(at3[s] for s in seeds if not stopped[s])
    first = [r["loss_by_seed"] for r in rows if r["kind"] == "train"][0]
    assert len(set(np.round(first, 6))) == len(seeds)  # the seeds really differ (head, data order, dropout)
    assert summary["compute_fraction"] == pytest.approx((3 * 3 + 2 * 3) / (3 * 6))
    assert len(summary["expected_max"]) == len(seeds)


def test_sweep_config_errors(tmp_path, tiny_bert_dir):
    with pytest.raises(config_lib.ConfigError, match="sweep.seeds is empty"):
        sweep.train_seeds(_cfg(tiny_bert_dir), str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match="sweep.keep"):
        sweep.train_seeds(_cfg(tiny_bert_dir, **{"sweep.seeds": (1, 2), "sweep.stop_fraction": 0.5}), str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match="sweep.mode"):
        sweep.train_seeds(_cfg(tiny_bert_dir, **{"sweep.seeds": (1, 2), "sweep.mode": "pmap"}), str(tmp_path))


@pytest.mark.slow
def test_sweep_resumes_exactly_after_sigkill_and_cli(tmp_path, tiny_bert_dir):
    cmd = [sys.executable, "-m", "ftlab.cli", "sweep", "--config", os.path.join(REPO, "configs", "sst2_full.py:runlocal"),
           "--seeds", "2", "--config.train.max_steps=8", "--config.train.eval_every=4", "--config.train.log_every=1",
           "--config.train.checkpoint_every=4", f"--config.model.name={tiny_bert_dir}", "--config.task.max_length=32",
           "--config.train.progress=false", "--config.task.train_subset=128", "--config.train.export_delta=none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = lambda wd, *x: subprocess.run(cmd + ["--workdir", str(wd), *x], capture_output=True, text=True,  # noqa: E731
                                        env=env, cwd=REPO, timeout=600)
    p = run(tmp_path / "straight")
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["metric"] == "accuracy"
    killed = run(tmp_path / "killed", "--config.train.crash_after_checkpoint=4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    p = run(tmp_path / "killed")
    assert p.returncode == 0 and "sweep resumed" in p.stderr, p.stderr[-2000:]
    a, b = _train_losses(tmp_path / "straight"), _train_losses(tmp_path / "killed")
    assert a == b


def _stability_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stability_script", os.path.join(REPO, "scripts", "stability.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stability_report_counts_failed_runs_and_writes_plots(tmp_path):
    """scripts/stability.py on two hand-made sweep.json files: table values against numpy, failed runs at or
    below the majority score, the replayed early stopping, and the PNGs."""
    mod = _stability_script()
    scores = {"vanilla": [0.0, 0.31, 0.28, 0.0, 0.35], "mosbach": [0.30, 0.33, 0.29, 0.32, 0.31]}
    dirs = []
    for recipe, best in scores.items():
        wd = tmp_path / f"cola-{recipe}"
        wd.mkdir()
        per = {str(i): {"best_score": b, "final_score": b, "steps_run": 10, "curve": [[5, b / 2], [10, b]]}
               for i, b in enumerate(best)}
        json.dump({"task": "cola", "main_metric": "matthews_corr", "best_scores": best, "per_seed": per,
                   "majority_score": 0.0, "expected_max": sweep.expected_max(best).tolist(), "total_steps": 10,
                   "train_seconds": 1.0, "train_examples_per_second": 2.0, "mode": "vmap"}, open(wd / "sweep.json", "w"))
        dirs.append(str(wd))
    assert mod.main([*dirs, "--out", str(tmp_path / "out")]) == 0
    rows = {r["recipe"]: r for r in json.load(open(tmp_path / "out" / "stability.json"))["rows"]}
    assert rows["vanilla"]["failed"] == 2 and rows["mosbach"]["failed"] == 0
    assert rows["vanilla"]["std"] == pytest.approx(np.std(scores["vanilla"]))
    assert rows["mosbach"]["min"] == 0.29 and rows["vanilla"]["max"] == 0.35
    for png in ("stability.png", "evp.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000
    assert "| cola | vanilla | matthews_corr | 5 |" in open(tmp_path / "out" / "stability.md").read()
    # each workdir's sweep.json is kept as OUT/sweeps/<name>.json, and the report regenerates from those copies
    kept = sorted(str(p) for p in (tmp_path / "out" / "sweeps").glob("*.json"))
    assert [os.path.basename(k) for k in kept] == ["cola-mosbach.json", "cola-vanilla.json"]
    assert mod.main([kept[1], kept[0], "--out", str(tmp_path / "again")]) == 0  # in the first call's order
    assert open(tmp_path / "again" / "stability.md").read() == open(tmp_path / "out" / "stability.md").read()


def test_scores_are_recovered_from_an_expected_max_curve(tmp_path):
    """scores_from_expected_max inverts sweep.expected_max (sorted scores, ties and zeros included), and a
    summary holding only best_scores / final_mean / early_stopping (no per-seed records) makes a report row."""
    mod = _stability_script()
    rng = np.random.default_rng(0)
    for n in (1, 3, 10):
        v = np.round(rng.uniform(0, 0.4, n), 4)
        v[: n // 3] = 0.0
        np.testing.assert_allclose(mod.scores_from_expected_max(sweep.expected_max(v).tolist()), np.sort(v), atol=2e-9)
    best = [0.0, 0.1, 0.2, 0.2]
    stops = [{"fraction": 0.5, "keep": 1, "best": 0.1, "best_all": 0.2, "compute": 0.62}]
    json.dump({"task": "mrpc", "main_metric": "f1", "best_scores": best, "majority_score": 0.0, "final_mean": 0.1,
               "expected_max": sweep.expected_max(best).tolist(), "total_steps": 10, "train_seconds": 1.0,
               "train_examples_per_second": 2.0, "mode": "vmap", "early_stopping": stops},
              open(tmp_path / "mrpc-vanilla.json", "w"))
    assert mod.main([str(tmp_path / "mrpc-vanilla.json"), "--out", str(tmp_path / "out")]) == 0
    out = json.load(open(tmp_path / "out" / "stability.json"))
    (r,) = out["rows"]
    assert (r["failed"], r["final_mean"], r["max"]) == (1, 0.1, 0.2)
    assert out["early_stopping"] == {"mrpc/vanilla": stops}


@pytest.mark.slow  # one vmapped compilation of the tiny model with movement scores
def test_soft_movement_sweep_selects_each_seeds_best_after_the_schedule(tmp_path, tiny_bert_dir):
    """As the single-run loop: soft movement's evaluations before t_f = 0.8·8 = 6.4 (steps 2, 4, 6) are logged
    and never a seed's best; the early stop at step 4 still ranks the seeds (by their latest score)."""
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_prune.py:runlocal"))
    cfg = config_lib.apply_overrides(cfg, [
        f"model.name={tiny_bert_dir}", "task.max_length=32", "train.pad_to_multiple_of=32", "train.progress=false",
        "train.eval_batch_size=256", "task.train_subset=128", "train.max_steps=8", "train.eval_every=2",
        "train.checkpoint_every=0", "train.export_delta=none", "delta.criterion=soft_movement",
        "sweep.seeds=(1, 2, 3)", "sweep.stop_fraction=0.5", "sweep.keep=2"])
    summary = sweep.train_seeds(cfg, str(tmp_path))
    steps_run = {s: summary["per_seed"][s]["steps_run"] for s in ("1", "2", "3")}
    assert sorted(steps_run.values()) == [4, 8, 8]
    for s, n in steps_run.items():
        r = json.load(open(tmp_path / "seeds" / s / "results.json"))
        assert r["best_step"] == (8 if n == 8 else None)  # a seed stopped at step 4 never reached t_f
        assert (r["metrics"] is not None) and (summary["per_seed"][s]["best_score"] is None) == (n == 4)
