"""Label-word scorers (ftlab/train/prompting.py) against Hugging Face PyTorch on small random configs:
cloze scores from `BertForMaskedLM` (single- and multi-token label words), causal scores from
`LlamaForCausalLM` (right- and left-padded batches), the KV-cached shared prefix of in-context prompting, and
prompt-based fine-tuning through the training loop (tiny models, a K-shot split)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import minilm_dir

from ftlab.checkpoint import load_base
from ftlab.data.batching import batches
from ftlab.models import build_model, init_params
from ftlab.prompts import encode_prompts, fill
from ftlab.prompts.encode import demonstrations, start_tokens
from ftlab.train import prompting

SENTS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés",
         "it's a charming and often affecting journey.", "unflinchingly bleak and desperate"]
EXAMPLES = [{"text_a": s, "text_b": None, "label": i % 2, "source": f"t:{i}"} for i, s in enumerate(SENTS)]
TEMPLATE = "{sentence} It was {mask}."


def _perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _one_batch(enc, n=8):
    (b,) = list(batches(enc, n, shuffle=False, seed=0, epoch=0, pad_id=0, pad_to_multiple_of=8,
                        drop_remainder=False, pad_final=True))
    return b


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory, hf_offline):
    d = tmp_path_factory.mktemp("tiny_mlm")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128)
    hf = transformers.BertForMaskedLM(cfg).eval()
    _perturb(hf)
    hf.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm_dir(), f)):
            shutil.copy(os.path.join(minilm_dir(), f), d / f)
    return str(d), hf


@pytest.fixture(scope="module")
def smol_tok(hf_offline):
    return load_base("smollm2").tokenizer


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smol_tok):
    d = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(smol_tok), hidden_size=64, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    _perturb(hf)
    hf.tie_weights()
    hf.save_pretrained(d)
    smol_tok.save_pretrained(d)
    return str(d), hf


def _ftlab(path, head):
    base = load_base(path)
    model = build_model(base.config, head)
    params, fresh = init_params(model, jax.random.key(0), base.params, np.zeros((1, 4), np.int32))
    assert fresh == []
    return base, model, {"params": params}


def test_cloze_scores_match_hf_bert_mlm(bert_mlm):
    path, hf = bert_mlm
    base, model, variables = _ftlab(path, "masked_lm")
    tok = base.tokenizer
    verbalizer = {"0": "unwatchable", "1": "great"}  # multi-token and single-token words
    enc = encode_prompts(EXAMPLES, tok, TEMPLATE, verbalizer, ("0", "1"), 64, "cloze")
    batch = _one_batch(enc)
    got = prompting.score_batch(model, variables, batch, 2)[: len(EXAMPLES)]
    # The LM head ran at each row's read positions only (the mask slots); at every position it scores the same.
    assert 1 < batch["positions"].shape[1] < batch["input_ids"].shape[1]
    everywhere = prompting.score_batch(model, variables, {k: v for k, v in batch.items() if k != "positions"}, 2)
    np.testing.assert_allclose(everywhere[: len(EXAMPLES)], got, atol=1e-5)
    # Reference, independent of the encoder's target arrays: one text per label with n [MASK]s for its word.
    want = np.zeros_like(got)
    for i, e in enumerate(EXAMPLES):
        for c, word in enumerate(["unwatchable", "great"]):
            wids = tok(word, add_special_tokens=False)["input_ids"]
            text = fill(TEMPLATE, e, " ".join([tok.mask_token] * len(wids)))
            ids = torch.tensor([tok(text)["input_ids"]])
            with torch.no_grad():
                logp = torch.log_softmax(hf(ids).logits[0], -1)
            where = (ids[0] == tok.mask_token_id).nonzero()[:, 0]
            want[i, c] = np.mean([logp[p, w].item() for p, w in zip(where, wids, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_causal_scores_match_hf_llama_right_and_left_padded(tiny_llama, smol_tok):
    path, hf = tiny_llama
    base, model, variables = _ftlab(path, "causal_lm")
    verbalizer = {"0": "terrible", "1": "great"}
    enc = encode_prompts(EXAMPLES, smol_tok, TEMPLATE, verbalizer, ("0", "1"), 64, "causal")
    batch = _one_batch(enc)
    got = prompting.score_batch(model, variables, batch, 2)[: len(EXAMPLES)]
    want = np.zeros_like(got)
    for i, e in enumerate(EXAMPLES):
        for c, word in enumerate(["terrible", "great"]):
            prefix = fill(TEMPLATE, e, "\0").split(" \0")[0]  # the text before the slot
            ctx = start_tokens(smol_tok) + smol_tok(prefix, add_special_tokens=False)["input_ids"]
            cont = smol_tok(" " + word + ".", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(hf(ids).logits[0], -1)
            want[i, c] = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    np.testing.assert_allclose(got, want, atol=1e-4)

    # Left padding: shift every row right by its padding, positions = cumsum(mask) - 1.
    left = {k: np.array(v) for k, v in batch.items()}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n_pad = ids.shape[1] - mask.sum(1)
    for r in range(ids.shape[0]):
        left["input_ids"][r] = np.roll(ids[r], n_pad[r])
        left["attention_mask"][r] = np.roll(mask[r], n_pad[r])
    left["position_ids"] = np.maximum(np.cumsum(left["attention_mask"], 1) - 1, 0).astype(np.int32)
    left["choice_pos"] = batch["choice_pos"] + n_pad[batch["choice_row"]][..., None]
    left["positions"] = batch["positions"] + n_pad[:, None]
    got_left = prompting.score_batch(model, variables, left, 2)[: len(EXAMPLES)]
    np.testing.assert_allclose(got_left, got, atol=1e-4)


def test_cached_prefix_equals_full_sequence(tiny_llama, smol_tok):
    path, _ = tiny_llama
    base, model, variables = _ftlab(path, "causal_lm")
    verbalizer = {"0": "terrible", "1": "great"}
    prefix, kept = demonstrations(EXAMPLES[:3], smol_tok, TEMPLATE, verbalizer, ("0", "1"), 0, 200)
    assert kept == 3
    enc = encode_prompts(EXAMPLES, smol_tok, TEMPLATE, verbalizer, ("0", "1"), 48, "causal")
    batch = _one_batch(enc)
    cache = prompting.prefill(model, variables, np.asarray(prefix[:-1], np.int32), len(prefix) - 1 + 48)
    got = prompting.score_with_prefix(model, variables, cache, len(prefix) - 1, prefix[-1], batch, 2)
    # Reference: the prefix written in front of every row (row start token -> the prefix's last token).
    full = dict(batch)
    p = len(prefix) - 1
    ids = np.concatenate([np.tile(np.asarray(prefix[:-1], np.int32), (batch["input_ids"].shape[0], 1)),
                          batch["input_ids"]], 1)
    ids[:, p] = np.where(batch["attention_mask"][:, 0] > 0, prefix[-1], ids[:, p])
    full["input_ids"] = ids
    full["attention_mask"] = np.concatenate([np.ones((ids.shape[0], p), np.int32), batch["attention_mask"]], 1)
    full["choice_pos"] = batch["choice_pos"] + p
    full["positions"] = batch["positions"] + p
    want = prompting.score_batch(model, variables, full, 2)
    keep = batch["example_mask"] > 0
    np.testing.assert_allclose(got[keep], want[keep], atol=1e-4)


def test_loss_is_ce_over_label_scores():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)  # B=2, R=1, T=5, V=11
    batch = {"choice_row": np.array([[0, 0], [1, 1]]), "choice_pos": np.array([[[3]], [[2]]]).repeat(2, 1),
             "choice_tok": np.array([[[4], [7]], [[4], [7]]]), "choice_w": np.ones((2, 2, 1), np.float32),
             "choice_label": np.array([[0, 1], [0, 1]]), "labels": np.array([1, 0]),
             "example_mask": np.ones(2, np.float32)}
    z = np.asarray(prompting.label_scores(logits, batch, 2))
    lp = np.asarray(jax.nn.log_softmax(logits, -1))
    np.testing.assert_allclose(z, [[lp[0, 3, 4], lp[0, 3, 7]], [lp[1, 2, 4], lp[1, 2, 7]]], rtol=1e-6)
    loss, _ = prompting.make_loss(2)(logits, batch, 0)
    ce = -np.mean([z[0, 1] - np.logaddexp(*z[0]), z[1, 0] - np.logaddexp(*z[1])])
    np.testing.assert_allclose(float(loss), ce, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_fixture, scorer, demos", [("tiny_llama", "causal", "none"),
                                                          ("bert_mlm", "cloze", "none"),
                                                          ("bert_mlm", "cloze", "similar")])
def test_prompt_finetuning_through_the_loop(model_fixture, scorer, demos, request, shared_data, tmp_path):
    from ftlab.train.loop import default_config, train_and_evaluate

    path, _ = request.getfixturevalue(model_fixture)
    cfg = default_config()
    cfg.model.name = path
    cfg.task.update(name="sst2", data_dir=shared_data, kshot="4-13", max_length=48, eval_split="dev")
    cfg.prompt.update(pattern="sst2:0", scorer=scorer, demos=demos, demo_sets=2)
    if demos != "none":
        cfg.task.max_length = 96
    cfg.train.update(max_steps=3, batch_size=4, eval_batch_size=8, log_every=1, checkpoint_every=0,
                     progress=False, export_delta="none")
    cfg.optim.lr = 1e-3
    res = train_and_evaluate(cfg, str(tmp_path / "run"))
    assert res["train_examples"] == 8 and 0.0 <= res["metrics"]["accuracy"] <= 1.0
    logged = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(np.isfinite(x["loss"]) for x in logged if x["kind"] == "train")
    head = build_model(load_base(path).config, prompting.HEADS[scorer]).head
    assert head in ("causal_lm", "masked_lm")


@pytest.mark.slow
def test_fewshot_script_zero_shot_and_in_context(tiny_llama, shared_data, tmp_path):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("fewshot", os.path.join(REPO, "scripts", "fewshot.py"))
    fewshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fewshot)
    path, _ = tiny_llama
    common = ["--task", "sst2", "--model", path, "--data-dir", shared_data, "--limit", "6", "--batch-size", "4",
              "--max-length", "48"]
    zs = fewshot.main(["--mode", "zero_shot", *common])
    assert zs["n"] == 6 and 0 <= zs["accuracy"] <= 1 and sum(zs["predicted"].values()) == 6
    icl = fewshot.main(["--mode", "in_context", "--kshot", "4-13", "--max-context", "256", *common,
                        "--out", str(tmp_path / "r.json")])
    assert icl["demonstrations"] == 8 and icl["prefix_tokens"] <= 256 - 48
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == icl["accuracy"]

    # Calibration: the content-free inputs go through the same path as the examples (same template, same
    # demonstrations' prefix). With the first example's own sentence as the only "content-free" text, p_cf must be
    # that example's label distribution, and calibrating it leaves it uniform.
    from ftlab.tasks import get_task, kshot

    first = kshot.read(get_task("sst2"), "test", shared_data, "4-13")[0]["text_a"]
    for mode, extra in (("zero_shot", []), ("in_context", ["--kshot", "4-13", "--max-context", "256"])):
        out = fewshot.main(["--mode", mode, *extra, *common[:-6], "--limit", "1", "--batch-size", "4",
                            "--max-length", "48", "--calibrate", "--content-free", first,
                            "--scores-out", str(tmp_path / "s.npz")])
        z = np.load(tmp_path / "s.npz")["scores"]
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(out["calibrated"]["p_cf"], p[0], atol=2e-6)
    cal = fewshot.main(["--mode", "zero_shot", *common, "--calibrate", "--scores-out", str(tmp_path / "s.npz")])
    z = np.load(tmp_path / "s.npz")["scores"]
    assert z.shape == (6, 2) and np.argmax(z, -1).tolist().count(1) == cal["predicted"]["1"]
    assert cal["calibrated"]["content_free"] == ["N/A", "", "[MASK]"]
    assert abs(sum(cal["calibrated"]["p_cf"]) - 1) < 1e-5 and sum(cal["calibrated"]["predicted"].values()) == 6
    with pytest.raises(SystemExit, match="calibrate"):
        fewshot.main(["--mode", "generate", *common, "--calibrate"])


def test_contextual_calibration_is_the_papers_rule():
    """Zhao et al. 2021: q = softmax(W p + b), W = diag(p_cf)^-1, b = 0, p_cf the mean label distribution of the
    content-free inputs; its argmax is what `calibrate` predicts, and W p is what it returns (renormalised)."""
    rng = np.random.default_rng(0)
    z, cf = rng.normal(size=(50, 3)) * 3, rng.normal(size=(3, 3)) * 3
    soft = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)  # noqa: E731
    p, p_cf = soft(z), soft(cf).mean(0)
    q = soft(p @ np.diag(1 / p_cf))
    out, got_cf = prompting.calibrate(z, cf)
    np.testing.assert_allclose(got_cf, p_cf, rtol=1e-12)
    np.testing.assert_array_equal(np.argmax(out, -1), np.argmax(q, -1))
    wp = p / p_cf
    np.testing.assert_allclose(np.exp(out), wp / wp.sum(-1, keepdims=True), rtol=1e-10)
    # A content-free distribution that is already uniform changes nothing; scores of the content-free input itself
    # become uniform.
    np.testing.assert_allclose(prompting.calibrate(z, np.zeros((1, 3)))[0], np.log(p), atol=1e-12)
    np.testing.assert_allclose(np.exp(prompting.calibrate(cf[:1], cf[:1])[0]), 1 / 3, rtol=1e-10)
    assert [e["text_a"] for e in prompting.content_free_examples(("text_a",))] == ["N/A", "", "[MASK]"]
    with pytest.raises(ValueError, match="content-free"):
        prompting.calibrate(z, np.zeros((0, 3)))


def test_variant_scores_are_the_mean_of_the_versions():
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    exs = [dict(EXAMPLES[i // 2], demos=f"demo number {i}.") for i in range(4)]
    t = "{sentence} It was {mask}. {demos}"
    sep = encode_prompts(exs, tok, t, "0=unwatchable|1=great", ("0", "1"), 48, "cloze")
    merged = encode_prompts(exs, tok, t, "0=unwatchable|1=great", ("0", "1"), 48, "cloze", variants=2)
    rng = np.random.default_rng(0)
    emb, proj = rng.normal(size=(len(tok), 4)), rng.normal(size=(4, len(tok)))
    # logits of a "model" at the batch's read positions, as the LM head returns them given positions=
    fake = lambda b: jnp.asarray(emb[np.take_along_axis(b["input_ids"], b["positions"], 1)] @ proj,  # noqa: E731
                                 jnp.float32)
    bs, bm = _one_batch(sep, 4), _one_batch(merged, 2)
    zs = np.asarray(prompting.label_scores(fake(bs), bs, 2))
    zm = np.asarray(prompting.label_scores(fake(bm), bm, 2))
    np.testing.assert_allclose(zm, (zs[0::2] + zs[1::2]) / 2, rtol=1e-5)


def test_minilm_embeddings_rank_paraphrases_first(hf_offline):
    e = prompting.embed_sentences(["a great movie", "an excellent film", "the stock market fell sharply"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_pet_soft_labels_and_distillation_loss():
    a, b = np.array([[2.0, 0.0]]), np.array([[0.0, 4.0]])
    soft = prompting.pet_soft_labels([a, b], weights=[3.0, 1.0], temperature=2.0)
    avg = (3 * a + b) / 4 / 2  # [[0.75, 0.5]]
    np.testing.assert_allclose(soft, np.exp(avg) / np.exp(avg).sum(), rtol=1e-6)
    np.testing.assert_allclose(prompting.pet_soft_labels([a], temperature=1.0), [[0.880797, 0.119203]], rtol=1e-5)
    with pytest.raises(ValueError, match="non-negative"):
        prompting.pet_soft_labels([a, b], weights=[0.0, 0.0])
    logits = np.array([[1.0, -1.0], [0.0, 0.0]], np.float32)
    batch = {"soft_labels": np.array([[0.5, 0.5], [0.9, 0.1]], np.float32), "example_mask": np.array([1.0, 0.0])}
    loss, aux = prompting.distillation_loss(logits, batch, temperature=2.0)
    p = np.exp([0.5, -0.5]) / np.exp([0.5, -0.5]).sum()
    want = 4 * np.sum(0.5 * (np.log(0.5) - np.log(p)))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(aux["weight"]) == 1.0
