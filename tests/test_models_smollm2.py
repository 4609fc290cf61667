"""Real SmolLM2-135M-Instruct (GGUF Q4_1): ftlab logits and greedy generation equal transformers' on the same file.

Float32 note (measured): SmolLM2's residual stream reaches ~2e4 (massive activations), so float32 rounding
order matters. With XLA:CPU's default YNNPACK dot fusions ftlab's float32 logits were 1.6e-4 from a float64
reference (HF PyTorch float32: 6e-5) and 1.5e-4 from HF float32; ftlab turns those fusions off at import
(ftlab/__init__.py), which gives 1.1e-4 from float64 and 7.7e-5 from HF float32. The float64 check (ftlab
float64 vs HF float32) guards the mapping itself.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

from ftlab.models import build_model
from ftlab.models.generate import generate

pytestmark = pytest.mark.slow


def _batch(tok):
    tok.padding_side = "right"
    enc = tok(["The capital of France is", "Hello"], padding=True, return_tensors="np")
    return enc["input_ids"], enc["attention_mask"]


def test_smollm2_logits_match_hf(smollm2):
    base, hf = smollm2
    assert base.family == "llama" and base.config.tie_word_embeddings and base.config.num_key_value_heads == 3
    ids, mask = _batch(base.tokenizer)
    assert mask.min() == 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    out32 = np.asarray(build_model(base.config, "causal_lm").apply({"params": base.params}, ids, mask))
    d32 = float(np.abs(out32 - ref)[real].max())
    with jax.enable_x64(True):
        cfg64 = dataclasses.replace(base.config, dtype="float64")
        p64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), base.params)
        out64 = np.asarray(build_model(cfg64, "causal_lm").apply({"params": p64}, ids, mask))
    d64 = float(np.abs(out64 - ref)[real].max())
    print(f"\n[parity] smollm2 float32: max|Δ| = {d32:.2e}; ftlab float64 vs HF: {d64:.2e}")
    assert d64 <= 1e-4, d64
    assert d32 <= 1e-4, d32
    with torch.no_grad():  # final hidden states (after the last RMSNorm)
        ref_h = hf.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hid = np.asarray(build_model(base.config, None).apply({"params": base.params}, ids, mask))
    dh = float(np.abs(hid - ref_h)[real].max())
    print(f"[parity] smollm2 float32 final hidden: max|Δ| = {dh:.2e}")
    assert dh <= 1e-4, dh


def test_smollm2_greedy_generation_matches_hf(smollm2):
    base, hf = smollm2
    enc = base.tokenizer(["The capital of France is"], return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    model = build_model(base.config, "causal_lm")
    new = generate(model, base.params, ids, mask, max_new_tokens=20, eos_token_id=base.config.eos_token_id)
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=20
        )[:, ids.shape[1] :].numpy()
    print("\n[generate] smollm2:", base.tokenizer.decode(new[0]))
    np.testing.assert_array_equal(new, ref)
