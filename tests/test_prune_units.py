"""Structured pruning (ftlab/deltas/prune_units.py): heads and FFN units.

References nobody here wrote: HF BertModel with the same heads removed by `prune_heads` (and the FFN units cut
out of its nn.Linear layers by hand) gives the outputs of ftlab's masked model and of its stored (sliced) δ;
the masks equal explicit numpy zeroing; the movement scores' gradient equals Σ over each unit of dL/dθ ⊙ W;
the kept counts follow the budget; a training run fills num_heads from the model and stores fewer bytes.
(The generic contract, identity at init, jit, one step, round trip, is in test_deltas_contract.py.)"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import REPO

from ftlab import config as config_lib
from ftlab import deltas, tree
from ftlab.checkpoint import load_base
from ftlab.models import build_model, init_params

PU = deltas.get("prune_units")
HF = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
          max_position_embeddings=64)
PRUNED_HEADS = {0: [1, 3], 1: [0]}
KEPT_FFN = {0: [0, 2, 3, 5, 7, 11, 12, 20], 1: list(range(0, 24, 3))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, hf_offline):
    d = tmp_path_factory.mktemp("pu_bert")
    torch.manual_seed(0)
    ref = transformers.BertModel(transformers.BertConfig(**HF)).eval()
    with torch.no_grad():
        for p in ref.parameters():  # biases away from 0, so that a wrongly kept bias shows
            p.add_(0.05 * torch.randn(p.shape))
    ref.save_pretrained(d)
    base = load_base(d)
    model = build_model(base.config)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, size=(2, 9)).astype(np.int32)
    mask = np.ones((2, 9), np.int32)
    mask[1, -3:] = 0
    params, _ = init_params(model, jax.random.key(0), base.params, ids)
    return str(d), model, params, ids, mask


def _kept_heads(layer: int) -> list[int]:
    return [h for h in range(4) if h not in PRUNED_HEADS[layer]]


def _stored(params, cfg):
    """The stored form for PRUNED_HEADS / KEPT_FFN, built by to_disk from a movement δ whose scores select them."""
    d = PU.init(None, params, cfg)
    s_heads = np.zeros((2, 4), np.float32)
    s_ffn = np.zeros((2, 24), np.float32)
    for lay in (0, 1):
        s_heads[lay, _kept_heads(lay)] = 1.0
        s_ffn[lay, KEPT_FFN[lay]] = 1.0
    d["prune_units"]["scores"] = {"heads": jnp.asarray(s_heads), "ffn": jnp.asarray(s_ffn)}
    return d


def test_equals_hf_prune_heads_and_sliced_ffn(tiny):
    path, model, params, ids, mask = tiny
    # per-layer budgets cannot express 2 heads in layer 0 and 3 in layer 1; global keeps the top 5 of 8 heads
    cfg = deltas.check_config(PU, {"criterion": "movement", "budget": "global", "num_heads": 4,
                                   "keep_heads": 5 / 8, "keep_ffn": 16 / 48})
    d = _stored(params, cfg)
    assert PU.stats(params, d)["heads"]["per_layer"] == [2, 3]
    out_masked = np.asarray(model.apply(PU.apply(params, d), ids, mask))
    arrays = PU.to_disk(d)
    assert arrays["prune_units/kept/heads/0"].tolist() == _kept_heads(0)
    assert arrays["prune_units/sliced/backbone/encoder/layer/0/attention/self/query/kernel"].shape == (32, 16)
    assert arrays["prune_units/sliced/backbone/encoder/layer/1/output/dense/kernel"].shape == (8, 32)
    out_stored = np.asarray(model.apply(PU.apply(params, PU.from_disk(arrays, params, cfg)), ids, mask))

    ref = transformers.BertModel.from_pretrained(path).eval()
    # transformers 5 dropped `prune_heads`; its own `prune_linear_layer` cuts the heads' rows / columns
    from transformers.pytorch_utils import prune_linear_layer

    with torch.no_grad():
        for lay in PRUNED_HEADS:
            att = ref.encoder.layer[lay].attention
            idx = torch.tensor([h * 8 + i for h in _kept_heads(lay) for i in range(8)])
            for name in ("query", "key", "value"):
                setattr(att.self, name, prune_linear_layer(getattr(att.self, name), idx, dim=0))
            att.output.dense = prune_linear_layer(att.output.dense, idx, dim=1)
        for lay, keep in KEPT_FFN.items():
            layer = ref.encoder.layer[lay]
            inter, out = layer.intermediate.dense, layer.output.dense
            idx = torch.tensor(keep)
            new_i = torch.nn.Linear(inter.in_features, len(keep))
            new_i.weight.copy_(inter.weight[idx]), new_i.bias.copy_(inter.bias[idx])
            new_o = torch.nn.Linear(len(keep), out.out_features)
            new_o.weight.copy_(out.weight[:, idx]), new_o.bias.copy_(out.bias)
            layer.intermediate.dense, layer.output.dense = new_i, new_o
        want = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    want = want.numpy()
    real = mask.astype(bool)
    assert np.abs(out_masked - want)[real].max() < 2e-5
    assert np.abs(out_stored - want)[real].max() < 2e-5
    # and the pruning changed the model (the check is not vacuous)
    full = np.asarray(model.apply({"params": params}, ids, mask))
    assert np.abs(full - want)[real].max() > 1e-2


def test_masks_equal_explicit_zeroing_and_budgets(tiny):
    _, _, params, _, _ = tiny
    rng = np.random.default_rng(1)
    for budget in ("per_layer", "global"):
        cfg = deltas.check_config(PU, {"budget": budget, "num_heads": 4, "keep_heads": 0.5, "keep_ffn": 0.25})
        d = PU.init(None, params, cfg)
        sh, sf = rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(2, 24)).astype(np.float32)
        d["prune_units"]["scores"] = {"heads": jnp.asarray(sh), "ffn": jnp.asarray(sf)}
        m = PU.masks(d)
        if budget == "per_layer":
            assert m["heads"].sum(-1).tolist() == [2, 2] and m["ffn"].sum(-1).tolist() == [6, 6]
            want_h = sh >= np.sort(sh, -1)[:, -2:-1]
        else:
            assert float(m["heads"].sum()) == 4 and float(m["ffn"].sum()) == 12
            want_h = sh >= np.sort(sh.ravel())[-4]
        np.testing.assert_array_equal(np.asarray(m["heads"]) > 0, want_h)
        theta = tree.flatten(PU.apply(params, d)["params"])
        base = tree.flatten(params)
        for lay in (0, 1):
            cols = np.repeat(np.asarray(m["heads"][lay]), 8)
            p = f"backbone/encoder/layer/{lay}/attention/self/value/kernel"
            np.testing.assert_array_equal(np.asarray(theta[p]), np.asarray(base[p]) * cols[None, :])
            p = f"backbone/encoder/layer/{lay}/attention/output/dense/kernel"
            np.testing.assert_array_equal(np.asarray(theta[p]), np.asarray(base[p]) * cols[:, None])
            rows = np.asarray(m["ffn"][lay])
            p = f"backbone/encoder/layer/{lay}/intermediate/dense/bias"
            np.testing.assert_array_equal(np.asarray(theta[p]), np.asarray(base[p]) * rows)
            p = f"backbone/encoder/layer/{lay}/attention/output/dense/bias"  # not a unit tensor: untouched
            np.testing.assert_array_equal(np.asarray(theta[p]), np.asarray(base[p]))
    # magnitude: the unit score is Σ|W| over the unit's entries
    cfg = deltas.check_config(PU, {"criterion": "magnitude", "num_heads": 4})
    d = PU.init(None, params, cfg)
    flat = {k: np.asarray(v) for k, v in tree.flatten(params).items()}
    lp = "backbone/encoder/layer/1/"
    want = sum(np.abs(flat[lp + f"attention/self/{n}/kernel"]).reshape(32, 4, 8).sum((0, 2))
               + np.abs(flat[lp + f"attention/self/{n}/bias"]).reshape(4, 8).sum(-1) for n in ("query", "key", "value"))
    want = want + np.abs(flat[lp + "attention/output/dense/kernel"]).reshape(4, 8, 32).sum((1, 2))
    np.testing.assert_allclose(np.asarray(PU.unit_scores(d, "heads"))[1], want, rtol=1e-5)


def test_movement_gradient_is_the_units_sum_of_grad_times_weight(tiny):
    _, model, params, ids, mask = tiny
    cfg = deltas.check_config(PU, {"num_heads": 4, "keep_heads": 0.75, "keep_ffn": 0.5})
    d = PU.init(None, params, cfg)
    d["prune_units"]["scores"] = {"heads": jax.random.normal(jax.random.key(1), (2, 4)),
                                  "ffn": jax.random.normal(jax.random.key(2), (2, 24))}

    def loss_theta(theta):
        return jnp.sum(model.apply({"params": theta}, ids, mask) ** 2)

    def loss_s(scores):
        dd = {**d, "prune_units": {**d["prune_units"], "scores": scores}}
        return loss_theta(PU.apply(params, dd)["params"])

    g_s = jax.grad(loss_s)(d["prune_units"]["scores"])
    theta = PU.apply(params, d)["params"]
    g_t = tree.flatten(jax.grad(loss_theta)(theta))
    w = tree.flatten({k: v for k, v in d.items() if k != "prune_units"})
    lp = "backbone/encoder/layer/0/"
    want = np.asarray(g_t[lp + "intermediate/dense/kernel"] * w[lp + "intermediate/dense/kernel"]).sum(0)
    want += np.asarray(g_t[lp + "intermediate/dense/bias"] * w[lp + "intermediate/dense/bias"])
    want += np.asarray(g_t[lp + "output/dense/kernel"] * w[lp + "output/dense/kernel"]).sum(1)
    np.testing.assert_allclose(np.asarray(g_s["ffn"][0]), want, rtol=1e-4, atol=1e-6)


def test_config_errors(tiny):
    _, _, params, _, _ = tiny
    for bad, match in (({"units": "rows"}, "units must be"), ({"num_heads": 5}, "num_heads=5 must be a positive "
                       "divisor of the hidden size 32"), ({"num_heads": 0}, "num_heads=0"),
                       ({"keep_ffn": 0.0}, "keep_ffn"), ({"criterion": "soft_movement"}, "criterion"),
                       ({"budget": "layer"}, "budget")):
        with pytest.raises(ValueError, match=match):
            PU.init(None, params, {"num_heads": 4, **bad})
    with pytest.raises(ValueError, match="no encoder layers"):
        PU.init(None, {"decoder": {"w": jnp.zeros(3)}}, {"num_heads": 4})
    p = tree.flatten(params)
    p.pop("backbone/encoder/layer/1/intermediate/dense/bias")
    with pytest.raises(ValueError, match="layer/1/intermediate/dense/bias not in the parameters"):
        PU.init(None, tree.unflatten(p), {"num_heads": 4, "units": "ffn"})
    d = PU.init(None, params, {"num_heads": 4})
    arrays = PU.to_disk(d)
    arrays["prune_units/kept/heads/0"] = np.asarray([2, 1, 3], np.int32)
    with pytest.raises(ValueError, match="kept/heads/0 is not a strictly increasing"):
        PU.from_disk(arrays, params, {"num_heads": 4})


@pytest.mark.slow
def test_runlocal_fills_heads_from_the_model_and_stores_less(tmp_path, tiny_bert_dir):
    from ftlab.train.loop import train_and_evaluate

    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_prune_units.py:runlocal"))
    cfg = config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                           "train.pad_to_multiple_of=32", "train.progress=false"])
    train_and_evaluate(cfg, str(tmp_path))
    r = json.load(open(tmp_path / "results.json"))
    mc = json.load(open(os.path.join(tiny_bert_dir, "config.json")))
    meta = json.load(open(tmp_path / "delta" / "delta.json"))
    assert meta["config"]["num_heads"] == mc["num_attention_heads"]
    s = r["delta_stats"]
    n_layers = mc["num_hidden_layers"]
    assert s["heads"]["per_layer"] == [round(cfg.delta.keep_heads * mc["num_attention_heads"])] * n_layers
    assert s["ffn"]["per_layer"] == [round(cfg.delta.keep_ffn * mc["intermediate_size"])] * n_layers
    assert r["delta_bytes"] < 4 * r["total_params"]
