"""Parity of ftlab's Flax models with Hugging Face PyTorch on the same weights and padded inputs, plus the
export round trip (ftlab -> export_hf -> transformers loads with no missing/unexpected keys -> same logits).

Tiny random configs (2 layers, width <= 64) saved as HF folders; the real MiniLM checkpoint. The reference
weights are perturbed away from HF's init (zero biases, unit norms) so every tensor's mapping matters.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from ftlab.checkpoint import export_hf, load_base
from ftlab.models import build_model, init_params

B, T, V = 2, 7, 99


def _inputs(pad_id: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, -3:] = 0  # right padding on row 1; only real positions are compared
    ids[mask == 0] = pad_id
    return ids, mask


def _hf_out(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


def _max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if a.ndim == 2:  # sequence classification: one row per example
        return float(np.abs(a - b).max())
    return float(np.abs(a - b)[mask.astype(bool)].max())


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


BERT = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
LLAMA = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)
CASES = {
    "bert_model": (transformers.BertConfig(**BERT), transformers.BertModel, None),
    "bert_mlm": (transformers.BertConfig(**BERT), transformers.BertForMaskedLM, "masked_lm"),
    "bert_seqcls": (
        transformers.BertConfig(**BERT, num_labels=3),
        transformers.BertForSequenceClassification,
        "sequence_classification",
    ),
    "bert_tokcls": (
        transformers.BertConfig(**BERT, num_labels=5),
        transformers.BertForTokenClassification,
        "token_classification",
    ),
    "roberta_model": (
        transformers.RobertaConfig(**{**BERT, "max_position_embeddings": 66}, pad_token_id=1),
        transformers.RobertaModel,
        None,
    ),
    "roberta_seqcls": (
        transformers.RobertaConfig(**{**BERT, "max_position_embeddings": 66}, pad_token_id=1, num_labels=1),
        transformers.RobertaForSequenceClassification,
        "sequence_classification",
    ),
    "gpt2_lm": (
        transformers.GPT2Config(
            vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
        ),
        transformers.GPT2LMHeadModel,
        "causal_lm",
    ),
    "llama_gqa_llama3": (
        transformers.LlamaConfig(
            **LLAMA,
            num_key_value_heads=2,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
        ),
        transformers.LlamaForCausalLM,
        "causal_lm",
    ),
    "llama_tied_bias": (
        transformers.LlamaConfig(
            **LLAMA,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            attention_bias=True,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
        transformers.LlamaForCausalLM,
        "causal_lm",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parity_and_export_round_trip(name, tmp_path, hf_offline):
    hf_cfg, hf_cls, head = CASES[name]
    torch.manual_seed(0)
    ref_model = hf_cls(hf_cfg).eval()
    _perturb(ref_model, seed=1)
    if getattr(hf_cfg, "tie_word_embeddings", False) and head == "causal_lm":
        ref_model.tie_weights()
    ref_model.save_pretrained(tmp_path / "hf")
    pad = hf_cfg.pad_token_id if hf_cfg.pad_token_id is not None else 0
    ids, mask = _inputs(pad)
    ref = _hf_out(ref_model, ids, mask)

    base = load_base(tmp_path / "hf")
    if name == "llama_gqa_llama3":
        assert base.config.rope_scaling["rope_type"] == "llama3" and base.config.num_key_value_heads == 2
    num_labels = getattr(hf_cfg, "num_labels", 2)
    model = build_model(base.config, head, num_labels)
    params, fresh = init_params(model, jax.random.key(0), base.params, ids)
    assert fresh == [], f"every tensor should come from the checkpoint, fresh: {fresh}"
    out = np.asarray(model.apply({"params": params}, ids, mask))
    assert out.shape == ref.shape
    diff = _max_diff(out, ref, mask)
    print(f"\n[parity] {name}: max|Δ| = {diff:.2e}")
    assert diff <= 1e-4, diff

    # Export round trip: transformers loads it with no missing/unexpected keys and gives the same outputs.
    export_hf(params, base.config, tmp_path / "export", head=head)
    back, info = hf_cls.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    diff_rt = _max_diff(_hf_out(back.eval(), ids, mask), out, mask)
    print(f"[export] {name}: max|Δ| = {diff_rt:.2e}")
    assert diff_rt <= 1e-5, diff_rt


def test_minilm_parity_with_padding(hf_offline):
    base = load_base("minilm")
    assert base.family == "bert" and len(base.hash) == 16
    enc = base.tokenizer(
        ["The quick brown fox jumps over the lazy dog.", "Short one."], padding=True, return_tensors="np"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask.min() == 0  # the batch really is padded
    ref_model = transformers.AutoModel.from_pretrained(base.source, local_files_only=True).eval()
    ref = _hf_out(ref_model, ids, mask)
    out = np.asarray(build_model(base.config).apply({"params": base.params}, ids, mask))
    diff = _max_diff(out, ref, mask)
    print(f"\n[parity] minilm: max|Δ| = {diff:.2e}")
    assert diff <= 1e-4, diff


def test_minilm_classification_heads(hf_offline):
    """What the training pipeline needs first: load MiniLM, add a fresh head, run with dropout on."""
    base = load_base("minilm")
    ids = base.tokenizer(["a b c", "d"], padding=True, return_tensors="np")["input_ids"]
    mask = (ids != 0).astype(np.int32)
    for head, n, shape in (
        ("sequence_classification", 3, (2, 3)),
        ("sequence_classification", 1, (2, 1)),
        ("token_classification", 5, (2, ids.shape[1], 5)),
    ):
        model = build_model(base.config, head, n)
        params, fresh = init_params(model, jax.random.key(0), base.params, ids)
        assert fresh == ["head/classifier/bias", "head/classifier/kernel"]
        det = model.apply({"params": params}, ids, mask)
        drop = model.apply(
            {"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)}
        )
        assert det.shape == shape and drop.shape == shape
        assert not np.allclose(det, drop)  # dropout is active only when deterministic=False
        assert np.allclose(det, model.apply({"params": params}, ids, mask))
