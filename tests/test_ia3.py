"""IA³: equality with Hugging Face PEFT (default targets: BERT key/value/output.dense, Llama k/v/down_proj) on real
MiniLM and SmolLM2, merge into plain params. SmolLM2 tolerance as in tests/test_lora.py (float64 ftlab vs
float32 HF at 1e-4; float32 vs float32 at the base model's 3e-4)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _peft_helpers import float64_out, max_diff, minilm_setup, peft_parity, randomize, run, text_batch

from ftlab import deltas, tree


@pytest.fixture(scope="module")
def minilm(hf_offline):
    return minilm_setup()


def test_ia3_minilm_equals_peft_and_merges(minilm, tmp_path):
    base, hf, model, params = minilm
    ids, mask = text_batch(base.tokenizer)
    out, ref, mod, delta = peft_parity("ia3", {}, base, hf, model, params, "SEQ_CLS", tmp_path, ids, mask)
    d = max_diff(out, ref)
    print(f"\n[peft] minilm ia3: max|Δ| = {d:.2e}")
    assert d <= 1e-4, d
    sites = tree.flatten(delta["delta"])
    assert sum(p.endswith("ia3_in") for p in sites) == 12 and sum(p.endswith("ia3_out") for p in sites) == 12
    np.testing.assert_allclose(run(model, {"params": mod.merge(params, delta)}, ids, mask), out, atol=1e-5)


@pytest.mark.slow
def test_ia3_smollm2_equals_peft(smollm2, tmp_path):
    from ftlab.models import build_model

    base, hf = smollm2
    model = build_model(base.config, "causal_lm")
    ids, mask = text_batch(base.tokenizer)
    out, ref, mod, delta = peft_parity(
        "ia3",
        {"train_head": False},
        base,
        hf,
        model,
        base.params,
        "CAUSAL_LM",
        tmp_path,
        ids,
        mask,
        scale=0.05,
    )
    d32 = max_diff(out, ref, mask)
    d64 = max_diff(float64_out(model, base.params, mod, delta, ids, mask), ref, mask)
    effect = max_diff(out, run(model, {"params": base.params}, ids, mask), mask)
    print(
        f"\n[peft] smollm2 ia3: float32 max|Δ| = {d32:.2e}, ftlab float64 vs HF: {d64:.2e} (effect {effect:.2f})"
    )
    assert effect > 0.5 and d64 <= 1e-4 and d32 <= 3e-4, (d64, d32)


def test_ia3_identity_vectors_are_exact_and_count():
    from ftlab.models import LlamaConfig, build_model

    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    model = build_model(cfg, "causal_lm")
    params = jax.jit(model.init)(jax.random.key(0), np.ones((1, 8), np.int32))["params"]
    mod = deltas.get("ia3")
    c = deltas.check_config(mod, {"train_head": False})
    delta = mod.init(None, params, c)
    # k_proj, v_proj: K·Dh = 8 each (scaled outputs); down_proj: 24 (scaled input), 2 layers, no head params
    assert mod.num_trainable(params, c) == 2 * (8 + 8 + 24)
    ids = np.array([[3, 4, 5, 6]], np.int32)
    np.testing.assert_array_equal(
        np.asarray(model.apply(mod.apply(params, delta), ids)),
        np.asarray(model.apply({"params": params}, ids)),
    )
    moved = randomize(delta, scale=0.2)
    assert not np.allclose(
        run(model, mod.apply(params, moved), ids, np.ones_like(ids)),
        run(model, {"params": params}, ids, np.ones_like(ids)),
    )
