"""T5 (ftlab/models/t5.py) against Hugging Face PyTorch `T5ForConditionalGeneration` on small random configs:
logits on padded encoder and decoder batches (ReLU and gated-GELU feed-forward, tied and untied LM head, few
relative-position buckets so the logarithmic bins are used), the export round trip, KV-cached greedy
generation against HF `generate`, checkpoint errors, bfloat16 compute, LoRA and IA³ on T5, the text-to-text
label scores (seq2seq scorer) and generate-and-map evaluation, and prompt-based fine-tuning of T5 through the
training loop (`ftlab train` / `ftlab eval` / `ftlab export`)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from ftlab import tree
from ftlab.checkpoint import CheckpointError, export_hf, load_base
from ftlab.models import build_model, init_params
from ftlab.models.generate import generate_seq2seq

V, B, S, T = 99, 3, 11, 7

T5 = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1, dropout_rate=0.1)
CASES = {
    "relu_tied": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "gated_gelu_untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # 8 buckets up to distance 12: the logarithmic bins (and the clamp to the last bucket) on short inputs.
    "gated_gelu_tied_few_buckets": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=True,
                                        relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                        num_decoder_layers=3),
    "relu_untied_few_buckets": dict(feed_forward_proj="relu", tie_word_embeddings=False,
                                    relative_attention_num_buckets=6, relative_attention_max_distance=9),
}


def _save_t5(folder, overrides: dict, seed: int = 0) -> None:
    """A random HF T5ForConditionalGeneration saved like a checkpoint, every weight perturbed away from HF's
    init; untied: a separate lm_head written next to `shared` (transformers v5 keeps the two tied in memory)."""
    torch.manual_seed(seed)
    cfg = transformers.T5Config(**{**T5, **overrides})
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    cfg_d = json.loads((folder / "config.json").read_text())
    if not overrides.get("tie_word_embeddings", True):
        rng = np.random.default_rng(seed)
        tensors["lm_head.weight"] = rng.normal(size=tensors["shared.weight"].shape).astype(np.float32)
        cfg_d["tie_word_embeddings"] = False
        cfg_d.pop("scale_decoder_outputs", None)  # as a transformers v4 / original Flan-T5 config.json
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg_d))


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, V, size=(B, S)).astype(np.int32)
    mask = np.ones((B, S), np.int32)
    mask[1, -4:] = 0
    mask[2, -1:] = 0
    ids[mask == 0] = 0
    dec = rng.integers(2, V, size=(B, T)).astype(np.int32)
    dec[:, 0] = 0
    dmask = np.ones((B, T), np.int32)
    dmask[0, -2:] = 0
    dec[dmask == 0] = 0
    return ids, mask, dec, dmask


def _hf_logits(model, ids, mask, dec, dmask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long), decoder_attention_mask=torch.tensor(dmask))
    return out.logits.numpy()


def _ftlab(folder):
    base = load_base(folder)
    model = build_model(base.config, "seq2seq_lm")
    params, fresh = init_params(model, jax.random.key(0), base.params, np.zeros((1, 4), np.int32))
    assert fresh == [], fresh
    return base, model, params


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory, hf_offline):
    out = {}
    for i, (name, overrides) in enumerate(CASES.items()):
        d = tmp_path_factory.mktemp(name)
        _save_t5(d, overrides, seed=i)
        out[name] = d
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_t5_parity_and_export_round_trip(name, t5_dirs, tmp_path):
    folder = t5_dirs[name]
    ref_model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    tied = CASES[name]["tie_word_embeddings"]
    assert (ref_model.lm_head.weight.data_ptr() == ref_model.shared.weight.data_ptr()) == tied
    ids, mask, dec, dmask = _inputs()
    ref = _hf_logits(ref_model, ids, mask, dec, dmask)

    base, model, params = _ftlab(folder)
    assert base.family == "t5" and base.config.tie_word_embeddings == tied
    assert base.config.scale_decoder_outputs == tied
    assert ("head" in params) == (not tied)
    out = np.asarray(model.apply({"params": params}, ids, mask, dec, dmask))
    assert out.shape == ref.shape == (B, T, V)
    real = dmask.astype(bool)
    diff = float(np.abs(out - ref)[real].max())
    print(f"\n[parity] t5 {name}: max|Δ| = {diff:.2e} (max|logit| {np.abs(ref[real]).max():.1f})")
    assert diff <= 1e-4, diff
    # Dropout is live only when deterministic=False (HF dropout_rate=0.1).
    drop = model.apply({"params": params}, ids, mask, dec, dmask, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(np.asarray(drop), out)

    export_hf(params, base.config, tmp_path / "export", head="seq2seq_lm")
    back, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    # Same weights in the same framework: HF on the export equals HF on the original file.
    diff_rt = float(np.abs(_hf_logits(back.eval(), ids, mask, dec, dmask) - ref)[real].max())
    print(f"[export] t5 {name}: max|Δ| HF(export) vs HF(original) = {diff_rt:.2e}")
    assert diff_rt <= 1e-6, diff_rt
    # ... and ftlab reads its own export back to the same parameters.
    again = load_base(tmp_path / "export")
    assert again.hash == base.hash and again.config.tie_word_embeddings == tied


@pytest.mark.parametrize("name", ["relu_tied", "gated_gelu_untied"])
def test_t5_cached_greedy_generation_equals_hf_generate(name, t5_dirs):
    folder = t5_dirs[name]
    ref_model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    ids, mask, _, _ = _inputs(seed=3)
    n = 9
    with torch.no_grad():
        hf = ref_model.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=0).numpy()
    assert (hf[:, 0] == 0).all()  # HF returns decoder_start_token_id first
    hf = hf[:, 1:]
    base, model, params = _ftlab(folder)
    got = generate_seq2seq(model, params, ids, mask, max_new_tokens=n)
    assert got.shape == (B, n)
    # HF stops once every row has emitted eos; the rest of ours is pad (0) after each row's eos.
    np.testing.assert_array_equal(got[:, : hf.shape[1]], hf)
    assert (got[:, hf.shape[1]:] == 0).all()
    print(f"\n[generate] t5 {name}: {got.tolist()}")
    # A token the model does emit as eos: rows stop there and are padded, as in HF.
    eos = int(got[1, 1])
    with torch.no_grad():
        hf = ref_model.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                do_sample=False, num_beams=1, max_new_tokens=n, eos_token_id=eos,
                                pad_token_id=0).numpy()[:, 1:]
    got = generate_seq2seq(model, params, ids, mask, max_new_tokens=n, eos_token_id=eos)
    assert (got == eos).any(axis=1)[1] and got[1, 2:].tolist() == [0] * (n - 2)
    np.testing.assert_array_equal(got[:, : hf.shape[1]], hf)
    assert (got[:, hf.shape[1]:] == 0).all()


def test_t5_checkpoint_errors(t5_dirs, tmp_path):
    src = t5_dirs["relu_tied"]
    tensors = load_file(str(src / "model.safetensors"))
    cfg = (src / "config.json").read_text()

    def write(name, t):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(cfg)
        save_file(t, str(d / "model.safetensors"))
        return d

    missing = {k: v for k, v in tensors.items() if k != "decoder.block.1.layer.1.EncDecAttention.k.weight"}
    with pytest.raises(CheckpointError, match=r"decoder\.block\.1\.layer\.1\.EncDecAttention\.k\.weight"):
        load_base(write("missing", missing))
    with pytest.raises(CheckpointError, match=r"unused tensor 'encoder\.block\.0\.layer\.0\.SelfAttention\.x\.weight'"):
        load_base(write("unused", {**tensors, "encoder.block.0.layer.0.SelfAttention.x.weight": np.ones((4, 4),
                                                                                                       np.float32)}))
    shaped = dict(tensors)
    shaped["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = np.ones((47, 32), np.float32)
    with pytest.raises(CheckpointError, match=r"DenseReluDense\.wi\.weight.*shape \(47, 32\)"):
        load_base(write("shape", shaped))
    alias = {**tensors, "encoder.embed_tokens.weight": tensors["shared.weight"] + 1.0}
    with pytest.raises(CheckpointError, match=r"encoder\.embed_tokens\.weight.*differs from 'shared\.weight'"):
        load_base(write("alias", alias))
    # Copies equal to `shared` and the cross-attention bias old files carry load fine (transformers ignores it).
    fine = {**tensors, "decoder.embed_tokens.weight": tensors["shared.weight"],
            "lm_head.weight": tensors["shared.weight"],
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight": np.ones((32, 4), np.float32)}
    base = load_base(write("fine", fine))
    assert base.config.tie_word_embeddings and "head" not in base.params
    untied_cfg = json.loads(cfg)
    untied_cfg["tie_word_embeddings"] = False
    d = write("untied_no_head", tensors)
    (d / "config.json").write_text(json.dumps(untied_cfg))
    with pytest.raises(CheckpointError, match="no 'lm_head.weight'"):
        load_base(d)


def test_t5_bfloat16_close_to_float32(t5_dirs):
    import dataclasses

    base, model, params = _ftlab(t5_dirs["gated_gelu_untied"])
    ids, mask, dec, dmask = _inputs()
    f32 = np.asarray(model.apply({"params": params}, ids, mask, dec, dmask))
    bf16_model = build_model(dataclasses.replace(base.config, dtype="bfloat16"), "seq2seq_lm")
    bf16 = np.asarray(bf16_model.apply({"params": params}, ids, mask, dec, dmask))
    assert bf16.dtype == np.float32
    real = dmask.astype(bool)
    rel = np.abs(bf16 - f32)[real].max() / np.abs(f32[real]).max()
    print(f"\n[bf16] t5 max|Δ| / max|logit| = {rel:.3f}")
    assert 0 < rel < 0.05
    assert (np.argmax(bf16, -1) == np.argmax(f32, -1))[real].mean() > 0.9


def test_lora_and_ia3_on_t5(t5_dirs):
    """LoRA on T5's default targets (q, v of every self- and cross-attention, PEFT's default) equals the merged
    W + s·A·B; LoRA and IA³ are the identity at init."""
    from ftlab import deltas

    base, model, params = _ftlab(t5_dirs["gated_gelu_untied"])
    ids, mask, dec, dmask = _inputs()
    ref = np.asarray(model.apply({"params": params}, ids, mask, dec, dmask))
    lora = deltas.get("lora")
    cfg = {**lora.DEFAULTS, "r": 4, "alpha": 8.0}
    delta = lora.init(jax.random.key(0), params, cfg)
    targets = sorted(lora.targets(params, cfg))
    assert len(targets) == 2 * 2 + 2 * 2 * 2  # encoder: 2 blocks × (q, v); decoder: 2 blocks × 2 attentions × (q, v)
    assert all(t.rsplit("/", 1)[-1] in ("q", "v") for t in targets)
    np.testing.assert_array_equal(np.asarray(model.apply(lora.apply(params, delta), ids, mask, dec, dmask)), ref)

    flat = tree.flatten(delta)
    rng = np.random.default_rng(0)
    for p in list(flat):
        if p.endswith("lora_b"):
            flat[p] = jnp.asarray(0.1 * rng.normal(size=flat[p].shape), jnp.float32)
    delta = tree.unflatten(flat)
    out = np.asarray(model.apply(lora.apply(params, delta), ids, mask, dec, dmask))
    merged = tree.flatten(params)
    s = cfg["alpha"] / cfg["r"]
    for t in targets:
        a, b = flat[f"delta/{t}/lora_a"], flat[f"delta/{t}/lora_b"]
        merged[f"{t}/kernel"] = merged[f"{t}/kernel"] + s * np.asarray(a) @ np.asarray(b)
    want = np.asarray(model.apply({"params": tree.unflatten(merged)}, ids, mask, dec, dmask))
    real = dmask.astype(bool)
    assert np.abs(out - ref)[real].max() > 1e-2  # the update matters
    diff = float(np.abs(out - want)[real].max())
    print(f"\n[lora] t5 LoRA vs merged W + sBA: max|Δ| = {diff:.2e}")
    assert diff <= 1e-4, diff

    ia3 = deltas.get("ia3")
    icfg = dict(ia3.DEFAULTS)
    kinds = ia3.targets(params, icfg)
    assert {p.rsplit("/", 1)[-1] for p in kinds} == {"k", "v", "wo"}
    assert all(leaf == ("ia3_in" if p.endswith("/wo") else "ia3_out") for p, (leaf, _) in kinds.items())
    np.testing.assert_array_equal(
        np.asarray(model.apply(ia3.apply(params, ia3.init(jax.random.key(0), params, icfg)), ids, mask, dec, dmask)),
        ref)
    for name in ("prompt", "prefix", "houlsby"):
        mod = deltas.get(name)
        with pytest.raises(ValueError, match="T5"):
            mod.init(jax.random.key(0), params, dict(mod.DEFAULTS))


# ---------------------------------------------------------------- text-to-text: seq2seq scorer, generate-and-map

SENTS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés",
         "it's a charming and often affecting journey.", "unflinchingly bleak and desperate",
         "one of the greatest family-oriented fantasy-adventure movies ever."]
EXAMPLES = [{"text_a": s, "text_b": None, "label": i % 2, "source": f"t:{i}"} for i, s in enumerate(SENTS)]
FLAN = "{sentence} Is this review good or bad? {mask}"


@pytest.fixture(scope="module")
def t5_wordpiece(tmp_path_factory, hf_offline):
    """A tiny random T5 (gated-GELU, tied) over MiniLM's WordPiece vocabulary, [SEP] as eos, saved with the
    tokenizer: the encoder input is [CLS] text [SEP] as a T5 input is text </s>."""
    import os
    import shutil

    from conftest import minilm_dir

    d = tmp_path_factory.mktemp("t5_wordpiece")
    _save_t5(d, dict(vocab_size=30522, feed_forward_proj="gated-gelu", tie_word_embeddings=True, eos_token_id=102,
                     dropout_rate=0.0), seed=7)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm_dir(), f)):
            shutil.copy(os.path.join(minilm_dir(), f), d / f)
    return d


WORDS = ((0, "bad"), (0, "unwatchable"), (1, "good"))  # a multi-token word, two words for label 0


def _hf_label_scores(folder, tok, examples, score_eos: bool = True, template: str = FLAN) -> np.ndarray:
    """Brute force [N, 2] from HF `T5ForConditionalGeneration` in `folder`: one teacher-forced forward per (example,
    word) of WORDS; a word's score is the sum of its tokens' (and eos 102's) log-probs, a label's the mean."""
    from ftlab.prompts import fill

    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    want = np.zeros((len(examples), 2), np.float32)
    for i, e in enumerate(examples):
        src = torch.tensor([tok(fill(template, e, ""))["input_ids"]])  # [CLS] text [SEP]
        per_label: dict[int, list[float]] = {0: [], 1: []}
        for c, word in WORDS:
            w = tok(word, add_special_tokens=False)["input_ids"]
            target = w + ([102] if score_eos else [])
            with torch.no_grad():
                logits = hf(input_ids=src, decoder_input_ids=torch.tensor([[0] + target[:-1]])).logits[0]
            logp = torch.log_softmax(logits, -1)
            per_label[c].append(sum(logp[j, t].item() for j, t in enumerate(target)))
        want[i] = [np.mean(per_label[0]), np.mean(per_label[1])]
    return want


def _batch(enc, n):
    from ftlab.data.batching import batches

    (b,) = list(batches(enc, n, shuffle=False, seed=0, epoch=0, pad_id=0, pad_to_multiple_of=8,
                        drop_remainder=False, pad_final=True))
    return b


@pytest.mark.parametrize("score_eos", [True, False])
def test_seq2seq_label_scores_equal_brute_force_hf(t5_wordpiece, score_eos):
    from ftlab.prompts import encode_seq2seq
    from ftlab.train import prompting

    base, model, params = _ftlab(t5_wordpiece)
    tok, cfg = base.tokenizer, base.config
    verbalizer = {"0": ["bad", "unwatchable"], "1": "good"}  # a multi-token word, two words for one label
    enc = encode_seq2seq(EXAMPLES, tok, FLAN, verbalizer, ("0", "1"), 64, cfg.decoder_start_token_id,
                         cfg.eos_token_id, score_eos=score_eos)
    batch = _batch(enc, 8)
    assert batch["decoder_input_ids"].shape[0] == 8 * 3 and batch["encoder_rows"][3] == 1
    got = prompting.score_batch(model, {"params": params}, batch, 2)[: len(EXAMPLES)]
    want = _hf_label_scores(t5_wordpiece, tok, EXAMPLES, score_eos)
    assert len(tok("unwatchable", add_special_tokens=False)["input_ids"]) > 1
    diff = float(np.abs(got - want).max())
    print(f"\n[seq2seq scores] score_eos={score_eos}: max|Δ| vs HF brute force = {diff:.2e}")
    assert diff <= 1e-4, diff

    # The loss is CE over these label scores and trains: a few SGD steps of LoRA lower it.
    from ftlab import deltas

    lora = deltas.get("lora")
    lcfg = {**lora.DEFAULTS, "r": 4, "train_head": False}
    delta = lora.init(jax.random.key(0), params, lcfg)
    loss_fn = prompting.make_loss(2)
    feed = {k: jnp.asarray(v) for k, v in batch.items()}

    @jax.jit
    def loss_of(d):
        logits = model.apply(lora.apply(params, d), feed["input_ids"], **prompting.model_inputs(feed))
        return loss_fn(logits, feed, 0)[0]

    mask = lora.trainable(delta)
    first = float(loss_of(delta))
    for _ in range(5):
        g = jax.grad(loss_of)(delta)
        delta = jax.tree_util.tree_map(lambda x, gx, m: x - 0.5 * gx if m else x, delta, g, mask)
    assert float(loss_of(delta)) < first


def test_read_label_hand_checked():
    from ftlab.train.generation_eval import NO_LABEL, read_label, stop_strings, word_labels

    words = word_labels({"0": ["terrible", "Bad"], "1": "great"}, ("0", "1"))
    assert words == {"terrible": 0, "bad": 0, "great": 1}
    stops = stop_strings("{sentence} It was {mask}.")
    assert stops == ["\n", "."]
    cases = {" great": 1, "Great.": 1, " TERRIBLE. The acting": 0, "bad\nreally": 0, " great movie": NO_LABEL,
             "greatness": NO_LABEL, "": NO_LABEL, " good": NO_LABEL}
    assert {t: read_label(t, words, stops) for t in cases} == cases
    assert stop_strings(FLAN) == ["\n"]
    with pytest.raises(ValueError, match="names labels"):
        word_labels({"0": "great", "1": "Great "}, ("0", "1"))


def test_generate_and_map_t5_equals_hf_generation(t5_wordpiece):
    """T5 generation mode against HF `generate` on the same encoder inputs, with a verbalizer built from what the
    model says for example 0 (-> label 1) and the first example that says something else (-> label 0); the
    others map to those labels when they say the same, else count as unmatched."""
    from ftlab.prompts import fill
    from ftlab.train.generation_eval import generate_and_map

    base, model, params = _ftlab(t5_wordpiece)
    tok = base.tokenizer
    hf = transformers.T5ForConditionalGeneration.from_pretrained(t5_wordpiece).eval()
    n_new = 3
    texts = []
    for e in EXAMPLES:
        src = torch.tensor([tok(fill(FLAN, e, ""))["input_ids"]])
        with torch.no_grad():
            out = hf.generate(input_ids=src, do_sample=False, num_beams=1, max_new_tokens=n_new).numpy()[0, 1:]
        out = [int(t) for t in out]
        out = out[: out.index(102)] if 102 in out else out
        texts.append(tok.decode(out, skip_special_tokens=True))
    j = next(k for k, t in enumerate(texts) if t != texts[0])  # the first example saying something else
    assert texts[0].strip() and texts[j].strip(), texts
    verbalizer = {"1": texts[0], "0": texts[j]}
    res = generate_and_map(model, {"params": params}, EXAMPLES, tok, FLAN, verbalizer, ("0", "1"), 64,
                           max_new_tokens=n_new, batch_size=4)
    assert res["generations"] == texts
    expect = [{texts[0].lower(): 1, texts[j].lower(): 0}.get(t.strip().lower(), -1) for t in texts]
    assert res["predictions"] == expect and (expect[0], expect[j]) == (1, 0)
    right = sum(p == e["label"] for p, e in zip(expect, EXAMPLES, strict=True))
    assert res["accuracy"] == right / len(EXAMPLES)
    assert res["unmatched"] == expect.count(-1) == res["predicted"]["(none)"]
    print(f"\n[generate-and-map] t5: {texts} -> {expect}")


def test_generate_and_map_causal_lm_equals_hf_generation(tmp_path, hf_offline):
    """The causal path (Llama): left-padded prompts = [CLS] + the template up to the slot; generations equal HF
    `generate` on each unpadded prompt, cut at the template's '.' after the slot."""
    import os
    import shutil

    from conftest import minilm_dir

    from ftlab.prompts import fill
    from ftlab.train.generation_eval import generate_and_map

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True, bos_token_id=101, eos_token_id=102, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm_dir(), f)):
            shutil.copy(os.path.join(minilm_dir(), f), tmp_path / f)
    base = load_base(tmp_path)
    tok = base.tokenizer
    model = build_model(base.config, "causal_lm")
    params, fresh = init_params(model, jax.random.key(0), base.params, np.zeros((1, 4), np.int32))
    assert fresh == []
    template = "{sentence} It was {mask}."
    texts = []
    for e in EXAMPLES:
        prompt = fill(template, e, "\0").split(" \0")[0]
        ids = torch.tensor([[101] + tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                              max_new_tokens=3, pad_token_id=0).numpy()[0, ids.shape[1]:]
        out = [int(t) for t in out]
        out = out[: out.index(102)] if 102 in out else out
        texts.append(tok.decode(out, skip_special_tokens=True).split("\n")[0].split(".")[0])
    j = next(k for k, t in enumerate(texts) if t.strip().lower() != texts[0].strip().lower())
    verbalizer = {"0": texts[0].strip(), "1": texts[j].strip()}
    res = generate_and_map(model, {"params": params}, EXAMPLES, tok, template, verbalizer, ("0", "1"), 48,
                           max_new_tokens=3, batch_size=4)
    assert [t.split("\n")[0].split(".")[0] for t in res["generations"]] == texts
    expect = [{texts[0].strip().lower(): 0, texts[j].strip().lower(): 1}.get(t.strip().lower(), -1) for t in texts]
    assert res["predictions"] == expect
    assert res["accuracy"] == sum(p == e["label"] for p, e in zip(expect, EXAMPLES, strict=True)) / len(EXAMPLES)
    assert res["unmatched"] == expect.count(-1)
    print(f"\n[generate-and-map] llama: {res['generations']} -> {expect}")


def test_fewshot_script_t5_zero_shot_and_generate(t5_wordpiece, shared_data, tmp_path):
    import importlib.util
    import os

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("fewshot", os.path.join(REPO, "scripts", "fewshot.py"))
    fewshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fewshot)
    common = ["--task", "sst2", "--model", str(t5_wordpiece), "--data-dir", shared_data, "--limit", "6",
              "--batch-size", "4", "--max-length", "48", "--progress", "0"]
    zs = fewshot.main(["--mode", "zero_shot", *common])
    assert zs["scorer"] == "seq2seq" and zs["n"] == 6 and sum(zs["predicted"].values()) == 6
    gen = fewshot.main(["--mode", "generate", *common, "--out", str(tmp_path / "g.json")])
    assert gen["n"] == 6 and sum(gen["predicted"].values()) == 6 and 0 <= gen["accuracy"] <= 1
    # A random model says neither "terrible" nor "great": every generation is unmatched and counted wrong.
    assert gen["unmatched"] == 6 and gen["accuracy"] == 0.0 and len(gen["unmatched_examples"]) == 5
    assert json.loads((tmp_path / "g.json").read_text())["unmatched"] == 6


# ---------------------------------------------------------------- training loop (ftlab train) + seq2seq scorer

LOOP_VERBALIZER = "0=bad/unwatchable|1=good"  # = WORDS


@pytest.fixture(scope="module")
def t5_untied(tmp_path_factory, hf_offline):
    """A tiny random T5 v1.1-style model (gated-GELU, untied LM head, no dropout) over MiniLM's WordPiece
    vocabulary with [SEP] as eos, saved with the tokenizer: the loop's base model."""
    import os
    import shutil

    from conftest import minilm_dir

    d = tmp_path_factory.mktemp("t5_untied")
    _save_t5(d, dict(vocab_size=30522, feed_forward_proj="gated-gelu", tie_word_embeddings=False, eos_token_id=102,
                     dropout_rate=0.0), seed=11)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm_dir(), f)):
            shutil.copy(os.path.join(minilm_dir(), f), d / f)
    return d


def _loop_config(folder, method: str, **delta_keys):
    """SST-2 (the copy shipped with ftlab), K-shot split 4-13 (8 train / 8 dev sentences), text-to-text prompt."""
    from ftlab.config import Config
    from ftlab.train.loop import default_config

    cfg = default_config()
    cfg.model.name = str(folder)
    cfg.task.update(name="sst2", kshot="4-13", max_length=48, eval_split="dev")
    cfg.prompt.update(template=FLAN, verbalizer=LOOP_VERBALIZER)
    cfg.delta = Config(method=method, **delta_keys)
    cfg.train.update(max_steps=6, batch_size=8, eval_batch_size=8, eval_every=6, log_every=1, checkpoint_every=0,
                     progress=False, export_delta="final", pad_to_multiple_of=16)
    cfg.optim.update(lr=1e-2, warmup_steps=0)
    return cfg


def test_t5_loop_config_errors(t5_untied, t5_wordpiece):
    """A T5 without a prompt has no classification head; settings the seq2seq path does not implement raise
    naming their key instead of being ignored; `frozen` on a tied T5 (no head parameter) has nothing to train."""
    from ftlab.config import ConfigError
    from ftlab.train import loop

    no_prompt = _loop_config(t5_untied, "lora")
    no_prompt.prompt.update(template="", verbalizer="")
    with pytest.raises(ConfigError, match=r"T5 encoder–decoder: ftlab has no sequence_classification head.*"
                                          r"prompt\.pattern"):
        loop.prepare(no_prompt)
    demos = _loop_config(t5_untied, "lora")
    demos.prompt.demos = "random"
    with pytest.raises(ValueError, match=r"prompt\.demos='random'.*seq2seq"):
        loop.prepare(demos)

    cfg = _loop_config(t5_untied, "lora", r=4)
    prep = loop.prepare(cfg)
    assert prep["model"].head == "seq2seq_lm" and prep["fresh_paths"] == []
    d = loop.init_delta(cfg, prep)
    for key, value, match in (("optim.llrd", 0.8, r"optim\.llrd=0\.8.*encoder and a decoder"),
                              ("reg.method", "r3f", r"reg\.method='r3f'.*T5")):
        bad = _loop_config(t5_untied, "lora", r=4)
        section, leaf = key.split(".")
        bad[section][leaf] = value
        with pytest.raises(ConfigError, match=match):
            loop.init_training(bad, prep["params"], d, 6, "classification")

    tied = _loop_config(t5_wordpiece, "frozen")
    with pytest.raises(ValueError, match=r"select no parameter"):
        loop.init_delta(tied, loop.prepare(tied))

    # prompt.slot_text: the encoder reads it in the {mask} slot (seq2seq only)
    tok = prep["base"].tokenizer
    cfg.prompt.slot_text = "[MASK]"
    _, enc = loop.encode_examples(cfg, prep["task"], tok, EXAMPLES[:2], "dev", prep["base"].config)
    assert enc.rows[0].tolist() == tok(FLAN.format(sentence=SENTS[0], mask="[MASK]"))["input_ids"]
    cfg.prompt.slot_text = ""
    _, enc = loop.encode_examples(cfg, prep["task"], tok, EXAMPLES[:2], "dev", prep["base"].config)
    assert enc.rows[0].tolist() == tok(FLAN.format(sentence=SENTS[0], mask="").rstrip())["input_ids"]
    causal = dict(cfg.prompt, slot_text="x", scorer="causal")
    from ftlab.train import prompting

    with pytest.raises(ValueError, match=r"prompt\.slot_text='x'"):
        prompting.resolve(causal, prep["task"], "llama")


def test_t5_loop_steps_equal_brute_force_scores(t5_untied):
    """The loop's own jitted steps on one seq2seq prompt batch (loop.encode_examples -> batches -> init_training):
    at init (LoRA B = 0) the eval step's label scores equal the HF brute force and its loss sum / predictions are
    the CE / argmax over them; with B ≠ 0 they equal `prompting.score_batch` of the applied δ, and the train
    step's loss is that CE, also with train.grad_accum=2 (row indices local to each microbatch), whose update is
    the same."""
    from ftlab import deltas
    from ftlab.train import loop, prompting
    from ftlab.train import step as step_lib

    cfg = _loop_config(t5_untied, "lora", r=4, train_head=False)
    prep = loop.prepare(cfg)
    task, base, params, model = prep["task"], prep["base"], prep["params"], prep["model"]
    _, enc = loop.encode_examples(cfg, task, base.tokenizer, EXAMPLES[:4], "dev", base.config)
    batch = _batch(enc, 4)
    assert batch["decoder_input_ids"].shape[0] == 4 * len(WORDS) and (batch["example_mask"] == 1).all()
    labels = batch["labels"]

    def ce_sum(z):
        z = np.asarray(z, np.float64)
        return float(-np.sum(z[np.arange(len(z)), labels] - np.logaddexp.reduce(z, axis=1)))

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    d = loop.init_delta(cfg, prep)
    scored_eval = step_lib.make_eval_step(d["model"], d["delta_mod"], task.kind, with_scores=True,
                                          scores=loop.eval_scores(cfg, task, base.config))
    t = loop.init_training(cfg, params, d, 6, task.kind)
    out = jax.device_get(t["eval_step"](d["train"], d["fixed"], params, batch))
    scored = jax.device_get(scored_eval(d["train"], d["fixed"], params, batch))
    want = _hf_label_scores(t5_untied, base.tokenizer, EXAMPLES[:4])
    np.testing.assert_allclose(scored["scores"], softmax(want), atol=1e-5)
    assert out["pred"].tolist() == want.argmax(1).tolist()
    np.testing.assert_allclose(float(out["loss_sum"]), ce_sum(want), rtol=1e-4)

    lora = deltas.get("lora")
    flat = tree.flatten(d["train"])
    rng = np.random.default_rng(3)
    for p in flat:
        if p.endswith("lora_b"):
            flat[p] = jnp.asarray(0.2 * rng.normal(size=flat[p].shape), jnp.float32)
    moved = {**d, "train": tree.unflatten(flat)}
    delta = tree.merge(moved["train"], moved["fixed"])
    z = prompting.score_batch(model, lora.apply(params, delta), batch, 2)
    assert np.abs(z - want).max() > 1e-2  # the update matters
    scored = jax.device_get(scored_eval(moved["train"], moved["fixed"], params, batch))
    np.testing.assert_allclose(scored["scores"], softmax(z), atol=1e-5)

    updated, norms = {}, {}
    cfg.optim.name = "sgd"  # update = -lr·g: the two updates differ by rounding only (Adam's first step ≈ sign(g))
    for accum in (1, 2):
        cfg.train.grad_accum = accum
        t = loop.init_training(cfg, params, moved, 6, task.kind)
        state = jax.tree_util.tree_map(jnp.copy, t["state"])  # donated: `moved`'s arrays must survive
        state, m = t["train_step"](state, params, batch)
        np.testing.assert_allclose(float(m["loss"]), ce_sum(z) / 4, rtol=1e-4)
        updated[accum], norms[accum] = tree.flatten(jax.device_get(state["train"])), float(m["grad_norm"])
    assert norms[1] > 0 and norms[2] == pytest.approx(norms[1], rel=1e-4)
    for p, x in updated[1].items():
        np.testing.assert_allclose(updated[2][p], x, atol=1e-6, err_msg=p)


@pytest.mark.slow
def test_t5_lora_prompt_finetuning_end_to_end(t5_untied, tmp_path, capsys):
    """`train_and_evaluate` of the tiny T5 with LoRA on SST-2's K-shot split 4-13: every step sees the same 8
    sentences (batch 8), so the loss must fall; results.json reports LoRA's parameter count (r·(in + out) per
    q/v kernel) and δ's bytes; `ftlab eval --workdir` on the exported δ reproduces the final metrics."""
    from ftlab import cli
    from ftlab.train.loop import train_and_evaluate

    cfg = _loop_config(t5_untied, "lora", r=4, train_head=False)
    wd = tmp_path / "run"
    res = train_and_evaluate(cfg, str(wd))
    saved = json.loads((wd / "results.json").read_text())
    assert saved["method"] == "lora" and saved["train_examples"] == 8 and saved["train_steps"] == 6
    n_kernels = 2 * 2 + 2 * 2 * 2  # encoder 2 blocks × (q, v); decoder 2 blocks × (self, cross) × (q, v)
    assert saved["trainable_params"] == n_kernels * 4 * (32 + 32)
    assert saved["delta_bytes"] == 4 * (saved["trainable_params"] + n_kernels)  # + one float32 scale per target
    assert set(saved["metrics"]) == {"accuracy", "loss"} and saved["metrics"] == res["metrics"]
    logged = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in logged if x["kind"] == "train"]
    print(f"\n[t5 loop] train losses {np.round(losses, 4).tolist()}, dev {saved['metrics']}")
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]

    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(wd)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["accuracy"] == pytest.approx(saved["metrics"]["accuracy"], abs=1e-6)
    assert out["loss"] == pytest.approx(saved["metrics"]["loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "ia3", "frozen"])
def test_t5_prompt_finetuning_other_methods(method, t5_untied, tmp_path):
    """full, IA³ and frozen (the untied LM head alone) through the loop, 2 steps: trainable parameters by formula,
    the exported δ reloads onto θ₀ and changed what it trains; full fine-tuning exports a merged
    T5ForConditionalGeneration whose HF brute-force label scores equal ftlab's."""
    from ftlab import cli, deltas
    from ftlab.checkpoint import delta_io
    from ftlab.config import Config
    from ftlab.train import loop, prompting

    keys = {"ia3": {"train_head": False}}.get(method, {})
    cfg = _loop_config(t5_untied, method, **keys)
    cfg.train.update(max_steps=2, eval_every=2)
    wd = tmp_path / method
    res = loop.train_and_evaluate(cfg, str(wd))
    prep = loop.prepare(Config(json.loads((wd / "config.json").read_text())))
    params = prep["params"]
    flat = tree.flatten(params)
    expect = {"full": sum(x.size for x in flat.values()),
              "frozen": 32 * 30522,  # head/lm_head/kernel [D, V]
              # k, v of 2 encoder self-, 2 decoder self- and 2 cross-attentions (out 32) + 4 wo inputs (d_ff 48)
              "ia3": 6 * 2 * 32 + 4 * 48}[method]
    assert res["trainable_params"] == expect and res["train_steps"] == 2
    name, _, delta = delta_io.load(str(wd / "delta"), params, prep["base"].hash)
    mod = deltas.get(name)
    applied = tree.flatten(mod.apply(params, delta))
    changed = [p for p in flat if not np.array_equal(np.asarray(applied[f"params/{p}"]), np.asarray(flat[p]))
               ] if method != "ia3" else [p for p, x in tree.flatten(delta).items() if not np.all(np.asarray(x) == 1)]
    assert changed, "training changed nothing"
    if method == "frozen":
        assert changed == ["head/lm_head/kernel"]
    if method == "full":
        out = tmp_path / "hf"
        assert cli.main(["export", "--workdir", str(wd), "--out", str(out)]) == 0
        _, enc = loop.encode_examples(cfg, prep["task"], prep["base"].tokenizer, EXAMPLES, "dev",
                                      prep["base"].config)
        ours = prompting.score_batch(prep["model"], mod.apply(params, delta), _batch(enc, 8), 2)[: len(EXAMPLES)]
        want = _hf_label_scores(out, prep["base"].tokenizer, EXAMPLES)
        assert np.abs(ours - want).max() <= 1e-4
