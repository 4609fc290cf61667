"""ftlab.prompts: template / verbalizer parsing and errors, filling, tokenisation with field-only truncation,
label-word spaces for BPE vs WordPiece, multi-token label words, batching of prompt rows, the published
patterns of every task against its label set, in-context prefixes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import minilm_dir

from ftlab.data.batching import batches
from ftlab.prompts import (
    PATTERNS,
    TemplateError,
    encode_prompts,
    fill,
    get_pattern,
    parse_template,
    parse_verbalizer,
)
from ftlab.prompts.encode import demonstrations, truncate_fields
from ftlab.tasks import get_task


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def bpe(hf_offline):
    from ftlab.checkpoint import load_base

    return load_base("smollm2").tokenizer  # SmolLM2's byte-level BPE (from the GGUF file; cached after the first load)


EX = {"text_a": "a gorgeous, witty, seductive movie.", "text_b": None, "label": 1, "source": "t.tsv:2"}
PAIR = {"text_a": "He said hi.", "text_b": "The man said hello.", "label": 0, "source": "p.tsv:2"}


def test_parse_and_fill():
    segs = parse_template("{sentence} It was {mask}.")
    assert [s.kind for s in segs] == ["field", "text", "mask", "text"]
    assert segs[2].space and segs[1].text == " It was"
    assert fill("{sentence} It was {mask}.", EX, "great") == "a gorgeous, witty, seductive movie. It was great."
    assert fill("{sentence1|nopunct}? {mask}, {sentence2|lower}", PAIR, "Yes") == \
        "He said hi? Yes, the man said hello."
    assert fill("{{x}} {mask}: {sentence|upper}", EX, "Entity") == "{x} Entity: A gorgeous, witty, seductive movie."


@pytest.mark.parametrize("bad, match", [
    ("{sentence} It was.", "exactly one"),
    ("{mask} {mask}", "exactly one"),
    ("{sentense} {mask}", "unknown field {sentense}"),
    ("{sentence|shout} {mask}", "unknown modifier"),
    ("{sentence {mask}", "unmatched"),
    ("", "non-empty"),
])
def test_template_errors(bad, match):
    with pytest.raises(TemplateError, match=match):
        parse_template(bad)


def test_missing_field_names_the_example():
    with pytest.raises(TemplateError, match="t.tsv:2.*text_b"):
        fill("{sentence1} {mask} {sentence2}", EX, "x")


def test_verbalizer_formats_and_errors():
    assert parse_verbalizer("0=terrible|1=great/good", ("0", "1")) == ((0, "terrible"), (1, "great"), (1, "good"))
    assert parse_verbalizer({"1": "great", "0": ["bad"]}, ("0", "1")) == ((0, "bad"), (1, "great"))
    with pytest.raises(TemplateError, match=r"not in the task's labels"):
        parse_verbalizer({"0": "a", "1": "b", "2": "c"}, ("0", "1"))
    with pytest.raises(TemplateError, match=r"no word for label\(s\) \['1'\]"):
        parse_verbalizer("0=a", ("0", "1"))
    with pytest.raises(TemplateError, match="label=word"):
        parse_verbalizer("0:a|1:b", ("0", "1"))


def test_every_pattern_fits_its_task():
    for name, pats in PATTERNS.items():
        task = get_task(name)
        for p in pats:
            parse_template(p.template)
            parse_verbalizer(p.verbalizer, task.label_names, f"{name} pattern")
    assert get_pattern("0", task="sst2") == get_pattern("sst2:0")
    with pytest.raises(KeyError, match="patterns 0.."):
        get_pattern("sst2:99")


def test_truncate_fields_longest_first():
    assert truncate_fields([10, 3], 8) == [5, 3]
    assert truncate_fields([4, 4], 6) == [3, 3]
    assert truncate_fields([2, 3], 10) == [2, 3]


def test_cloze_rows_wordpiece(wordpiece):
    e = encode_prompts([EX], wordpiece, "{sentence} It was {mask}.", {"0": "terrible", "1": "great"},
                       ("0", "1"), 64, "cloze")
    (row,) = e.rows[0]
    toks = wordpiece.convert_ids_to_tokens(row.tolist())
    assert toks[0] == "[CLS]" and toks[-3:] == ["[MASK]", ".", "[SEP]"] and toks[-5:-3] == ["it", "was"]
    assert e.choice_pos[0, :, 0].tolist() == [len(toks) - 3] * 2
    assert e.choice_tok[0, :, 0].tolist() == wordpiece.convert_tokens_to_ids(["terrible", "great"])


def test_truncation_keeps_template_and_mask(wordpiece):
    long = dict(EX, text_a=" ".join(["word"] * 200))
    e = encode_prompts([long], wordpiece, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 16,
                       "cloze")
    toks = wordpiece.convert_ids_to_tokens(e.rows[0][0].tolist())
    assert len(toks) == 16 and toks[-5:] == ["it", "was", "[MASK]", ".", "[SEP]"] and toks[1] == "word"
    pair = dict(PAIR, text_a=" ".join(["alpha"] * 50), text_b="short one.")
    e = encode_prompts([pair], wordpiece, "{sentence1|nopunct}? {mask}, {sentence2|lower}", "0=No|1=Yes",
                       ("0", "1"), 20, "cloze")
    toks = wordpiece.convert_ids_to_tokens(e.rows[0][0].tolist())
    assert len(toks) == 20 and toks[-5:] == [",", "short", "one", ".", "[SEP]"] and toks[-7:-5] == ["?", "[MASK]"]
    with pytest.raises(ValueError, match="raise max_length"):
        encode_prompts([EX], wordpiece, "{sentence} " + "very " * 20 + "{mask}", "0=a|1=b", ("0", "1"), 16,
                       "cloze")


def test_multi_token_words_get_several_masks(wordpiece):
    # "unwatchable" is several WordPiece tokens; "great" one: two rows (1 mask and n masks).
    n = len(wordpiece.tokenize("unwatchable"))
    assert n > 1
    e = encode_prompts([EX], wordpiece, "{sentence} It was {mask}.", "0=unwatchable|1=great", ("0", "1"), 64,
                       "cloze")
    assert e.num_rows == 2 and e.choice_row[0].tolist() == [1, 0]
    masks = [int((r == wordpiece.mask_token_id).sum()) for r in e.rows[0]]
    assert masks == [1, n]
    np.testing.assert_allclose(e.choice_w[0, 0, :n], 1 / n)
    assert e.choice_w[0, 1].tolist() == [1.0] + [0.0] * (n - 1)


def test_causal_rows_bpe_leading_space(bpe):
    e = encode_prompts([EX], bpe, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 64, "causal")
    assert e.num_rows == 2
    great = e.rows[0][1]
    toks = bpe.convert_ids_to_tokens(great.tolist())
    assert toks[-4:] == ["ĠIt", "Ġwas", "Ġgreat", "."]  # the space before {mask} is the word's
    assert great[0] == bpe.bos_token_id
    # targets: the word and the suffix "."; read at the position before each
    p, t, w = e.choice_pos[0, 1], e.choice_tok[0, 1], e.choice_w[0, 1]
    assert (great[p + 1] == t).all() and t.tolist() == bpe.convert_tokens_to_ids(["Ġgreat", "."]) and w.sum() == 2
    e2 = encode_prompts([EX], bpe, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 64, "causal",
                        score_suffix=False)
    assert e2.choice_w[0, 1].sum() == 1
    # a slot with no space before it gets the word without one
    e3 = encode_prompts([EX], bpe, "{sentence} It was:{mask}", "0=terrible|1=great", ("0", "1"), 64, "causal")
    assert bpe.convert_ids_to_tokens(e3.rows[0][1].tolist())[-1] == "great"
    # the mask at the start: predicted from the start token
    e4 = encode_prompts([EX], bpe, "{mask}: {sentence}", "0=terrible|1=great", ("0", "1"), 64, "causal")
    assert e4.choice_pos[0, 0, 0] == 0


def test_batches_of_prompt_rows(wordpiece):
    exs = [dict(EX, label=i % 2, text_a=f"movie number {i} " * (i + 1)) for i in range(5)]
    e = encode_prompts(exs, wordpiece, "{sentence} It was {mask}.", "0=unwatchable|1=great", ("0", "1"), 64,
                       "cloze")
    (b,) = list(batches(e, 8, shuffle=False, seed=0, epoch=0, pad_id=0, pad_to_multiple_of=8,
                        drop_remainder=False, pad_final=True))
    r = e.num_rows
    assert b["input_ids"].shape[0] == 8 * r and b["choice_row"].shape == (8, 2)
    assert b["example_mask"].tolist() == [1] * 5 + [0] * 3 and b["labels"][:5].tolist() == [0, 1, 0, 1, 0]
    for j in range(5):
        for q in range(2):
            row = b["input_ids"][b["choice_row"][j, q]]
            np.testing.assert_array_equal(row[: len(e.rows[j][e.choice_row[j, q]])], e.rows[j][e.choice_row[j, q]])
    assert b["choice_w"][5:].sum() == 0


def test_demonstrations_prefix(bpe):
    exs = [dict(EX, text_a=f"film {i}.", label=i % 2) for i in range(6)]
    ids, kept = demonstrations(exs, bpe, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 0, 10**6)
    text = bpe.decode(ids[1:])
    assert kept == 6 and text.count("It was great.\n") == 3 and text.count("It was terrible.\n") == 3
    again, _ = demonstrations(exs, bpe, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 0, 10**6)
    assert again == ids
    short, kept = demonstrations(exs, bpe, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 0, 20)
    assert len(short) <= 20 and 0 < kept < 6


def test_demonstrations_random_and_similar():
    from ftlab.prompts.demos import demo_template, with_demonstrations

    pool = [dict(EX, text_a=f"film {i}.", label=i % 2, source=f"p:{i}") for i in range(6)]
    out = with_demonstrations(pool, pool, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 0,
                              num_sets=2, pool_is_examples=True)
    assert len(out) == 12 and [o["text_a"] for o in out[:2]] == ["film 0."] * 2
    for i, o in enumerate(out):
        assert o["demos"].count("It was great.") == 1 and o["demos"].count("It was terrible.") == 1
        assert f"film {i // 2}. " not in o["demos"] + " "  # never itself
    again = with_demonstrations(pool, pool, "{sentence} It was {mask}.", "0=terrible|1=great", ("0", "1"), 0,
                                num_sets=2, pool_is_examples=True)
    assert again == out
    # 'similar': with 3 candidates per class and top 50% (round(1.5) = 2), a query equal to pool[4]'s embedding
    # picks among the two nearest of each class.
    emb = np.eye(6, dtype=np.float32)
    emb[2] = emb[4] = (np.eye(6)[2] + np.eye(6)[4]) / np.sqrt(2)  # 2 and 4 (class 0) are the same point
    q = emb[[4]]
    sim = with_demonstrations([dict(EX, label=0)], pool, "{sentence} It was {mask}.", "0=terrible|1=great",
                              ("0", "1"), 3, "similar", 8, (q, emb))
    assert all("film 2. It was terrible." in s["demos"] or "film 4. It was terrible." in s["demos"] for s in sim)
    assert demo_template("{sentence} It was {mask}.", "cloze") == "{sentence} It was {mask}. {demos}"
    assert demo_template("{sentence} It was {mask}.", "causal") == "{demos} {sentence} It was {mask}."


def test_encode_variants_merges_rows_and_choices(wordpiece):
    exs = [dict(EX, demos=f"demo {s}.") for s in range(3)] + [dict(EX, label=0, demos=f"other {s}.")
                                                             for s in range(3)]
    t = "{sentence} It was {mask}. {demos}"
    sep = encode_prompts(exs, wordpiece, t, "0=unwatchable|1=great", ("0", "1"), 64, "cloze")
    merged = encode_prompts(exs, wordpiece, t, "0=unwatchable|1=great", ("0", "1"), 64, "cloze", variants=3)
    assert len(merged) == 2 and merged.num_rows == 3 * sep.num_rows and merged.choice_pos.shape[1] == 6
    assert merged.labels.tolist() == [1, 0] and merged.choice_label.tolist() == [0, 1] * 3
    assert merged.choice_row[0].tolist() == [1, 0, 3, 2, 5, 4]
    with pytest.raises(ValueError, match="groups of variants=4"):
        encode_prompts(exs, wordpiece, t, "0=a|1=b", ("0", "1"), 64, "cloze", variants=4)
