"""Weight averaging (ftlab.train.averaging) against hand computations: the EMA recurrence (and the same step
vmapped over seeds), the cyclic cosine schedule of Huang et al. 2017, snapshot files, the ensemble's
predictions from its members' eval-step outputs; end to end: results.json's 'averaging', the last-k average
equal to the mean of the saved snapshots, the EMA δ exported and re-evaluated by `ftlab eval`, and an exact
kill-and-resume with EMA, last-k and snapshot ensembles on."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab import deltas, optim, tree
from ftlab.models import BertConfig, build_model
from ftlab.train import averaging
from ftlab.train import step as step_lib

CFG = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32)
B, T = 8, 12


def _batch(seed: int, kind: str = "classification") -> dict:
    r = np.random.default_rng(seed)
    lengths = r.integers(2, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    if kind == "regression":
        labels = r.uniform(0, 5, size=B).astype(np.float32)
    elif kind == "tagging":
        labels = np.where(mask == 1, r.integers(0, 3, size=(B, T)), -100).astype(np.int32)
    else:
        labels = r.integers(0, 3, size=B).astype(np.int32)
    return {"input_ids": (r.integers(1, CFG.vocab_size, size=(B, T)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((B, T), np.int32), "labels": labels,
            "example_mask": np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)}  # a padded final batch


def _setup(kind: str = "classification", method: str = "full"):
    head = "token_classification" if kind == "tagging" else "sequence_classification"
    model = build_model(CFG, head=head, num_labels=1 if kind == "regression" else 3)
    rng = jax.random.key(0)
    params = model.init({"params": rng, "dropout": rng}, jnp.ones((1, 8), jnp.int32))["params"]
    mod = deltas.get(method)
    delta = mod.init(jax.random.key(1), params, deltas.check_config(mod, {}))
    train, fixed = tree.split(delta, mod.trainable(delta))
    return model, mod, params, train, fixed


def _state(tx, train, fixed, seed=3, ema=True):
    copy = lambda t: jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), t)  # noqa: E731
    s = {"step": jnp.zeros([], jnp.int32), "train": copy(train), "fixed": copy(fixed), "opt_state": tx.init(train),
         "rng": jax.random.key_data(jax.random.key(seed))}
    if ema:
        s["ema"] = averaging.init_ema(train)
    return s


def _host(t):
    return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), t)  # copies: the state's buffers are donated


# ------------------------------------------------------------------------------------------------ EMA
def test_ema_update_by_hand():
    ema = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array([[4.0]])}}
    new = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array([[0.0]])}}
    out = jax.device_get(averaging.ema_update(ema, new, jnp.int32(5), 0.75))       # 0.75·ema + 0.25·new
    np.testing.assert_allclose(out["a"], [1.5, 1.5])
    np.testing.assert_allclose(out["b"]["c"], [[3.0]])
    out = jax.device_get(averaging.ema_update(ema, new, jnp.int32(2), 0.75, warmup=True))  # d = min(.75, 3/12)
    np.testing.assert_allclose(out["a"], [0.25 * 1 + 0.75 * 3, 0.25 * 2], rtol=1e-6)
    assert float(averaging.ema_decay_at(jnp.int32(1000), 0.75, True)) == 0.75
    copied = averaging.init_ema(ema)
    assert copied["a"] is not ema["a"] and np.array_equal(copied["a"], ema["a"])


def test_ema_equals_hand_recurrence_over_observed_deltas():
    """The jitted train step's EMA after n steps = the recurrence over the δ it produced at each step (with the
    decay warmup: d_n = min(0.8, (1+n)/(10+n)) = 0.1, 0.18, 0.25)."""
    warmup = True
    model, mod, params, train, fixed = _setup()
    tx, _ = optim.build({"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"}, train, 10)
    decay = 0.8
    step = step_lib.make_train_step(model, mod, tx, "classification", ema_decay=decay, ema_warmup=warmup)
    state = _state(tx, train, fixed)
    expected = _host(train)                                             # ema_0 = δ_0
    for n in range(3):
        state, _ = step(state, params, _batch(n))
        observed = _host(state["train"])                                # δ_{n+1}
        d = np.float32(min(decay, (1 + n) / (10 + n)) if warmup else decay)
        expected = jax.tree_util.tree_map(lambda e, x, d=d: d * e + (np.float32(1) - d) * x, expected, observed)
    got = _host(state["ema"])
    flat_got, flat_exp, flat_raw = tree.flatten(got), tree.flatten(expected), tree.flatten(_host(state["train"]))
    assert set(flat_got) == set(flat_exp)
    for p in flat_exp:
        np.testing.assert_allclose(flat_got[p], flat_exp[p], rtol=1e-6, atol=1e-7, err_msg=p)
    moved = [p for p in flat_raw if not np.allclose(flat_raw[p], flat_got[p], rtol=0, atol=1e-6)]
    assert moved, "the EMA should lag behind δ"


@pytest.mark.slow
def test_ema_step_is_vmappable_over_seeds():
    """The un-jitted step (jit=False), vmapped over a leading seed axis of state and batch, gives each seed's
    own trajectory and EMA (dropout on: the seeds really differ)."""
    model, mod, params, train, fixed = _setup()
    tx, _ = optim.build({"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"}, train, 10)
    kw = dict(ema_decay=0.9, ema_warmup=True)
    raw = step_lib.make_train_step(model, mod, tx, "classification", jit=False, **kw)
    assert not hasattr(raw, "lower")                                    # really not jitted
    single = step_lib.make_train_step(model, mod, tx, "classification", **kw)
    swept = jax.jit(jax.vmap(raw, in_axes=(0, None, 0)))
    seeds = (3, 4)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[_state(tx, train, fixed, s) for s in seeds])
    per_seed = [_state(tx, train, fixed, s) for s in seeds]
    for n in range(2):
        batches = [_batch(10 * n + i) for i in range(len(seeds))]
        stacked, _ = swept(stacked, params, jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches))
        per_seed = [single(s, params, b)[0] for s, b in zip(per_seed, batches)]
    for i, s in enumerate(per_seed):
        for p, x in tree.flatten(_host(s["ema"])).items():
            np.testing.assert_allclose(tree.flatten(_host(stacked["ema"]))[p][i], x, rtol=1e-5, atol=1e-5, err_msg=p)
    a, b = (tree.flatten(_host(stacked["ema"]))["head/classifier/kernel"][i] for i in (0, 1))
    assert not np.allclose(a, b)


@pytest.mark.slow
def test_nonfinite_skip_leaves_ema_unchanged():
    model, mod, params, train, fixed = _setup()
    tx, _ = optim.build({"lr": 1e30, "warmup_steps": 0, "schedule": "constant", "grad_clip": 0.0}, train, 10)
    step = step_lib.make_train_step(model, mod, tx, "classification", on_nonfinite="skip", ema_decay=0.5)
    state = _state(tx, train, fixed)
    skipped = 0
    for n in range(4):
        before = _host(state["ema"])
        state, m = step(state, params, _batch(n))
        if not bool(m["finite"]):
            skipped += 1
            for p, x in tree.flatten(_host(state["ema"])).items():
                np.testing.assert_array_equal(x, tree.flatten(before)[p], err_msg=p)
    assert skipped, "lr=1e30 should make some step non-finite"


def test_config_errors_name_the_key():
    ok = {"ema_decay": 0.999, "ema_warmup": True, "ema_eval": "ema", "average_last_k": 3}
    averaging.check_config(ok)
    averaging.check_config({})                                         # configs saved before averaging existed
    for bad, key in [({"ema_decay": 1.0}, "train.ema_decay"), ({"ema_decay": -0.1}, "train.ema_decay"),
                     ({"ema_warmup": True}, "train.ema_warmup"), ({"ema_eval": "ema"}, "train.ema_eval"),
                     ({"ema_eval": "best", "ema_decay": 0.9}, "train.ema_eval"),
                     ({"average_last_k": -1}, "train.average_last_k")]:
        with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
            averaging.check_config(bad)


# ------------------------------------------------------------------------------------ cyclic cosine
def test_cyclic_cosine_schedule_matches_the_paper():
    """α(t) = α0/2·(cos(π·mod(t−1, ⌈T/M⌉)/⌈T/M⌉)+1), t = 1..T; optax's count is t − 1."""
    a0, T, M = 0.1, 10, 3                                               # ⌈10/3⌉ = 4: cycles 1-4, 5-8, 9-10
    sched = optim.cyclic_cosine_schedule(a0, T, M)

    def paper(t):
        c = -(-T // M)
        return a0 / 2 * (np.cos(np.pi * ((t - 1) % c) / c) + 1)

    for t in (1, 2, 3, 4, 5, 8, 9, 10):
        np.testing.assert_allclose(float(sched(t - 1)), paper(t), rtol=1e-6, err_msg=f"t={t}")
    assert float(sched(0)) == pytest.approx(a0) and float(sched(4)) == pytest.approx(a0)   # restarts
    np.testing.assert_allclose(float(sched(3)), a0 / 2 * (np.cos(3 * np.pi / 4) + 1), rtol=1e-6)  # last of cycle 1
    assert averaging.cycle_end_steps(T, M) == [4, 8, 10]
    assert averaging.cycle_end_steps(12, 3) == [4, 8, 12]
    assert averaging.cycle_end_steps(7, 1) == [7]


def test_cyclic_cosine_drives_the_optimizer():
    """SGD with the cyclic schedule: update t moves a parameter by −α(t)·g."""
    import optax

    params = {"w": jnp.zeros([1])}
    tx, sched = optim.build({"name": "sgd", "lr": 1.0, "schedule": "cyclic_cosine", "cycles": 2,
                             "warmup_ratio": 0.0, "grad_clip": 0.0}, params, total_steps=6)
    state = tx.init(params)
    for t in range(1, 7):
        upd, state = tx.update({"w": jnp.ones([1])}, state, params)
        np.testing.assert_allclose(float(upd["w"][0]), -0.5 * (np.cos(np.pi * ((t - 1) % 3) / 3) + 1), rtol=1e-6)
        params = optax.apply_updates(params, upd)
    assert float(sched(3)) == pytest.approx(1.0)


def test_cyclic_cosine_config_errors():
    p = {"w": jnp.zeros([1])}
    base = {"schedule": "cyclic_cosine", "warmup_ratio": 0.0}
    with pytest.raises(ValueError, match="optim.cycles=3 needs optim.schedule='cyclic_cosine'"):
        optim.build({"cycles": 3}, p, 10)
    with pytest.raises(ValueError, match="cyclic_cosine' has no warmup"):
        optim.build({"schedule": "cyclic_cosine", "cycles": 2}, p, 10)   # the default warmup_ratio 0.06
    with pytest.raises(ValueError, match=r"optim.cycles=6 with 10 steps.*only 5 cycles"):
        optim.build({**base, "cycles": 6}, p, 10)
    with pytest.raises(ValueError, match="optim.cycles=0 must be an integer"):
        optim.build({**base, "cycles": 0}, p, 10)
    with pytest.raises(ValueError, match="more than the run's 10 steps"):
        optim.build({**base, "cycles": 11}, p, 10)


# ----------------------------------------------------------------------------------- snapshot files
def test_snapshot_files_are_atomic_kept_and_discarded(tmp_path):
    d = str(tmp_path / "snaps")
    trees = [{"a": {"w": np.full([2, 3], float(i), np.float32)}, "b": np.array([i, -i], np.float32)} for i in range(4)]
    for i, t in enumerate(trees):
        averaging.save_snapshot(d, 10 * (i + 1), t, keep=3)
    assert [s for s, _ in averaging.list_snapshots(d)] == [20, 30, 40]
    assert not [n for n in os.listdir(d) if "tmp" in n]
    open(os.path.join(d, ".00000050.safetensors.tmp-1"), "w").close()   # what a kill mid-write leaves
    assert [s for s, _ in averaging.list_snapshots(d)] == [20, 30, 40]
    loaded = [averaging.load_snapshot(p) for _, p in averaging.list_snapshots(d)]
    np.testing.assert_array_equal(loaded[0]["a"]["w"], trees[1]["a"]["w"])
    mean = averaging.mean_tree(loaded)
    np.testing.assert_allclose(mean["a"]["w"], np.full([2, 3], 2.0))     # the kept 1, 2, 3: (1+2+3)/3
    np.testing.assert_allclose(mean["b"], [2.0, -2.0])
    averaging.discard_snapshots(d, after_step=30)                       # resuming from a step-30 checkpoint
    assert sorted(os.listdir(d)) == ["00000020.safetensors", "00000030.safetensors"]
    averaging.discard_snapshots(d, after_step=None)                     # a fresh run
    assert os.listdir(d) == []


# -------------------------------------------------------------------------------- snapshot ensembles
def _perturbed(train, seed, scale=0.5):
    leaves, treedef = jax.tree_util.tree_flatten(train)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("kind", ["classification", "regression", "tagging"])
def test_ensemble_equals_mean_of_members_eval_step_outputs(kind):
    model, mod, params, train, fixed = _setup(kind)
    members = [_perturbed(train, s) for s in range(3)]
    score_step = step_lib.make_eval_step(model, mod, kind, with_scores=True)
    plain_step = step_lib.make_eval_step(model, mod, kind)
    batch = _batch(5, kind)
    outs = [jax.device_get(score_step(m, fixed, params, batch)) for m in members]
    for m, o in zip(members, outs):                                     # scores agree with the plain eval step
        plain = jax.device_get(plain_step(m, fixed, params, batch))
        np.testing.assert_array_equal(plain["pred"], o["pred"])
        if kind == "regression":
            np.testing.assert_allclose(o["scores"], o["pred"], rtol=1e-6)
        else:
            np.testing.assert_array_equal(np.argmax(o["scores"], -1), o["pred"])
            np.testing.assert_allclose(o["scores"].sum(-1), 1.0, rtol=1e-5)
    ens = jax.device_get(averaging.make_ensemble_eval_step(score_step, members, kind)(None, fixed, params, batch))
    mean = np.mean([o["scores"] for o in outs], axis=0)
    np.testing.assert_allclose(ens["scores"], mean, rtol=1e-6, atol=1e-7)
    w = batch["example_mask"]
    if kind == "regression":
        np.testing.assert_allclose(ens["pred"], mean, rtol=1e-6)
        np.testing.assert_allclose(ens["loss_sum"], np.sum(w * (mean - batch["labels"]) ** 2), rtol=1e-5)
        assert float(ens["weight"]) == w.sum()
    else:
        np.testing.assert_array_equal(ens["pred"], np.argmax(mean, -1))
        labels = batch["labels"]
        valid = labels != -100
        p = np.take_along_axis(mean, np.where(valid, labels, 0)[..., None], -1)[..., 0]
        weight = w if kind == "classification" else valid * w[:, None]
        np.testing.assert_allclose(ens["loss_sum"], np.sum(-np.log(p) * weight), rtol=1e-5)
        assert float(ens["weight"]) == weight.sum()
    if kind != "regression":                                            # the members really disagree somewhere
        assert any((o["pred"] != outs[0]["pred"]).any() for o in outs[1:])


def test_ensemble_outputs_by_hand():
    scores = np.array([[[0.9, 0.1], [0.2, 0.8]],                        # member 1, two examples
                       [[0.3, 0.7], [0.4, 0.6]]], np.float32)           # member 2
    batch = {"labels": np.array([1, 1]), "example_mask": np.array([1.0, 1.0], np.float32)}
    out = jax.device_get(averaging.ensemble_outputs("classification", jnp.asarray(scores), batch))
    np.testing.assert_allclose(out["scores"], [[0.6, 0.4], [0.3, 0.7]], rtol=1e-6)
    np.testing.assert_array_equal(out["pred"], [0, 1])                  # member 1 alone would say 0, 1; member 2: 1, 1
    np.testing.assert_allclose(out["loss_sum"], -np.log(0.4) - np.log(0.7), rtol=1e-6)
    reg = jax.device_get(averaging.ensemble_outputs("regression", jnp.array([[1.0, 3.0], [2.0, 5.0]]),
                                                    {"labels": np.array([1.0, 4.0]),
                                                     "example_mask": np.array([1.0, 0.0])}))
    np.testing.assert_allclose(reg["pred"], [1.5, 4.0])
    np.testing.assert_allclose(reg["loss_sum"], 0.25)                   # the padding row weighs 0
    assert float(reg["weight"]) == 1.0


# --------------------------------------------------------------------------------------- end to end
def _cfg(tiny_bert_dir, *overrides):
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py:runlocal"))
    return config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                            "train.pad_to_multiple_of=32", "train.progress=false",
                                            "train.eval_batch_size=256", *overrides])


AVG = ["optim.lr=2e-3", "train.ema_decay=0.8", "train.average_last_k=2", "train.eval_every=2",
       "optim.schedule=cyclic_cosine", "optim.cycles=2", "optim.warmup_ratio=0"]


@pytest.mark.slow
def test_end_to_end_results_last_k_ensemble_and_ema_export(tmp_path, tiny_bert_dir):
    from safetensors.numpy import load_file

    from ftlab import cli
    from ftlab.checkpoint import delta_io
    from ftlab.train import loop

    cfg = _cfg(tiny_bert_dir, *AVG, "train.ema_eval=ema", "train.export_delta=final")
    r = loop.train_and_evaluate(cfg, str(tmp_path))
    on_disk = json.load(open(tmp_path / "results.json"))
    avg = on_disk["averaging"]
    assert set(avg) == {"ema", "last_k", "snapshot_ensemble"}
    assert avg["ema"]["selected"] == "ema" and avg["ema"]["decay"] == 0.8
    assert on_disk["metrics"] == avg["ema"]["ema_metrics"] != avg["ema"]["raw_metrics"]
    assert avg["ema"]["ema_best"]["step"] == on_disk["best_step"]
    assert avg["last_k"]["steps"] == [6, 8] and avg["snapshot_ensemble"]["steps"] == [4, 8]
    kinds = [m["kind"] for m in map(json.loads, open(tmp_path / "metrics.jsonl"))]
    assert kinds.count("eval") == kinds.count("eval_ema") == 4

    # The same model, data and eval step, rebuilt separately.
    prep = loop.prepare(cfg)
    d = loop.init_delta(cfg, prep)
    task, tok = prep["task"], prep["base"].tokenizer
    _, enc = loop._load_split(cfg, task, tok, "dev")
    eval_step = step_lib.make_eval_step(d["model"], d["delta_mod"], task.kind)
    ev = lambda train: loop.evaluate(eval_step, {"train": train, "fixed": d["fixed"]}, prep["params"],  # noqa: E731
                                     task, enc, 256, tok.pad_token_id or 0, 32)

    # Last k: the mean of the two snapshot files, loaded separately, is the saved δ and has the reported metrics.
    files = [load_file(str(tmp_path / "snapshots" / "last_k" / f"{s:08d}.safetensors")) for s in (6, 8)]
    mean = tree.unflatten({p: (files[0][p] + files[1][p]) / 2 for p in files[0]})
    _, _, saved = delta_io.load(str(tmp_path / "delta_last_k"), prep["params"], prep["base"].hash)
    saved_train, _ = tree.split(saved, d["delta_mod"].trainable(saved))
    for p, x in tree.flatten(mean).items():
        np.testing.assert_allclose(tree.flatten(saved_train)[p], x, rtol=1e-6, atol=1e-7, err_msg=p)
    assert ev(mean) == pytest.approx(avg["last_k"]["metrics"], rel=1e-6)

    # Snapshot ensemble: each member's metrics, and the accuracy of the mean of their probabilities.
    score_step = step_lib.make_eval_step(d["model"], d["delta_mod"], task.kind, with_scores=True)
    from ftlab.data.batching import batches

    probs = []
    for s, reported in zip((4, 8), avg["snapshot_ensemble"]["snapshot_metrics"]):
        member = averaging.load_snapshot(str(tmp_path / "snapshots" / "cycles" / f"{s:08d}.safetensors"))
        assert ev(member) == pytest.approx(reported, rel=1e-6)
        rows = []
        for b in batches(enc, 256, shuffle=False, seed=0, epoch=0, pad_id=tok.pad_token_id or 0,
                         pad_to_multiple_of=32, drop_remainder=False, pad_final=True):
            rows.append(np.asarray(score_step(member, d["fixed"], prep["params"], b)["scores"])[b["example_mask"] > 0])
        probs.append(np.concatenate(rows))
    ens_pred = np.argmax((probs[0] + probs[1]) / 2, -1)
    accuracy = float(np.mean(ens_pred == np.asarray(enc.labels)))
    assert accuracy == pytest.approx(avg["snapshot_ensemble"]["metrics"]["accuracy"], abs=1e-12)

    # The exported δ is the final EMA: `ftlab eval` re-evaluates it to the reported EMA metrics.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["eval", "--workdir", str(tmp_path)]) == 0
    got = json.loads(out.getvalue().strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(avg["ema"]["ema_metrics"]["accuracy"], abs=1e-6)
    assert got["loss"] == pytest.approx(avg["ema"]["ema_metrics"]["loss"], abs=1e-5)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):                               # ... and the last-k average's δ
        assert cli.main(["eval", "--workdir", str(tmp_path), "--delta", "delta_last_k"]) == 0
    got = json.loads(out.getvalue().strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(avg["last_k"]["metrics"]["accuracy"], abs=1e-6)
    assert r["metrics"] == on_disk["metrics"]


@pytest.mark.slow
def test_kill_and_resume_with_averaging_is_exact(tmp_path, tiny_bert_dir):
    """SIGKILL right after step 8's checkpoint; step 8's checkpoint is then removed too, so the rerun resumes from
    step 4 with snapshots of steps 6 and 8 already on disk (redone), a stale snapshot from a 'previous attempt'
    and a half-written temporary: the EMA, every logged value and every average equal the uninterrupted run's."""
    from safetensors.numpy import load_file
    from test_train_loop import _metrics, _run

    common = ["--config.train.max_steps=12", "--config.train.checkpoint_every=4", "--config.train.log_every=1",
              "--config.train.eval_every=3", "--config.train.ema_decay=0.7", "--config.train.ema_warmup=true",
              "--config.train.ema_eval=ema", "--config.train.average_last_k=2", "--config.optim.schedule=cyclic_cosine",
              "--config.optim.cycles=3", "--config.optim.warmup_ratio=0", "--config.optim.lr=2e-3"]
    _run(tmp_path / "straight", tiny_bert_dir, *common)
    killed = _run(tmp_path / "killed", tiny_bert_dir, *common, "--config.train.crash_after_checkpoint=8", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "8")
    last_k = tmp_path / "killed" / "snapshots" / "last_k"
    assert sorted(os.listdir(last_k)) == ["00000003.safetensors", "00000006.safetensors"]
    shutil.copy(last_k / "00000006.safetensors", last_k / "00000010.safetensors")   # stale: must not be averaged
    open(last_k / ".00000009.safetensors.tmp-99", "w").close()
    resumed = _run(tmp_path / "killed", tiny_bert_dir, *common)
    assert "resumed from" in resumed.stderr and "checkpoints/4" in resumed.stderr
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "killed")
    ra = json.load(open(tmp_path / "straight" / "results.json"))
    rb = json.load(open(tmp_path / "killed" / "results.json"))
    for key in ("metrics", "best_metrics", "best_step", "averaging"):
        assert ra[key] == rb[key], key
    assert ra["averaging"]["last_k"]["steps"] == [9, 12]
    assert ra["averaging"]["snapshot_ensemble"]["steps"] == [4, 8, 12]
    for rel in ("delta/delta.safetensors", "delta_last_k/delta.safetensors"):   # the EMA δ and the last-k mean
        a, b = load_file(str(tmp_path / "straight" / rel)), load_file(str(tmp_path / "killed" / rel))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), rel
    for kind in ("last_k", "cycles"):
        names = [sorted(os.listdir(tmp_path / run / "snapshots" / kind)) for run in ("straight", "killed")]
        assert names[0] == names[1], kind                               # the stale file and the temporary are gone


@pytest.mark.slow
def test_averaging_on_a_two_device_mesh_matches_one_device(tmp_path, tiny_bert_dir):
    """EMA (laid out as δ), last-k and the snapshot ensemble on 2 fake CPU devices with δ sharded over fsdp:
    the same numbers as on one device, up to the reduction order of a sharded computation."""
    from test_parallel import _logged, _train

    extra = ["--config.optim.lr=2e-3", "--config.train.ema_decay=0.8", "--config.train.ema_eval=ema",
             "--config.train.average_last_k=2", "--config.train.eval_every=3", "--config.optim.schedule=cyclic_cosine",
             "--config.optim.cycles=3", "--config.optim.warmup_ratio=0"]
    runs = {}
    for devices, mesh in ((1, []), (2, ["--config.parallel.data=1", "--config.parallel.fsdp=2"])):
        p = _train(tmp_path / str(devices), tiny_bert_dir, devices, *extra, *mesh)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[devices] = json.load(open(tmp_path / str(devices) / "results.json"))["averaging"]
    a, b = runs[1], runs[2]
    assert [m["kind"] for m in _logged(tmp_path / "1")] == [m["kind"] for m in _logged(tmp_path / "2")]
    assert a["last_k"]["steps"] == b["last_k"]["steps"] == [3, 6]
    assert a["snapshot_ensemble"]["steps"] == b["snapshot_ensemble"]["steps"] == [2, 4, 6]
    pairs = [(a["ema"]["ema_metrics"], b["ema"]["ema_metrics"]), (a["last_k"]["metrics"], b["last_k"]["metrics"]),
             (a["snapshot_ensemble"]["metrics"], b["snapshot_ensemble"]["metrics"]),
             *zip(a["snapshot_ensemble"]["snapshot_metrics"], b["snapshot_ensemble"]["snapshot_metrics"])]
    for x, y in pairs:
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert abs(x["accuracy"] - y["accuracy"]) <= 2 / 872            # a near-tie may flip a prediction or two


def test_vmapped_seed_sweep_refuses_weight_averaging(tmp_path):
    from ftlab.train import loop, sweep

    cfg = config_lib.apply_overrides(loop.default_config(), ["train.ema_decay=0.9", "sweep.seeds=(1, 2)"])
    with pytest.raises(config_lib.ConfigError, match=r"sweep.mode=vmap does no weight averaging \(train.ema_decay"):
        sweep.train_seeds(cfg, str(tmp_path))
    assert averaging.active_keys(loop.default_config()) == []
