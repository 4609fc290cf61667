"""K-shot grids (ftlab/train/kshot_grid.py, scripts/kshot_grid.py): every (task, K, seed) cell is an ordinary
run on its LM-BFF split, its test score is its exported δ's on the original evaluation set (as `ftlab eval`
computes it), the summary is the mean / std of those, finished cells are skipped, and the report puts grids
and few-shot results side by side."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import REPO

from ftlab import cli
from ftlab import config as config_lib
from ftlab.train import kshot_grid


def _script():
    spec = importlib.util.spec_from_file_location("kshot_grid_script", os.path.join(REPO, "scripts", "kshot_grid.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cell_config_sets_the_split_and_refuses_other_tasks_patterns():
    cfg = config_lib.load(os.path.join(REPO, "configs", "kshot.py:minilm-prompt"))
    c = kshot_grid.cell_config(cfg, "trec", 8, 21)
    assert (c.task.name, c.task.kshot, c.task.eval_split, c.prompt.pattern) == ("trec", "8-21", "dev", "0")
    bad = config_lib.apply_overrides(cfg, ["prompt.pattern=sst2:1"])
    with pytest.raises(config_lib.ConfigError, match="another task"):
        kshot_grid.cell_config(bad, "trec", 8, 21)
    assert kshot_grid.cell_config(bad, "sst2", 8, 21).prompt.pattern == "sst2:1"
    s = kshot_grid.summarize([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert kshot_grid.summary_cell([0.5, 0.7, 0.9]) == "70.0 (16.3)" and kshot_grid.summary_cell([0.25]) == "25.0"


@pytest.mark.slow  # six tiny runs and their test-set scoring
def test_grid_trains_every_cell_scores_its_test_set_and_skips_finished_cells(tmp_path, shared_data,
                                                                             tiny_bert_nodrop, capsys):
    script = _script()
    common = [f"--config.model.name={tiny_bert_nodrop}", f"--config.task.data_dir={shared_data}",
              "--config.train.max_steps=2", "--config.train.eval_every=2", "--config.train.batch_size=4",
              "--config.task.max_length=48", "--config.optim.lr=1e-3"]
    std = tmp_path / "std"
    args = ["run", "--config", os.path.join(REPO, "configs", "kshot.py:minilm-standard"), "--tasks", "sst2,trec",
            "--k", "4", "--seeds", "13,21", "--workdir", str(std), *common]
    assert script.main(args) == 0
    grid = kshot_grid.load(str(std))
    for task, metric in (("sst2", "accuracy"), ("trec", "accuracy")):
        r = grid["results"][f"{task}/4"]
        assert r["metric"] == metric and r["n"] == 2
        for seed in (13, 21):
            cell = std / task / f"4-{seed}"
            cfg = json.loads((cell / "config.json").read_text())
            assert (cfg["task"]["name"], cfg["task"]["kshot"], cfg["task"]["eval_split"]) == (task, f"4-{seed}",
                                                                                             "dev")
            test = json.loads((cell / "test.json").read_text())["metrics"]
            assert r["seeds"][str(seed)] == test[metric]
        assert r["mean"] == pytest.approx(np.mean(list(r["seeds"].values())))
        assert r["std"] == pytest.approx(np.std(list(r["seeds"].values())))
    # The cached test score is what `ftlab eval --split test` computes from the exported δ (the original set:
    # SST-2's 872 dev sentences).
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(std / "sst2" / "4-13"), "--split", "test"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["accuracy"] == pytest.approx(grid["results"]["sst2/4"]["seeds"]["13"], abs=1e-6)
    assert json.loads((std / "sst2" / "4-13" / "results.json").read_text())["train_examples"] == 8

    # Rerun: nothing is retrained or rescored.
    stamp = {p: p.stat().st_mtime_ns for p in std.rglob("*.json") if p.name != "grid.json"}
    assert script.main(args) == 0
    assert "done, skipped" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in std.rglob("*.json") if p.name != "grid.json"} == stamp
    # Another config in the same workdir is refused, naming the cell.
    assert script.main([*args, "--config.optim.lr=5e-4"]) == 2
    assert "sst2/4-13" in capsys.readouterr().err

    # A prompt-based grid over two K, and the report with a few-shot result beside the grids.
    prompt = tmp_path / "prompt"
    assert script.main(["run", "--config", os.path.join(REPO, "configs", "kshot.py:minilm-prompt"), "--tasks",
                        "sst2", "--k", "4,8", "--seeds", "13", "--workdir", str(prompt), *common]) == 0
    zs = tmp_path / "zs.json"
    zs.write_text(json.dumps({"task": "sst2", "accuracy": 0.6, "calibrated": {"accuracy": 0.7}}))
    out = tmp_path / "rep" / "k16"
    assert script.main(["report", "--grid", f"standard={std}", "--grid", f"prompt={prompt}", "--k", "4",
                        "--extra", f"zero-shot={zs}", "--extra", f"zero-shot calibrated={zs}:calibrated",
                        "--out", str(out)]) == 0
    md = (tmp_path / "rep" / "k16.md").read_text()
    s = grid["results"]["sst2/4"]
    assert f"| standard | {100 * s['mean']:.1f} ({100 * s['std']:.1f}) |" in md
    assert "| zero-shot | 60.0 |" in md and "| zero-shot calibrated | 70.0 |" in md
    assert (tmp_path / "rep" / "k16.png").stat().st_size > 1000
    assert script.main(["report", "--grid", f"standard={tmp_path / 'none'}", "--out", str(out)]) == 2
