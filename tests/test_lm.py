"""LM objectives (ftlab.data.text, ftlab.train.lm): sources, packing, BERT masking, the positions head,
pseudo-perplexity and perplexity against brute force, and an LM stage through the training loop."""

from __future__ import annotations

import gzip
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import config as config_lib
from ftlab.data import text
from ftlab.data.errors import DataError
from ftlab.train import lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- sources
def test_read_documents_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write("first doc\nsecond doc\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x y"}) + "\n" + json.dumps({"body": "z"}) + "\n")
    assert text.read_documents(str(tmp_path / "a.txt")) == ["first doc", "second doc"]
    assert text.read_documents(str(tmp_path / "a.txt.gz")) == ["first doc", "second doc"]
    assert text.read_documents("a.txt", data_dir=str(tmp_path), max_documents=1) == ["first doc"]
    with pytest.raises(DataError, match=r"a\.jsonl:2: no field 'text'"):
        text.read_documents(str(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"b\.jsonl:1: not valid JSON"):
        text.read_documents(str(tmp_path / "b.jsonl"))
    with pytest.raises(DataError, match="file not found"):
        text.read_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="task:<name>:<split>"):
        text.read_documents("task:sst2")


def test_task_source_draws_the_loops_subset():
    """TAPT on task:sst2:train with max_documents=N reads exactly the N sentences task.train_subset=N trains on."""
    from ftlab.tasks import get_task

    docs = text.read_documents("task:sst2:train", max_documents=50, subset_seed=7)
    ex = get_task("sst2").read("train")
    idx = sorted(np.random.default_rng(7).permutation(len(ex))[:50])
    assert docs == [ex[i]["text_a"] for i in idx]


def test_pack_mlm_and_clm(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    docs = ["the movie was great fun", "a dull film", "i laughed a lot at it"]
    enc = text.pack(docs, tok, block_size=8, objective="mlm")
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    stream = [t for d in ids for t in (*d, tok.sep_token_id)]
    assert enc.blocks.shape == (len(stream) // 6, 8)
    assert (enc.blocks[:, 0] == tok.cls_token_id).all() and (enc.blocks[:, -1] == tok.sep_token_id).all()
    assert enc.blocks[:, 1:-1].reshape(-1).tolist() == stream[: enc.blocks.shape[0] * 6]
    batch = enc.collate(np.array([1, -1]), 8, tok.pad_token_id)
    assert batch["example_mask"].tolist() == [1.0, 0.0] and (batch["labels"][1] == -100).all()
    assert (batch["token_type_ids"] == 0).all()
    with pytest.raises(ValueError, match="LM objective"):
        text.pack(docs, tok, 8, "xlm")


# ------------------------------------------------------------------------------------------- masking
def _rows(b=64, t=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (b, t)).astype(np.int32)
    ids[:, 0] = 101
    lengths = rng.integers(20, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids[np.arange(b), lengths - 1] = 102
    ids = np.where(mask > 0, ids, 0)
    return ids, mask


KW = dict(mask_id=103, vocab_size=30522, special_ids=(101, 102, 0), num_predict=20)


def test_mask_tokens_follows_bert():
    ids, mask = _rows(b=256)
    out = jax.jit(lambda r: lm.mask_tokens(r, ids, mask, **KW))(jax.random.key(1))
    chosen = np.asarray(out["chosen"])
    cand = (mask > 0) & ~np.isin(ids, [101, 102, 0])
    assert not (chosen & ~cand).any()  # never [CLS]/[SEP]/padding
    expect = np.clip(np.round(cand.sum(1) * 0.15), 1, 20)
    np.testing.assert_array_equal(chosen.sum(1), expect)  # exactly round(15%) per row, as create_pretraining_data
    pos, lab = np.asarray(out["positions"]), np.asarray(out["labels"])
    used = lab != -100
    np.testing.assert_array_equal(used.sum(1), expect)
    for r in range(len(ids)):  # the slots are the chosen positions, labelled with the original tokens
        assert sorted(pos[r][used[r]].tolist()) == np.flatnonzero(chosen[r]).tolist()
        np.testing.assert_array_equal(lab[r][used[r]], ids[r][pos[r][used[r]]])
    new = np.asarray(out["input_ids"])
    np.testing.assert_array_equal(new[~chosen], ids[~chosen])
    n = chosen.sum()
    frac_mask = (new[chosen] == 103).sum() / n
    frac_same = (new[chosen] == ids[chosen]).sum() / n
    assert abs(frac_mask - 0.8) < 0.03 and abs(frac_same - 0.1) < 0.02  # 80 / 10 / 10 (n ≈ 4000)
    # fresh masks with a fresh key, the same ones with the same key
    again = lm.mask_tokens(jax.random.key(1), ids, mask, **KW)
    other = lm.mask_tokens(jax.random.key(2), ids, mask, **KW)
    np.testing.assert_array_equal(np.asarray(again["chosen"]), chosen)
    assert (np.asarray(other["chosen"]) != chosen).any()


def test_whole_word_masking_takes_words_whole():
    ids, mask = _rows(b=64, t=64, seed=3)
    cont = np.zeros(30522, bool)
    cont[np.arange(15000, 30000)] = True  # ids >= 15000 play '##' pieces
    out = lm.mask_tokens(jax.random.key(0), ids, mask, continuation=jnp.asarray(cont), **KW)
    chosen = np.asarray(out["chosen"])
    cand = (mask > 0) & ~np.isin(ids, [101, 102, 0])
    n_pred = np.clip(np.round(cand.sum(1) * 0.15), 1, 20)
    assert (chosen.sum(1) <= n_pred).all()
    for r in range(len(ids)):
        start = ~cont[ids[r]] | ~cand[r]
        word = np.cumsum(start) - 1
        for w in np.unique(word[chosen[r]]):
            members = (word == w) & cand[r]
            assert chosen[r][members].all(), "a chosen word must be chosen whole"
        # BERT skips only the words that would overflow: every word left out is too long for the room left
        room = n_pred[r] - chosen[r].sum()
        left = [((word == w) & cand[r]).sum() for w in np.unique(word[cand[r] & ~chosen[r]])]
        assert all(n > room for n in left), (r, room, left)


# ------------------------------------------------------------------------------------- model scoring
@pytest.fixture(scope="module")
def tiny_mlm(tiny_bert_dir):
    from ftlab.checkpoint import load_base
    from ftlab.models import build_model, init_params

    base = load_base(tiny_bert_dir)
    model = build_model(base.config, "masked_lm")
    params, fresh = init_params(model, jax.random.key(0), base.params, jnp.ones((1, 8), jnp.int32))
    assert fresh and all(p.startswith("head/predictions/") for p in fresh)  # the new MLM head
    return base, model, {"params": params}


def test_positions_head_equals_full_head(tiny_mlm):
    base, model, variables = tiny_mlm
    ids, mask = _rows(b=4, t=32)
    full = model.apply(variables, ids, attention_mask=mask)
    pos = np.array([[1, 5, 9], [2, 3, 4], [30, 0, 7], [8, 8, 1]], np.int32)
    part = model.apply(variables, ids, attention_mask=mask, positions=pos)
    np.testing.assert_allclose(np.asarray(part), np.take_along_axis(np.asarray(full), pos[..., None], 1), atol=1e-5)


def test_pseudo_perplexity_equals_brute_force(tiny_mlm):
    base, model, variables = tiny_mlm
    docs = ["a fine film", "the plot was thin but the acting was fun"]
    got = lm.pseudo_perplexity(model, variables, docs, base.tokenizer, batch_size=8, progress=False)
    total, n = 0.0, 0
    for d in docs:  # Salazar et al.: mask each token alone, score the original
        ids = base.tokenizer(d)["input_ids"]
        for p in range(1, len(ids) - 1):
            x = np.array([ids], np.int32)
            x[0, p] = base.tokenizer.mask_token_id
            logits = np.asarray(model.apply(variables, x))[0, p]
            total += float(jax.nn.log_softmax(logits)[ids[p]])
            n += 1
    assert got["tokens"] == n
    assert math.isclose(got["pseudo_perplexity"], math.exp(-total / n), rel_tol=1e-4)


def test_causal_perplexity_equals_brute_force():
    from transformers import AutoTokenizer

    from ftlab.models import build_model, init_params
    from ftlab.models.configs import LlamaConfig

    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = build_model(cfg, "causal_lm")
    params, _ = init_params(model, jax.random.key(0), {}, jnp.ones((1, 8), jnp.int32))
    from conftest import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    docs = ["a fine film", "the plot was thin"]
    got = lm.perplexity(model, {"params": params}, docs, tok, batch_size=2, progress=False)
    total = n = 0
    for d in docs:
        ids = [tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"]
        logits = np.asarray(model.apply({"params": params}, np.array([ids], np.int32)))[0]
        lp = jax.nn.log_softmax(logits)
        total -= sum(float(lp[t, ids[t + 1]]) for t in range(len(ids) - 1))
        n += len(ids) - 1
    assert got["tokens"] == n and math.isclose(got["perplexity"], math.exp(total / n), rel_tol=1e-4)


# ------------------------------------------------------------------------------------------- the loop
def _lm_cfg(tiny_bert_dir, docs_path, **extra):
    cfg = config_lib.load(os.path.join(REPO, "configs", "imdb_mlm.py:dapt"))
    overrides = [f"model.name={tiny_bert_dir}", f"lm.train={docs_path}", "lm.heldout=8", "lm.max_documents=0",
                 "lm.block_size=32", "train.batch_size=8", "train.max_steps=6", "train.eval_every=3",
                 "train.log_every=1", "train.checkpoint_every=3", "train.progress=false", "optim.lr=1e-3",
                 "train.eval_batch_size=16"]
    return config_lib.apply_overrides(cfg, overrides + [f"{k}={v}" for k, v in extra.items()])


def test_mlm_stage_trains_and_reports_perplexity(tmp_path, tiny_bert_dir):
    from ftlab.train.loop import train_and_evaluate

    docs = [f"review {i}: the film was {'good' if i % 2 else 'bad'} and the actors were fine" for i in range(80)]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n")
    res = train_and_evaluate(_lm_cfg(tiny_bert_dir, str(path)), str(tmp_path / "run"))
    assert res["task"] == "mlm" and res["main_metric"] == "perplexity"
    evals = [json.loads(ln) for ln in open(tmp_path / "run" / "metrics.jsonl") if '"eval"' in ln]
    assert len(evals) == 2 and all(math.isclose(e["perplexity"], math.exp(e["loss"]), rel_tol=1e-6) for e in evals)
    assert evals[1]["loss"] < evals[0]["loss"] < math.log(30522)  # it learns the repeated text
    assert res["best_step"] == 6  # lower perplexity is better
    with pytest.raises(config_lib.ConfigError, match="unknown lm key"):
        lm.check_config({"mlm_probability": 0.2})


def test_minilm_mlm_is_minilm_with_the_shipped_head(tmp_path, monkeypatch):
    """model.name=minilm-mlm: the released MiniLM + ftlab's trained MLM head; the head's base hash is checked."""
    from ftlab.checkpoint import hf, load_base
    from ftlab.models import build_model, init_params

    base, plain = load_base("minilm-mlm"), load_base("minilm")
    info = json.load(open(os.path.join(REPO, "ftlab", "assets", "minilm_mlm_head", "head.json")))
    assert info["base_hash"] == plain.hash and base.hash != plain.hash
    assert "newly trained" in info["trained_by"]
    model = build_model(base.config, "masked_lm")
    _, fresh = init_params(model, jax.random.key(0), base.params, jnp.ones((1, 8), jnp.int32))
    assert fresh == []  # every head leaf comes from the shipped head
    monkeypatch.setitem(hf.HEAD_ADDONS, "tiny-mlm", ("minilm", "nowhere"))
    with pytest.raises(FileNotFoundError):
        load_base("tiny-mlm")


@pytest.mark.slow
def test_clm_stage_on_smollm2(tmp_path, hf_offline):
    """A causal-LM stage of the real SmolLM2 through the loop: next-token loss on packed rows, perplexity."""
    from ftlab.train.loop import train_and_evaluate

    path = tmp_path / "docs.txt"
    path.write_text("\n".join(f"Review {i}: the film was {'good' if i % 2 else 'bad'}." for i in range(60)) + "\n")
    cfg = config_lib.load(os.path.join(REPO, "configs", "imdb_clm.py"))
    cfg = config_lib.apply_overrides(cfg, [f"lm.train={path}", "lm.heldout=6", "lm.max_documents=0",
                                           "lm.block_size=32", "train.batch_size=2", "train.max_steps=4",
                                           "train.eval_every=2", "train.log_every=2", "train.checkpoint_every=0",
                                           "train.progress=false", "optim.lr=1e-4", "train.export_delta=none"])
    res = train_and_evaluate(cfg, str(tmp_path / "run"))
    evals = [json.loads(ln) for ln in open(tmp_path / "run" / "metrics.jsonl") if '"eval"' in ln]
    assert res["task"] == "clm" and len(evals) == 2
    assert evals[1]["perplexity"] < evals[0]["perplexity"]


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_fused_causal_lm_loss_equals_the_logits_path(method):
    """A tied causal-LM head trains through `losses.causal_lm_fused` (the loss and its gradients taken chunk by
    chunk, never the [B, T, V] logits): loss and every trainable gradient equal `losses.compute('causal_lm')`
    over the model's logits, for full fine-tuning (the tied table's gradient), LoRA (table frozen: its gradient
    is not formed) and a soft prompt (hidden states sliced past the prompt); chunk sizes that do not divide B·T
    are padded with weight-0 rows."""
    from ftlab import deltas, tree
    from ftlab.models import LlamaConfig, build_model
    from ftlab.train import losses
    from ftlab.train import step as step_lib

    cfg = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = build_model(cfg, "causal_lm")
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 97, size=(3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[2, 7:] = 0
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
             "labels": jnp.asarray(np.where(mask == 1, ids, -100)), "example_mask": jnp.asarray([1.0, 1.0, 1.0])}
    mod = deltas.get(method)
    c = deltas.check_config(mod, {"num_virtual_tokens": 3} if method == "prompt" else {})
    delta = mod.init(jax.random.key(1), params, c)
    train, fixed = tree.split(delta, mod.trainable(delta))
    fused = step_lib.make_loss_fn(model, mod, "causal_lm")
    plain = step_lib.make_loss_fn(model, mod, "causal_lm", loss=lambda lg, b, s: losses.compute("causal_lm", lg, b))
    key = jax.random.key(2)
    (v1, a1), g1 = jax.value_and_grad(fused, has_aux=True)(train, fixed, params, batch, key)
    (v2, a2), g2 = jax.value_and_grad(plain, has_aux=True)(train, fixed, params, batch, key)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    assert float(a1["weight"]) == float(a2["weight"]) == float(mask[:, 1:].sum())
    for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # the bare function: every chunk size, weights and labels outside the vocabulary where the weight is 0
    h = jnp.asarray(rng.normal(size=(13, 16)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(97, 16)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 97, size=13), jnp.int32)
    w = jnp.asarray(rng.uniform(size=13) * (np.arange(13) != 4), jnp.float32)
    def want(h, t):
        logits = h @ t.T
        return jnp.sum(w * (jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]))

    gw = jax.grad(want, argnums=(0, 1))(h, table)
    for chunk in (1, 5, 13, 256):
        f = lambda h, t, chunk=chunk: losses.fused_lm_nll_sum(h, t, labels, w, chunk)
        np.testing.assert_allclose(f(h, table), want(h, table), rtol=1e-6)
        for x, y in zip(jax.jit(jax.grad(f, argnums=(0, 1)))(h, table), gw, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
