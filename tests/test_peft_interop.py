"""ftlab module deltas <-> Hugging Face PEFT on tiny random models (BERT classifier, Llama LM with GQA).

For LoRA (with an embedding target), IA³, prompt tuning and prefix tuning (with and without the MLP
re-parameterisation): a random non-identity δ gives the same outputs as PEFT with the same weights, whether
ftlab's δ is exported and loaded by `PeftModel.from_pretrained`, or PEFT's own `save_pretrained` folder is
read by `import_peft`.
"""

from __future__ import annotations

import jax
import numpy as np
import peft
import pytest
import torch
from _peft_helpers import fresh, hf_vs_ftlab, inputs, max_diff, randomize, randomize_torch, run, save_tiny

from ftlab import deltas, tree
from ftlab.checkpoint import load_base
from ftlab.checkpoint.peft import export_peft, import_peft
from ftlab.models import build_model

KINDS = {
    "bert": ("bert_seqcls", "sequence_classification", "SEQ_CLS"),
    "llama": ("llama_lm", "causal_lm", "CAUSAL_LM"),
}
METHODS = {
    "lora": {
        "r": 4,
        "alpha": 8,
        "targets": [r".*/(query|value|q_proj|v_proj|down_proj)", r".*(word_embeddings|embed_tokens)"],
    },
    "lora_rs": {"r": 4, "alpha": 8, "use_rslora": True},
    "ia3": {},
    "prompt": {"num_virtual_tokens": 3},
    "prefix": {"num_virtual_tokens": 3, "init_std": 0.5},
    "prefix_mlp": {"num_virtual_tokens": 3, "projection": True, "projection_hidden": 16},
}


@pytest.fixture(scope="module", params=list(KINDS))
def tiny(request, tmp_path_factory, hf_offline):
    kind, head, task = KINDS[request.param]
    folder = tmp_path_factory.mktemp(kind)
    hf = save_tiny(kind, folder)
    base = load_base(folder)
    model = build_model(base.config, head, 3)
    ids, mask = inputs()
    assert (
        max_diff(
            run(model, {"params": base.params}, ids, mask),
            hf_vs_ftlab(
                model,
                base.params,
                deltas.get("ia3"),
                deltas.get("ia3").init(None, base.params, deltas.check_config(deltas.get("ia3"), {})),
                hf,
                ids,
                mask,
            )[1],
            mask,
        )
        <= 1e-5
    )
    return request.param, base, hf, model, task


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_export_loads_in_peft_with_same_outputs(name, tiny, tmp_path):
    fam, base, hf, model, task = tiny
    method = name.split("_")[0]
    mod = deltas.get(method)
    cfg = deltas.check_config(mod, METHODS[name])
    delta = randomize(mod.init(jax.random.key(0), base.params, cfg))
    delta = tree.map_with_path(lambda p, x: x + 0.1 if p.startswith("head/") else x, delta)
    ids, mask = inputs()
    export_peft(delta, method, cfg, base, tmp_path, task)
    pm = peft.PeftModel.from_pretrained(fresh(hf), tmp_path).eval()
    out, ref = hf_vs_ftlab(model, base.params, mod, delta, pm, ids, mask)
    effect = max_diff(out, run(model, {"params": base.params}, ids, mask), mask)
    d = max_diff(out, ref, mask)
    print(f"\n[peft export] {fam} {name}: max|Δ| = {d:.2e} (effect of δ {effect:.2f})")
    assert effect > 0.05 and d <= 1e-5, (d, effect)
    # and back: the exported folder imports to a δ with the same function
    m2, cfg2, delta2 = import_peft(tmp_path, base.params)
    assert m2 == method
    assert max_diff(run(model, deltas.get(m2).apply(base.params, delta2), ids, mask), out, mask) <= 1e-6


def _peft_config(name: str, fam: str, task: str):
    if name == "lora":
        mods = (
            ["query", "value", "word_embeddings"] if fam == "bert" else ["q_proj", "v_proj", "embed_tokens"]
        )
        return peft.LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=mods)
    if name == "lora_rs":
        return peft.LoraConfig(task_type=task, r=4, lora_alpha=8, use_rslora=True)
    if name == "ia3":
        return peft.IA3Config(task_type=task)
    if name == "prompt":
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3)
    return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=3)


@pytest.mark.parametrize("name", ["lora", "lora_rs", "ia3", "prompt", "prefix"])
def test_peft_saved_adapter_imports_with_same_outputs(name, tiny, tmp_path):
    fam, base, hf, model, task = tiny
    torch.manual_seed(0)
    pm = peft.get_peft_model(fresh(hf), _peft_config(name, fam, task))
    randomize_torch(pm, ("lora_", "ia3_l", "prompt_encoder", "modules_to_save"), seed=2)
    pm.eval()
    pm.save_pretrained(tmp_path)
    method, cfg, delta = import_peft(tmp_path, base.params)
    assert method == name.split("_")[0]
    ids, mask = inputs()
    out, ref = hf_vs_ftlab(model, base.params, deltas.get(method), delta, pm, ids, mask)
    d = max_diff(out, ref, mask)
    print(f"\n[peft import] {fam} {name}: max|Δ| = {d:.2e}")
    assert d <= 1e-5, d
    assert deltas.get(method).num_trainable(base.params, cfg) == tree.count(
        tree.split(delta, deltas.get(method).trainable(delta))[0]
    )
    if fam == "bert":  # the classifier is trained (PEFT's modules_to_save) and comes back as δ's head
        np.testing.assert_allclose(
            np.asarray(delta["head"]["classifier"]["kernel"]),
            pm.base_model.classifier.modules_to_save["default"].weight.detach().numpy().T
            if hasattr(pm.base_model, "classifier")
            else pm.base_model.model.classifier.modules_to_save["default"].weight.detach().numpy().T,
        )
