"""load_base fails loudly: missing / unused / mis-shaped tensors, unknown architecture or model_type, missing
files. Each message names the key, the shapes and the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ftlab.checkpoint import CheckpointError, load_base


@pytest.fixture()
def bert_dir(tmp_path, hf_offline):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
    )
    transformers.BertModel(cfg).save_pretrained(tmp_path)
    return tmp_path


def _edit(folder, fn):
    f = folder / "model.safetensors"
    tensors = dict(load_file(f))
    fn(tensors)
    save_file(tensors, f)
    return str(f)


def test_loads_clean(bert_dir):
    base = load_base(bert_dir)
    assert base.family == "bert" and base.tokenizer is None and "head" not in base.params
    assert base.params["backbone"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"].shape == (
        16,
        16,
    )


def test_missing_tensor(bert_dir):
    f = _edit(bert_dir, lambda t: t.pop("encoder.layer.0.output.dense.weight"))
    with pytest.raises(
        CheckpointError,
        match=r"missing from .*model\.safetensors: 'encoder\.layer\.0\.output\.dense\.weight' shape \(16, 24\)",
    ) as e:
        load_base(bert_dir)
    assert f in str(e.value)


def test_unused_tensor(bert_dir):
    _edit(bert_dir, lambda t: t.__setitem__("encoder.layer.0.extra.weight", np.zeros((3, 4), np.float32)))
    with pytest.raises(
        CheckpointError,
        match=r"unused tensor 'encoder\.layer\.0\.extra\.weight' \(3, 4\) in .*model\.safetensors",
    ):
        load_base(bert_dir)


def test_misshaped_tensor(bert_dir):
    _edit(bert_dir, lambda t: t.__setitem__("pooler.dense.weight", np.zeros((16, 15), np.float32)))
    with pytest.raises(
        CheckpointError,
        match=r"'pooler\.dense\.weight' in .*model\.safetensors has shape \(16, 15\).*\(16, 16\)",
    ):
        load_base(bert_dir)


def test_unknown_architecture_and_model_type(bert_dir):
    cfg_file = bert_dir / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "architectures": ["BertForNextSentencePrediction"]}))
    with pytest.raises(CheckpointError, match=r"config\.json.*BertForNextSentencePrediction"):
        load_base(bert_dir)
    cfg_file.write_text(json.dumps({**cfg, "model_type": "bart"}))
    with pytest.raises(CheckpointError, match=r"config\.json.*unknown model_type 'bart'"):
        load_base(bert_dir)
    # t5 is a known family now; a BERT architecture under it is refused by name.
    cfg_file.write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(CheckpointError, match=r"config\.json.*unknown architecture 'BertModel' for family 't5'"):
        load_base(bert_dir)


def test_missing_files(tmp_path, bert_dir):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_base(tmp_path / "does-not-exist")
    (bert_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors.*" + str(bert_dir.name)):
        load_base(bert_dir)
    (bert_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_base(bert_dir)


def test_tokenizer_larger_than_the_embedding_is_refused(bert_dir):
    """A 40-row embedding with MiniLM's 30,522-token WordPiece tokenizer: ids would index past the table."""
    import shutil

    from ftlab.checkpoint.hf import resolve

    src = resolve("minilm")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, bert_dir / f)
    with pytest.raises(CheckpointError, match=r"tokenizer has 30522 tokens but the model's embedding has 40 rows"):
        load_base(bert_dir)
