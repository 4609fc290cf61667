"""The `ftlab` command on a tiny random BERT: train, then info / eval / export / plot on the same workdir."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import REPO

from ftlab import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    wd = tmp_path_factory.mktemp("cli_run")
    rc = cli.main(["train", "--config", os.path.join(REPO, "configs", "sst2_full.py:runlocal"), "--workdir", str(wd),
                   f"--config.model.name={tiny_bert_dir}", "--config.task.max_length=32",
                   "--config.train.pad_to_multiple_of=32", "--config.train.progress=false",
                   "--config.train.export_delta=final", "--config.train.eval_batch_size=256"])
    assert rc == 0
    return str(wd)


def test_eval_reproduces_final_metrics(trained, capsys):
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", trained]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = json.load(open(os.path.join(trained, "results.json")))["metrics"]
    assert out["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)  # printed with 6 digits
    assert out["loss"] == pytest.approx(final["loss"], rel=1e-5)


def test_info_table(trained, capsys):
    capsys.readouterr()
    assert cli.main(["info", "--workdir", trained]) == 0
    out = capsys.readouterr().out
    r = json.load(open(os.path.join(trained, "results.json")))
    assert f"{r['trainable_params']:,}" in out and "head/classifier" in out and r["base_hash"] in out


def test_export_loads_in_transformers_with_same_logits(trained, tmp_path):
    import jax.numpy as jnp
    import torch
    import transformers

    from ftlab import deltas, tree
    from ftlab.checkpoint import delta_io
    from ftlab.config import Config
    from ftlab.train.loop import prepare

    out = tmp_path / "hf"
    assert cli.main(["export", "--workdir", trained, "--out", str(out)]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    cfg = Config(json.load(open(os.path.join(trained, "config.json"))))
    prep = prepare(cfg)
    method, _, delta = delta_io.load(os.path.join(trained, "delta"), prep["params"], prep["base"].hash)
    variables = deltas.get(method).apply(prep["params"], delta)
    enc = prep["base"].tokenizer(["a charming journey", "dull , flat and far too long"], padding=True, return_tensors="np")
    ours = np.asarray(prep["model"].apply(variables, jnp.asarray(enc["input_ids"]),
                                          attention_mask=jnp.asarray(enc["attention_mask"]),
                                          token_type_ids=jnp.asarray(enc["token_type_ids"])))
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    del tree


def test_plot_writes_png(trained, tmp_path):
    png = tmp_path / "curves.png"
    assert cli.main(["plot", "--workdir", trained, "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_plot_compare_and_seed_variance(trained, tmp_path, capsys):
    import shutil

    runs = []
    for seed, acc in ((1, 0.5), (2, 0.7), (3, 0.9)):
        wd = tmp_path / f"s{seed}"
        shutil.copytree(trained, wd)
        r = json.load(open(wd / "results.json"))
        r["best_metrics"] = {**(r["best_metrics"] or r["metrics"]), "accuracy": acc}
        json.dump(r, open(wd / "results.json", "w"))
        runs.append(str(wd))
    capsys.readouterr()
    assert cli.main(["plot", "--kind", "seeds", "--workdir", *runs, "--out", str(tmp_path / "seeds.png")]) == 0
    assert "full: n=3 mean=0.7000 min=0.5000 max=0.9000" in capsys.readouterr().out
    assert cli.main(["plot", "--kind", "compare", "--workdir", *runs, "--out", str(tmp_path / "bars.png")]) == 0
    for f in ("seeds.png", "bars.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="results.json not found"):
        cli.main(["plot", "--kind", "compare", "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="needs --json"):
        cli.main(["plot", "--kind", "early-exit", "--out", str(tmp_path / "x.png")])


def test_unknown_command(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command" in capsys.readouterr().err
