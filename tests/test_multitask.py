"""Multi-task training (ftlab.models.multihead, ftlab.train.multitask): the multi-head model's paths and head
selection, sub-batch sizes of the sampling rules by hand, the per-source gradients against one fused loss, only
active heads get gradient, config errors, and a tiny end-to-end run with exact resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab import deltas, tree
from ftlab.models import build_model, build_multitask_model, init_params, named_head, single_head
from ftlab.models.configs import BertConfig, LlamaConfig
from ftlab.train import losses, multitask

TINY = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
HEADS = (("cls", "sequence_classification", 3), ("reg", "sequence_classification", 1),
         ("tag", "token_classification", 4), ("mlm", "masked_lm", 64))
ONE = dataclasses.replace(TINY, num_hidden_layers=1)  # what only the heads' wiring needs
IDS = jnp.asarray(np.random.default_rng(0).integers(1, 64, (2, 8)), jnp.int32)


def _shapes(model):
    v = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, IDS), jax.random.key(0))["params"]
    return {p: x.shape for p, x in tree.flatten(v).items()}


# ---- model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, heads", [
    (TINY, HEADS),
    (LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False),
     (("cls", "sequence_classification", 2), ("lm", "causal_lm", 64))),
])
def test_backbone_paths_equal_taskmodel_and_heads_are_named(config, heads):
    multi = _shapes(build_multitask_model(config, heads))
    single = _shapes(build_model(config, "sequence_classification", 2))
    backbone = lambda s: {p: x for p, x in s.items() if not p.startswith("head/")}  # noqa: E731
    assert backbone(multi) == backbone(single)  # the same θ₀ paths: every delta's regexes apply unchanged
    for name, kind, n in heads:  # each head below head/<name>/ with TaskModel's own names
        own = {p.removeprefix("head/"): x for p, x in _shapes(build_model(config, kind, n)).items()
               if p.startswith("head/")}
        assert {p.removeprefix(f"head/{name}/"): x for p, x in multi.items() if p.startswith(f"head/{name}/")} == own


def test_select_runs_one_head_as_taskmodel_does():
    model = build_multitask_model(ONE, HEADS)
    params, _ = init_params(model, jax.random.key(1), {}, IDS)
    everything = model.apply({"params": params}, IDS)
    assert {k: v.shape for k, v in everything.items()} == {"cls": (2, 3), "reg": (2, 1), "tag": (2, 8, 4),
                                                          "mlm": (2, 8, 64)}
    for name, kind, n in (HEADS[1], HEADS[3]):
        # only the backbone and the selected head are read: the other heads' params may be absent
        alone = tree.unflatten({p: x for p, x in tree.flatten(params).items()
                                if not p.startswith("head/") or p.startswith(f"head/{name}/")})
        out = model.select(name).apply({"params": alone}, IDS)
        ref = build_model(ONE, kind, n).apply({"params": single_head(params, name)}, IDS)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(out, everything[name])
    two = model.select(("cls", "tag")).apply({"params": params}, IDS)
    assert sorted(two) == ["cls", "tag"]
    with pytest.raises(ValueError, match="no head 'nope'"):
        model.select("nope")


def test_named_head_and_single_head_round_trip():
    model = build_model(TINY, "sequence_classification", 3)
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, IDS)["params"]
    moved = named_head(params, "sst2")
    assert sorted(p for p in tree.flatten(moved) if p.startswith("head/")) == [
        "head/sst2/classifier/bias", "head/sst2/classifier/kernel"]
    back = single_head(moved, "sst2")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), back, params))
    with pytest.raises(ValueError, match="no head 'cola'"):
        single_head(moved, "cola")
    with pytest.raises(ValueError, match="head name"):
        build_multitask_model(TINY, [("a/b", "sequence_classification", 2)])
    with pytest.raises(ValueError, match="causal_lm needs a decoder"):
        build_multitask_model(TINY, [("lm", "causal_lm", 64)])


# ---- sampling ------------------------------------------------------------------------------------------------
def test_sub_batch_sizes_by_hand():
    # GLUE-4 at 4,000 examples (MRPC 3,668), B=32: 32·n/15668 = 8.169, 7.491, 8.169, 8.169 -> floors 8,7,8,8 (31);
    # the one row left goes to the largest remainder (MRPC's .491)
    assert multitask.sub_batch_sizes([4000, 3668, 4000, 4000], 32, "proportional") == [8, 8, 8, 8]
    assert multitask.sub_batch_sizes([100, 300], 8, "proportional") == [2, 6]
    # temperature T=2: sqrt(100, 400, 1600) = 10, 20, 40 -> p = 1/7, 2/7, 4/7 of 14
    assert multitask.sub_batch_sizes([100, 400, 1600], 14, "temperature", 2.0) == [2, 4, 8]
    # equal: 10/3 each -> 3, 3, 3 and the tie for the last row goes to the first source
    assert multitask.sub_batch_sizes([100, 400, 1600], 10, "equal") == [4, 3, 3]
    # a source too small for a row gets one from the largest
    assert multitask.sub_batch_sizes([1, 1000], 4, "proportional") == [1, 3]
    n = [50, 500, 5000]
    np.testing.assert_allclose(multitask.mixing_rates(n, "temperature", 1.0), multitask.mixing_rates(n, "proportional"))
    np.testing.assert_allclose(multitask.mixing_rates(n, "temperature", 1e6), [1 / 3] * 3, atol=1e-5)
    with pytest.raises(ValueError, match="smaller than the 3 sources"):
        multitask.sub_batch_sizes(n, 2, "equal")


def _source(name, size, weight=None, batch_size=None):
    return multitask.Source(name=name, head="sequence_classification", num_labels=2, loss="classification",
                            size=size, batches=None, weight=weight, batch_size=batch_size)


def test_plan_weights_and_length():
    cfg = config_lib.Config({"train": {"batch_size": 8, "max_steps": -1, "epochs": 2.0}})
    mt = {"sampling": "proportional", "temperature": 2.0}
    p = multitask.plan([_source("a", 100), _source("b", 300)], cfg, mt)
    assert p["batch"] == {"a": 2, "b": 6} and p["weight"] == {"a": 2 / 8, "b": 6 / 8}  # each example weighs 1/8
    assert p["steps_per_epoch"] == 400 // 8 and p["total_steps"] == 100
    # explicit weights are used as given; an auxiliary source with its own rows sits outside the rule
    p = multitask.plan([_source("a", 100, weight=1.0), _source("b", 300, weight=1.0),
                        _source("lm", 10**6, weight=0.5, batch_size=4)], cfg, mt)
    assert p["batch"] == {"a": 2, "b": 6, "lm": 4} and p["weight"] == {"a": 1.0, "b": 1.0, "lm": 0.5}
    assert p["steps_per_epoch"] == 50
    p = multitask.plan([_source("a", 100), _source("lm", 10**6, batch_size=4)], cfg, mt)
    assert p["batch"] == {"a": 8, "lm": 4} and p["weight"] == {"a": 8 / 12, "lm": 4 / 12}


# ---- steps ---------------------------------------------------------------------------------------------------
def _batch(rng, b, t, kind):
    ids = rng.integers(1, 64, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[0, t // 2:] = 0
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((b, t), np.int32),
           "example_mask": np.ones(b, np.float32)}
    if kind == "classification":
        out["labels"] = rng.integers(0, 3, b).astype(np.int32)
    elif kind == "regression":
        out["labels"] = rng.normal(size=b).astype(np.float32)
    else:
        out["labels"] = np.where(mask > 0, rng.integers(0, 4, (b, t)), losses.IGNORE).astype(np.int32)
    return out


def _mlm_transform(batch, rng):
    """Mask 30% of the real tokens with id 1 and predict them (a stand-in for the LM source's masking)."""
    chosen = (jax.random.uniform(rng, batch["input_ids"].shape) < 0.3) & (batch["attention_mask"] > 0)
    return {**batch, "input_ids": jnp.where(chosen, 1, batch["input_ids"]),
            "labels": jnp.where(chosen, batch["input_ids"], losses.IGNORE)}


def _mixture():
    model = build_multitask_model(ONE, HEADS)
    params, _ = init_params(model, jax.random.key(1), {}, IDS)
    rng = np.random.default_rng(0)
    srcs = {"cls": multitask.Source("cls", "sequence_classification", 3, "classification", 10, None),
            "tag": multitask.Source("tag", "token_classification", 4, "tagging", 10, None),
            "mlm": multitask.Source("mlm", "masked_lm", 64, "masked_lm", 10, None, transform=_mlm_transform)}
    batches = {"cls": _batch(rng, 3, 8, "classification"), "tag": _batch(rng, 2, 6, "tagging"),
               "mlm": _batch(rng, 2, 8, "tagging")}
    return model, params, srcs, batches, jax.random.key_data(jax.random.key(3)), jnp.asarray(5, jnp.int32)


def _delta(method, params, **config):
    mod = deltas.get(method)
    delta = mod.init(jax.random.key(2), params, deltas.check_config(mod, config))
    return (mod, *tree.split(delta, mod.trainable(delta)))


def test_only_delta_leaves_and_active_heads_get_gradient():
    model, params, srcs, batches, key, step = _mixture()
    mod, train, fixed = _delta("bitfit", params)  # δ = the biases + every head (train_head's head/.*)
    acc = jax.tree_util.tree_map(jnp.zeros_like, train)
    for i, name in enumerate(("cls", "mlm")):  # two of the four heads have a source in this run
        acc, loss = multitask.make_source_step(model, mod, srcs[name], i, 0.5)(acc, train, fixed, params,
                                                                              batches[name], key, step)
        assert np.isfinite(float(loss))
    grads = tree.flatten(acc)
    assert set(grads) == set(tree.flatten(train))  # the accumulator holds δ's trainable leaves only
    assert all(p.startswith("head/") or p.endswith("/bias") for p in grads)
    norms = {p: float(jnp.abs(g).sum()) for p, g in grads.items()}
    for name in ("reg", "tag"):
        assert all(v == 0.0 for p, v in norms.items() if p.startswith(f"head/{name}/")), name
    for name in ("cls", "mlm"):
        assert sum(v for p, v in norms.items() if p.startswith(f"head/{name}/")) > 0, name
    assert sum(v for p, v in norms.items() if p.startswith("backbone/")) > 0  # the shared backbone learns


@pytest.mark.slow  # four compilations of LoRA gradients (~40 s of a busy core)
def test_source_gradients_sum_to_the_gradient_of_the_weighted_loss():
    model, params, srcs, batches, key, step = _mixture()
    mod, train, fixed = _delta("lora", params, r=2)
    index = {"cls": 0, "tag": 1, "mlm": 3}  # the source's position in the run (its key stream), not the head's
    weights = {"cls": 0.5, "tag": 0.3, "mlm": 0.2}
    acc = jax.tree_util.tree_map(jnp.zeros_like, train)
    got = {}
    for n, s in srcs.items():
        acc, got[n] = multitask.make_source_step(model, mod, s, index[n], weights[n])(acc, train, fixed, params,
                                                                                     batches[n], key, step)

    def fused(t):
        return sum(weights[n] * multitask.make_source_loss(model, mod, s, index[n])(
            t, fixed, params, batches[n], key, step)[0] for n, s in srcs.items())

    value, want = jax.jit(jax.value_and_grad(fused))(train)
    assert float(sum(weights[n] * got[n] for n in weights)) == pytest.approx(float(value), rel=1e-6)
    for p, g in tree.flatten(want).items():
        np.testing.assert_allclose(tree.flatten(acc)[p], g, rtol=1e-5, atol=1e-7, err_msg=p)
    assert all(float(jnp.abs(g).sum()) == 0 for p, g in tree.flatten(acc).items() if p.startswith("head/reg/"))

    # the transform runs inside the loss with the step's key: the same step draws the same masks, another not
    loss_fn = jax.jit(multitask.make_source_loss(model, mod, srcs["mlm"], index["mlm"]))
    same = [float(loss_fn(train, fixed, params, batches["mlm"], key, jnp.asarray(s))[0]) for s in (5, 5, 6)]
    assert same[0] == same[1] != same[2]


def test_update_applies_the_accumulated_gradient_once():
    import optax

    train = {"w": jnp.ones(3)}
    tx = optax.sgd(0.1)
    state = {"step": jnp.zeros([], jnp.int32), "train": train, "fixed": {}, "opt_state": tx.init(train),
             "rng": jax.random.key_data(jax.random.key(0))}
    update = multitask.make_update(tx, deltas.get("full"), {"a": 0.25, "b": 0.75}, jit=False)
    new, zeros, m = update(state, {"w": jnp.asarray([1.0, 2.0, 3.0])}, {"a": jnp.asarray(2.0), "b": jnp.asarray(4.0)})
    np.testing.assert_allclose(new["train"]["w"], 1 - 0.1 * np.array([1.0, 2.0, 3.0]))
    assert float(m["loss"]) == pytest.approx(0.25 * 2 + 0.75 * 4) and int(new["step"]) == 1
    assert float(m["loss/b"]) == 4.0 and not np.any(np.asarray(zeros["w"]))
    skip = multitask.make_update(tx, deltas.get("full"), {"a": 1.0}, on_nonfinite="skip", jit=False)
    new, _, m = skip(state, {"w": jnp.ones(3)}, {"a": jnp.asarray(np.nan)})
    assert not bool(m["finite"]) and np.all(np.asarray(new["train"]["w"]) == 1.0)


# ---- config --------------------------------------------------------------------------------------------------
def _cfg(*overrides):
    cfg = config_lib.load(os.path.join(REPO, "configs", "glue4_multitask.py"))
    return config_lib.apply_overrides(cfg, list(overrides))


@pytest.mark.parametrize("overrides, match", [
    (["multitask.tasks=sst2,sst3"], r"multitask.tasks: unknown task 'sst3'"),
    (["multitask.tasks=()"], "multitask.tasks is empty"),
    (["multitask.tasks=sst2,sst2"], "repeats a task"),
    (["multitask.sampling=uniform"], "multitask.sampling='uniform'"),
    (["multitask.temperature=3"], "read only with multitask.sampling=temperature"),
    (["multitask.sampling=temperature", "multitask.temperature=0"], "must be a positive number"),
    (["multitask.weights=1,2"], "2 entries for 4 tasks"),
    (["multitask.weights=1,1,-1,1"], "finite and >= 0"),
    (["multitask.weights=0,0,0,0"], "all 0"),
    (["multitask.train_subset=10,10,10"], "3 entries for 4 tasks"),
    (["multitask.width=padded"], "multitask.width='padded'"),
    (["multitask.base_head=qnli"], "multitask.base_head='qnli'"),
    (["train.batch_size=3"], "smaller than the 4 tasks"),
    (["train.grad_accum=2"], "does not support train.grad_accum=2"),
    (["reg.method=r3f"], "does not support reg.method='r3f'"),
    (["train.ema_decay=0.9"], "does not support train.ema_decay"),
    (["delta.method=remove"], "changes the model's structure"),
])
def test_config_errors(overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        multitask.check_config(_cfg(*overrides))


def test_config_resolves_and_matches_the_single_task_baselines():
    mt = multitask.check_config(_cfg("multitask.train_subset=100,0,7,4000", "multitask.weights=1,1,0.5,1"))
    assert mt["names"] == ["sst2", "mrpc", "stsb", "cola"] and mt["train_subset"] == [100, 0, 7, 4000]
    assert mt["weights"] == [1.0, 1.0, 0.5, 1.0]
    assert multitask.check_config(_cfg())["train_subset"] == [4000] * 4  # () = task.train_subset for every task
    assert multitask.head_name("tfds:glue/sst2") == "tfds_glue_sst2"
    single = config_lib.load(os.path.join(REPO, "configs", "glue4_single.py:cola"))
    multi = _cfg()
    for key in ("task.train_subset", "task.subset_seed", "task.max_length", "train.epochs", "train.batch_size",
                "train.bucket", "train.pad_to_multiple_of", "optim", "delta", "model", "seed"):
        assert single.get_path(key) == multi.get_path(key), key


def test_ftlab_train_refuses_a_multitask_config(tmp_path, capsys):
    from ftlab import cli

    assert cli.main(["train", "--config", os.path.join(REPO, "configs", "glue4_multitask.py:runlocal"),
                     "--workdir", str(tmp_path)]) == 2
    assert "ftlab multitask" in capsys.readouterr().err
    assert cli.main(["multitask", "--config", os.path.join(REPO, "configs", "glue4_multitask.py:runlocal"),
                     "--workdir", str(tmp_path), "--config.multitask.sampling=nope"]) == 2


# ---- end to end ----------------------------------------------------------------------------------------------
def _user_task(root, name, kind, n_train=24, n_dev=8):
    d = root / name
    d.mkdir()
    rng = np.random.default_rng(len(name))
    words = ["good", "bad", "film", "plot", "great", "dull", "actor", "scene"]
    for split, n in (("train", n_train), ("dev", n_dev)):
        with open(d / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                text = " ".join(rng.choice(words, rng.integers(3, 9)))
                label = (str(int("good" in text)) if kind == "classification"
                         else float(text.count("great") + rng.normal() * 0.1))
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    spec = {"name": name, "kind": kind, "splits": {"train": "train.jsonl", "dev": "dev.jsonl"}}
    if kind == "classification":
        spec["label_names"] = ["0", "1"]
    (d / "task.json").write_text(json.dumps(spec))
    return f"jsonl:{d}"


def _tiny_run_cfg(tmp_path, tiny_bert_dir, *extra):
    tasks = [_user_task(tmp_path, "senti", "classification"), _user_task(tmp_path, "score", "regression")]
    return _cfg(f"multitask.tasks={','.join(tasks)}", "multitask.single_task=()", "multitask.width=fixed",
                f"model.name={tiny_bert_dir}", f"task.data_dir={tmp_path}", "task.max_length=16", "task.train_subset=0", "train.batch_size=8",
                "train.max_steps=6", "train.eval_every=3", "train.log_every=1", "train.checkpoint_every=3",
                "train.keep_checkpoints=3", "train.progress=false", "train.eval_batch_size=8",
                "train.export_delta=final", *extra)


@pytest.mark.slow  # two short runs of the tiny model: compilations dominate (~1 min on a busy core)
def test_tiny_run_results_and_exact_resume(tmp_path, tiny_bert_dir):
    (tmp_path / "data").mkdir()
    cfg = _tiny_run_cfg(tmp_path / "data", tiny_bert_dir)
    r = multitask.train_multitask(cfg, str(tmp_path / "straight"))
    names = list(r["main_metrics"])
    assert r["train_steps"] == 6 and r["sampling"]["batch_size"] == {names[0]: 4, names[1]: 4}
    assert r["sampling"]["epochs_seen"] == {n: 6 * 4 / 24 for n in names}
    assert set(r["best_metrics"]) == set(names) and r["main_metric"] == "mean"
    assert r["best_score"] == pytest.approx(np.mean([r["best_metrics"][n][m] for n, m in r["main_metrics"].items()]))
    assert r["delta_bytes"] == 4 * r["trainable_params"]
    rows = [json.loads(ln) for ln in open(tmp_path / "straight" / "metrics.jsonl")]
    assert [x["step"] for x in rows if x["kind"] == "eval"] == [3, 6]
    assert all(f"loss/{n}" in rows[0] for n in names)

    # resume: drop the last checkpoint, run the same config again from step 3: the same numbers and δ
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    os.remove(tmp_path / "resumed" / "results.json")
    r2 = multitask.train_multitask(cfg, str(tmp_path / "resumed"))
    assert r2["metrics"] == r["metrics"]
    rows2 = [json.loads(ln) for ln in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert rows2 == rows
    from safetensors.numpy import load_file

    a, b = (load_file(tmp_path / w / "delta" / "delta.safetensors") for w in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # `ftlab eval` of the workdir: the exported (final) δ gives the final evals again
    again = multitask.evaluate_workdir(str(tmp_path / "straight"))
    assert again.pop("mean") == pytest.approx(np.mean([r["metrics"][n][m] for n, m in r["main_metrics"].items()]))
    for n in names:
        for k, v in r["metrics"][n].items():
            assert again[n][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (n, k)

    # the comparison with single-task runs: ratio of each task's selected score to the single run's best
    fake = {n: tmp_path / f"single-{n}" for n in names}
    for task_name, n in zip(r["tasks"], names):
        fake[n].mkdir()
        m = r["main_metrics"][n]
        (fake[n] / "results.json").write_text(json.dumps({"task": task_name, "best_metrics": {m: 0.5}}))
    cmp = multitask.single_task_comparison({n: str(p) for n, p in fake.items()}, r["best_metrics"],
                                           [s for s in multitask.prepare(cfg)["sources"]])
    for n in names:
        assert cmp[n]["ratio"] == pytest.approx(r["best_metrics"][n][r["main_metrics"][n]] / 0.5)
    assert cmp["min_ratio"] == min(cmp[n]["ratio"] for n in names)


# ---- the joint form: task loss + λ · LM loss --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mlm_base(tmp_path_factory, hf_offline):
    """A 2-layer, width-32 random BertForMaskedLM (a base with its own MLM head, as minilm-mlm) without dropout,
    with MiniLM's tokenizer."""
    import torch
    import transformers
    from conftest import minilm_dir

    d = tmp_path_factory.mktemp("tiny_mlm_base")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    transformers.BertForMaskedLM(cfg).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm_dir(), f)):
            shutil.copy(os.path.join(minilm_dir(), f), d / f)
    return str(d)


def _joint_cfg(root, model_dir, *extra):
    docs = root / "text.txt"
    docs.write_text("\n".join(f"review {i}: the film was {'good' if i % 2 else 'dull'} and the actors were fine"
                              for i in range(40)) + "\n")
    return _cfg(f"multitask.tasks={_user_task(root, 'senti', 'classification')}", "multitask.single_task=()",
                f"model.name={model_dir}", f"task.data_dir={root}", "task.max_length=16", "task.train_subset=0",
                "multitask.width=fixed", "train.batch_size=4", "train.max_steps=4", "train.eval_every=4",
                "train.log_every=1", "train.checkpoint_every=0", "train.progress=false", "train.eval_batch_size=8",
                "train.export_delta=final", f"lm.train={docs}", "lm.heldout=5", "lm.block_size=16",
                "multitask.lm_weight=0.5", "multitask.lm_batch_size=3", "multitask.base_head=lm", *extra)


@pytest.mark.slow  # gradients of a 30,522-word tiny BERT, twice, eagerly (~40 s of a busy core)
def test_joint_loss_is_task_plus_lambda_lm_and_lambda_0_gives_the_task_gradient(tmp_path, tiny_mlm_base):
    """One joint step's loss = the task's CE + λ · the masked LM's CE, each computed here with a single-task
    TaskModel on the same batches (the LM's at every position, then read at the masked slots); with λ = 0 the
    accumulated gradient is the task-only gradient and the LM head gets none."""
    from ftlab.models import heads as heads_lib
    from ftlab.train import loop

    cfg = _joint_cfg(tmp_path, tiny_mlm_base)
    prep = multitask.prepare(cfg)
    model, params, sources = prep["model"], prep["params"], prep["sources"]
    name = sources[0].name
    assert [s.name for s in sources] == [name, "lm"] and sources[1].head == "masked_lm" and sources[1].task is None
    flat = tree.flatten(params)
    for p, x in tree.flatten(prep["base"].params).items():  # base_head=lm: the LM head starts from the base's
        if p.startswith("head/"):
            np.testing.assert_array_equal(flat["head/lm/" + p[len("head/"):]], x)
    p = multitask.plan(sources, cfg, prep["mt"])
    assert p["batch"] == {name: 4, "lm": 3} and p["weight"] == {name: 1.0, "lm": 0.5}
    d = loop.init_delta(cfg, {**prep, "task": None})
    state, tx, _ = multitask.init_state(cfg, params, d, 4)
    batches = {s.name: next(s.batches(p["batch"][s.name], 0)) for s in sources}

    def joint(weights):
        acc = jax.tree_util.tree_map(jnp.zeros_like, state["train"])
        got = {}
        for i, s in enumerate(sources):
            step = multitask.make_source_step(model, d["delta_mod"], s, i, weights[s.name], jit=False)
            acc, got[s.name] = step(acc, state["train"], state["fixed"], params, batches[s.name], state["rng"],
                                    state["step"])
        _, _, m = multitask.make_update(tx, d["delta_mod"], weights, jit=False)(state, acc, got)
        return acc, m

    _, m = joint(p["weight"])
    # the task loss, separately: a single-task classifier on the task's batch
    tb = batches[name]
    clf = heads_lib.TaskModel(model.config, "sequence_classification", 2, cfg.model.pooling)

    def task_loss(prm):
        logits = clf.apply({"params": single_head(prm, name)}, tb["input_ids"], tb["attention_mask"],
                           tb["token_type_ids"])
        return losses.compute("classification", logits, tb)[0]

    # the LM loss, separately: the source's masks (its transform key: fold_in(fold_in(rng, step) split, index)
    # split, as make_source_loss documents), a full masked-LM head at every position, read at the chosen slots
    step_key, _ = jax.random.split(jax.random.fold_in(state["rng"], state["step"]))
    _, t_key = jax.random.split(jax.random.fold_in(step_key, 1))
    masked = sources[1].transform(batches["lm"], t_key)
    full = heads_lib.TaskModel(model.config, "masked_lm").apply(
        {"params": single_head(params, "lm")}, masked["input_ids"], masked["attention_mask"], masked["token_type_ids"])
    logp = jax.nn.log_softmax(np.asarray(full, np.float64), -1)
    pos, lab = np.asarray(masked["positions"]), np.asarray(masked["labels"])
    nll = [-float(logp[b, pos[b, k], lab[b, k]]) for b in range(lab.shape[0]) for k in range(lab.shape[1])
           if lab[b, k] != losses.IGNORE]
    lm_loss = float(np.mean(nll))
    assert len(nll) > 0 and float(m["loss/lm"]) == pytest.approx(lm_loss, rel=1e-5)
    assert float(m[f"loss/{name}"]) == pytest.approx(float(task_loss(params)), rel=1e-5)
    assert float(m["loss"]) == pytest.approx(float(task_loss(params)) + 0.5 * lm_loss, rel=1e-5)

    # λ = 0: the gradient of the task loss alone (θ₀'s tree: δ of `full` is θ₀'s copy); the LM head gets 0
    acc0, m0 = joint({name: 1.0, "lm": 0.0})
    want = tree.flatten(jax.grad(task_loss)(state["train"]))
    for path, g in tree.flatten(acc0).items():
        if path.startswith("head/lm/"):
            assert not np.any(np.asarray(g)), path
        else:
            np.testing.assert_allclose(g, want[path], rtol=1e-5, atol=1e-7, err_msg=path)
    assert float(m0["loss"]) == pytest.approx(float(task_loss(params)), rel=1e-6)


def test_multitask_model_positions_equal_the_full_head():
    model = build_multitask_model(ONE, HEADS)
    params, _ = init_params(model, jax.random.key(1), {}, IDS)
    pos = jnp.asarray([[1, 5, 2], [7, 0, 0]], jnp.int32)
    for name in ("mlm", "tag"):
        full = model.select(name).apply({"params": params}, IDS)
        part = model.select(name).apply({"params": params}, IDS, positions=pos)
        np.testing.assert_allclose(part, jnp.take_along_axis(full, pos[..., None], 1), atol=1e-6)
    with pytest.raises(ValueError, match="positions= needs per-token heads"):
        model.select(("cls", "mlm")).apply({"params": params}, IDS, positions=pos)


@pytest.mark.parametrize("overrides, match", [
    (["multitask.lm_weight=-1"], "lm_weight=-1.0: must be finite and >= 0"),
    (["multitask.lm_weight=0.5", "lm.train="], "needs LM text: set lm.train"),
    (["multitask.lm_weight=0.5", "lm.train=x.txt", "multitask.lm_batch_size=0"], "lm_batch_size=0: must be >= 1"),
    (["multitask.tasks=sst2,mlm"], "joins a run as multitask.lm_weight > 0"),
    (["multitask.base_head=lm"], r"or one of the tasks \['sst2', 'mrpc', 'stsb', 'cola'\]$"),
])
def test_joint_config_errors(overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        multitask.check_config(_cfg(*overrides))


def test_imdb_joint_config_resolves():
    cfg = config_lib.load(os.path.join(REPO, "configs", "imdb_joint.py"))
    mt = multitask.check_config(cfg)
    assert mt["lm_weight"] == 1.0 and mt["base_head"] == "lm" and cfg.model.name == "minilm-mlm"
    assert multitask.check_config(config_lib.load(os.path.join(REPO, "configs", "imdb_joint.py:control")))[
        "lm_weight"] == 0.0


@pytest.mark.slow  # a 4-step joint run of the tiny BERT (task + masked LM): compilations dominate
def test_joint_run_end_to_end(tmp_path, tiny_mlm_base):
    from safetensors.numpy import load_file

    (tmp_path / "data").mkdir()
    cfg = _joint_cfg(tmp_path / "data", tiny_mlm_base)
    r = multitask.train_multitask(cfg, str(tmp_path / "run"))
    name = list(r["main_metrics"])[0]
    assert list(r["best_metrics"]) == [name] and set(r["best_metrics"][name]) == {"accuracy", "loss"}  # task only
    assert r["heads"]["lm"] == {"head": "masked_lm", "num_labels": 30522, "loss": "masked_lm", "task": None}
    assert r["sampling"]["weight"] == {name: 1.0, "lm": 0.5} and r["sampling"]["batch_size"] == {name: 4, "lm": 3}
    rows = [json.loads(ln) for ln in open(tmp_path / "run" / "metrics.jsonl")]
    train = [x for x in rows if x["kind"] == "train"]
    assert len(train) == 4
    for x in train:  # log_every=1: each row is one step's L = L_task + λ · L_LM
        assert x["loss"] == pytest.approx(x[f"loss/{name}"] + 0.5 * x["loss/lm"], rel=1e-5)
    evals = [x for x in rows if x["kind"] == "eval"]
    assert len(evals) == 1 and not any(k.startswith("lm/") for k in evals[0])
    stored = load_file(tmp_path / "run" / "delta" / "delta.safetensors")
    assert any("head/lm/" in k or "head.lm." in k for k in stored)  # the LM head is part of δ
    again = multitask.evaluate_workdir(str(tmp_path / "run"))
    assert set(again) == {name, "mean"} and again[name]["accuracy"] == pytest.approx(r["metrics"][name]["accuracy"])


@pytest.mark.slow  # SmolLM2's tokenizer (a GGUF read) and a tiny decoder's steps
def test_joint_causal_lm_source_on_a_decoder(tmp_path, hf_offline):
    """A decoder's LM source is a causal LM on the packed text: its loss in the joint step is the next-token CE of
    a single-task causal-LM model on the same rows, and the total is L_task + λ·L_LM."""
    import torch
    import transformers

    from ftlab.checkpoint import load_base
    from ftlab.models import heads as heads_lib
    from ftlab.train import loop

    tok = load_base("smollm2").tokenizer
    d = tmp_path / "tiny_llama"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)).save_pretrained(d)
    tok.save_pretrained(d)
    (tmp_path / "data").mkdir()
    cfg = _joint_cfg(tmp_path / "data", str(d), "multitask.base_head=", "multitask.lm_weight=0.25")
    prep = multitask.prepare(cfg)
    model, params, sources = prep["model"], prep["params"], prep["sources"]
    name = sources[0].name
    assert sources[1].head == sources[1].loss == "causal_lm" and sources[1].transform is None
    p = multitask.plan(sources, cfg, prep["mt"])
    dl = loop.init_delta(cfg, {**prep, "task": None})
    state, tx, _ = multitask.init_state(cfg, params, dl, 4)
    batches = {s.name: next(s.batches(p["batch"][s.name], 0)) for s in sources}
    acc, got = jax.tree_util.tree_map(jnp.zeros_like, state["train"]), {}
    for i, s in enumerate(sources):
        step = multitask.make_source_step(model, dl["delta_mod"], s, i, p["weight"][s.name], jit=False)
        acc, got[s.name] = step(acc, state["train"], state["fixed"], params, batches[s.name], state["rng"],
                                state["step"])
    _, _, m = multitask.make_update(tx, dl["delta_mod"], p["weight"], jit=False)(state, acc, got)
    lb = batches["lm"]
    assert lb["input_ids"].shape == (3, 16) and lb["attention_mask"].all()
    assert not any(p_.startswith("head/lm/") for p_ in tree.flatten(params))  # tied: the head is the embedding
    logits = heads_lib.TaskModel(model.config, "causal_lm").apply({"params": {"backbone": params["backbone"]}},
                                                                   lb["input_ids"], lb["attention_mask"])
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    ids = lb["input_ids"]
    lm_loss = -np.mean([logp[b, t, ids[b, t + 1]] for b in range(3) for t in range(15)])
    tb = batches[name]
    clf = heads_lib.TaskModel(model.config, "sequence_classification", 2, cfg.model.pooling)
    task_loss = float(losses.compute("classification", clf.apply({"params": single_head(params, name)},
                                                                  tb["input_ids"], tb["attention_mask"]), tb)[0])
    assert float(m["loss/lm"]) == pytest.approx(lm_loss, rel=1e-5)
    assert float(m["loss"]) == pytest.approx(task_loss + 0.25 * lm_loss, rel=1e-5)


@pytest.mark.slow  # a 6-step run of the tiny model with movement scores
def test_soft_movement_multitask_selects_its_best_after_the_schedule(tmp_path, tiny_bert_dir):
    """The multi-task loop asks `loop.selectable` too: of the evals at 2, 4, 6, only step 6 (≥ t_f = 4.8) may be
    the best, and the exported best δ is step 6's."""
    (tmp_path / "data").mkdir()
    cfg = _tiny_run_cfg(tmp_path / "data", tiny_bert_dir, "train.eval_every=2", "train.checkpoint_every=0",
                        "train.export_delta=best", "delta.method=prune", "delta.criterion=soft_movement",
                        "delta.keep=0.1", "delta.budget=per_layer", "delta.warmup_fraction=0.1",
                        "delta.cooldown_fraction=0.2", "delta.tau=0.1", "delta.penalty_weight=150.0")
    r = multitask.train_multitask(cfg, str(tmp_path / "run"))
    evals = [json.loads(ln) for ln in open(tmp_path / "run" / "metrics.jsonl") if '"eval"' in ln]
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert r["best_step"] == 6
    assert json.load(open(tmp_path / "run" / "best_delta" / "delta.json"))["step"] == 6
