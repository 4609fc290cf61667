"""Counterfactual data augmentation (ftlab.data.counterfactual): word swaps (case, punctuation, her/his, no
double swap), sentence pairs and tagging, augmentation modes, pair-file and config errors, the loop's train-split
hook, the committed probe set regenerating identically, and (slow) a tiny run probed by scripts/counterfactual.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab.data import counterfactual as cda
from ftlab.data.errors import DataError


@pytest.fixture(scope="module")
def swaps():
    return cda.load_pairs()


def sw(text, swaps):
    return cda.swap_text(text, swaps)[0]


# ---------------------------------------------------------------------------------------------- swapping
def test_case_is_preserved(swaps):
    assert sw("he", swaps) == "she"
    assert sw("He", swaps) == "She"
    assert sw("HE", swaps) == "SHE"
    assert sw("King", swaps) == "Queen"
    assert sw("QUEEN", swaps) == "KING"
    assert sw("James", swaps) == "Mary"


def test_punctuation_and_word_boundaries(swaps):
    assert cda.swap_text("He thanked HER mother.", swaps) == ("She thanked HIS father.", 3)
    assert sw("(he) -- she's here; his?", swaps) == "(she) -- he's here; hers?"
    assert sw("mr. smith, the actor's wife", swaps) == "mrs. smith, the actress's husband"
    assert sw("my father-in-law", swaps) == "my mother-in-law"
    assert sw("  spaces\tand\ttabs  he  ", swaps) == "  spaces\tand\ttabs  she  "
    assert sw("he2 she_x 3he", swaps) == "she2 he_x 3she"  # digits and underscores delimit words too


def test_words_not_in_the_list_are_untouched(swaps):
    for text in ("the cat sat on the mat .", "heron shell theme human mankind", "Hero-ism", "hereby", ""):
        out, n = cda.swap_text(text, swaps)
        if text == "Hero-ism":  # 'hero' is a word of its own before the hyphen
            assert out == "Heroine-ism" and n == 1
        else:
            assert (out, n) == (text, 0)


def test_no_double_swap_and_round_trip(swaps):
    assert sw("he and she", swaps) == "she and he"
    assert sw("she she he he", swaps) == "he he she she"
    assert sw("man woman men women", swaps) == "woman man women men"
    text = "The king told the queen that his son and her daughter, John and Mary, were actors."
    once = sw(text, swaps)
    assert once == "The queen told the king that her daughter and his son, Patricia and James, were actresses."
    # every two-way pair is an involution: swapping twice gives the original word back
    for word, partner in swaps.table.items():
        if swaps.table.get(partner) == word:
            assert sw(sw(word, swaps), swaps) == word


def test_her_and_his_follow_the_next_word(swaps):
    assert sw("told her that", swaps) == "told him that"
    assert sw("her film", swaps) == "his film"
    assert sw("her own best film", swaps) == "his own best film"
    assert sw("gave her the book", swaps) == "gave him the book"
    assert sw("loved her .", swaps) == "loved him ."
    assert sw("loved her", swaps) == "loved him"
    assert sw("his film", swaps) == "her film"
    assert sw("the film is his .", swaps) == "the film is hers ."
    assert sw("hers is better", swaps) == "his is better"
    assert sw("she gave it to him.", swaps) == "he gave it to her."
    assert sw("Her work", swaps) == "His work" and sw("HIS!", swaps) == "HERS!"


def test_sentence_pairs_swap_both_sides_consistently(swaps):
    ex = {"text_a": "Robert saw his sister.", "text_b": "He saw her.", "label": 1, "source": "f.tsv:3"}
    out, n = cda.swap_example(ex, swaps)
    assert out == {"text_a": "Jennifer saw her brother.", "text_b": "She saw him.", "label": 1, "source": "f.tsv:3"}
    assert n == 5 and ex["text_a"] == "Robert saw his sister."  # the input is not modified
    single = {"text_a": "a man", "text_b": None, "label": 0, "source": "s:1"}
    assert cda.swap_example(single, swaps)[0]["text_b"] is None


def test_tagging_tokens_swap_in_place(swaps):
    ex = {"tokens": ["John", "met", "her", "in", "Paris", "."], "tags": [1, 0, 0, 0, 5, 0], "source": "c:2"}
    out, n = cda.swap_example(ex, swaps)
    assert out["tokens"] == ["Patricia", "met", "him", "in", "Paris", "."] and out["tags"] == ex["tags"] and n == 2
    with pytest.raises(DataError, match="c:9"):
        cda.swap_example({"tokens": ["a b"], "tags": [0], "source": "c:9"}, swaps)


# ---------------------------------------------------------------------------------------------- augmentation
def _examples():
    return [{"text_a": "a fine film .", "text_b": None, "label": 1, "source": "t.tsv:2"},
            {"text_a": "he is great .", "text_b": None, "label": 1, "source": "t.tsv:3"},
            {"text_a": "dull .", "text_b": None, "label": 0, "source": "t.tsv:4"},
            {"text_a": "her worst role", "text_b": None, "label": 0, "source": "t.tsv:5"}]


def test_augment_add_keeps_originals_and_adds_swapped_copies(swaps):
    ex = _examples()
    out, n = cda.augment(ex, "add", swaps)
    assert n == 2 and len(out) == 6
    assert [e["source"] for e in out] == ["t.tsv:2", "t.tsv:3", "t.tsv:3#cda", "t.tsv:4", "t.tsv:5", "t.tsv:5#cda"]
    assert out[2]["text_a"] == "she is great ." and out[5]["text_a"] == "his worst role"
    assert out[2]["label"] == 1 and out[5]["label"] == 0
    assert ex == _examples()  # inputs unchanged


def test_augment_replace_swaps_in_place(swaps):
    out, n = cda.augment(_examples(), "replace", swaps)
    assert n == 2 and [e["text_a"] for e in out] == ["a fine film .", "she is great .", "dull .", "his worst role"]
    assert [e["source"] for e in out] == ["t.tsv:2", "t.tsv:3#cda", "t.tsv:4", "t.tsv:5#cda"]
    with pytest.raises(ValueError, match="augment mode 'both'"):
        cda.augment(_examples(), "both", swaps)


# ---------------------------------------------------------------------------------------------- pair files
def _pairs(tmp_path, text):
    p = tmp_path / "pairs.tsv"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_shipped_list(swaps):
    assert swaps.source == cda.PAIRS_FILE
    with open(cda.PAIRS_FILE, encoding="utf-8") as f:
        pairs = [ln for ln in f if ln.strip() and not ln.startswith("#")]
    assert len(pairs) >= 250  # a few hundred pairs: pronouns, nouns, titles, first names
    assert swaps.context == {"her": ("his", "him"), "his": ("her", "hers")}
    for m, f in (("he", "she"), ("him", "her"), ("himself", "herself"), ("man", "woman"), ("king", "queen"),
                 ("actor", "actress"), ("james", "mary"), ("michael", "linda")):
        assert (swaps.table.get(m), swaps.table.get(f)) in ((f, m), (None, m), (f, None)), (m, f)
    assert swaps.table["ms"] == "mr" and swaps.table["mr"] == "mrs"  # one-way line: ms -> mr only
    assert swaps.table["bridegroom"] == "bride" and swaps.table["bride"] == "groom"


def test_custom_list_and_directions(tmp_path):
    s = cda.load_pairs(_pairs(tmp_path, "# comment\n\nlion\tlioness\nstag\thind\t>\ncob\tpen\t<  # swans\n"))
    assert s.table == {"lion": "lioness", "lioness": "lion", "stag": "hind", "pen": "cob"}
    assert cda.swap_text("Lion, stag, hind, cob, pen.", s) == ("Lioness, hind, hind, cob, cob.", 3)


@pytest.mark.parametrize("text,match", [
    ("he\tshe\nman\n", r"pairs.tsv:2: expected 'male<TAB>female"),
    ("he\tshe\tboth\textra\n", r"pairs.tsv:1: expected"),
    ("he\tshe\t<>\n", r"pairs.tsv:1: direction '<>'"),
    ("He\tshe\n", r"pairs.tsv:1: 'He' must be lower case"),
    ("he\tsh3\n", r"pairs.tsv:1: 'sh3' is not a single word"),
    ("he\the\n", r"pairs.tsv:1: 'he' is paired with itself"),
    ("he\tshe\nshe\tit\n", r"pairs.tsv:2: 'she' is listed as male here but as female on line 1"),
    ("he\tshe\nhe\tshe\n", r"pairs.tsv:2: 'he' -> 'she' is already on line 1"),
    ("mr\tmrs\nmr\tms\n", r"pairs.tsv:2: 'mr' already has the partner 'mrs' \(line 1\)"),
    ("him\ther\nhis\ther\nit\ther\n", r"pairs.tsv:3: 'her' has the partners"),
])
def test_malformed_pair_files_name_file_and_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        cda.load_pairs(_pairs(tmp_path, text))


def test_missing_pair_file(tmp_path):
    with pytest.raises(DataError, match="word-pair file not found"):
        cda.load_pairs(str(tmp_path / "nope.tsv"))


# ---------------------------------------------------------------------------------------------- config
def test_config_values_are_checked(tmp_path):
    from ftlab.train.loop import default_config

    t = default_config().task
    assert (t.augment, t.augment_mode, t.augment_pairs) == ("none", "add", "")
    assert cda.check_config(t) == ("none", "add", "")
    assert cda.check_config({}) == ("none", "add", "")  # a config saved before CDA existed
    for key, value, match in (("augment", "eda", "task.augment='eda'"),
                              ("augment_mode", "both", "task.augment_mode='both'"),
                              ("augment_pairs", str(tmp_path), "set but task.augment is 'none'")):
        bad = config_lib.Config(dict(t))
        bad[key] = value
        with pytest.raises(config_lib.ConfigError, match=match):
            cda.check_config(bad)
    bad = config_lib.Config(dict(t, augment="cda", augment_pairs=str(tmp_path / "missing.tsv")))
    with pytest.raises(config_lib.ConfigError, match="missing.tsv.*file not found"):
        cda.check_config(bad)


def test_old_configs_without_the_keys_still_resume():
    from ftlab.train import loop

    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py"))
    old = cfg.to_dict()
    for k in ("augment", "augment_mode", "augment_pairs"):
        del old["task"][k]
    ignore = loop.RESUME_IGNORED_KEYS
    assert config_lib.fingerprint(loop.with_defaults(old), ignore=ignore) == config_lib.fingerprint(cfg, ignore=ignore)
    cda_cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_cda.py"))
    assert config_lib.fingerprint(cda_cfg, ignore=ignore) != config_lib.fingerprint(
        config_lib.load(os.path.join(REPO, "configs", "sst2_cda.py:none")), ignore=ignore)


def test_loop_hook_augments_the_train_split_only(capsys, tmp_path):
    """`_load_split` on the first lines of the shipped SST-2 copy: the subset is drawn first, then augmented;
    dev is untouched."""
    import transformers
    from conftest import minilm_dir

    from ftlab.data.paths import SHIPPED_ROOT
    from ftlab.tasks import get_task
    from ftlab.train import loop

    os.makedirs(tmp_path / "sst2")
    for split, n in (("train", 1000), ("dev", 873)):
        with open(os.path.join(SHIPPED_ROOT, "sst2", f"{split}.tsv"), encoding="utf-8") as f:
            (tmp_path / "sst2" / f"{split}.tsv").write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    task = get_task("sst2")
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_cda.py:none"))
    cfg.task.data_dir = str(tmp_path)
    plain, plain_enc = loop._load_split(cfg, task, tok, "train", 300)
    cfg.task.augment = "cda"
    ex, enc = loop._load_split(cfg, task, tok, "train", 300)
    swapped = [e for e in ex if e["source"].endswith("#cda")]
    assert swapped and len(ex) == 300 + len(swapped) == len(enc)
    assert [e for e in ex if not e["source"].endswith("#cda")] == plain  # the same subset, then augmented
    assert f"{len(swapped)} of 300 train examples hold a listed word -> {len(ex)} train examples" in capsys.readouterr().err
    dev, _ = loop._load_split(cfg, task, tok, "dev", 0)
    assert len(dev) == 872 and not any(e["source"].endswith("#cda") for e in dev)
    cfg.task.augment_mode = "replace"
    rep, _ = loop._load_split(cfg, task, tok, "train", 300)
    assert len(rep) == 300 and sum(e["source"].endswith("#cda") for e in rep) == len(swapped)
    cfg.task.augment = "swap"
    with pytest.raises(config_lib.ConfigError, match="task.augment='swap'"):
        loop._load_split(cfg, task, tok, "train", 300)
    cfg.task.augment = "cda"
    with pytest.raises(config_lib.ConfigError, match="LM text .task 'mlm'. is not augmented"):
        loop._load_split(cfg, get_task("mlm"), tok, "train", 0)


# ---------------------------------------------------------------------------------------------- probe set
def test_probe_regenerates_identically():
    from ftlab.data.paths import SHIPPED_ROOT

    if not os.path.isfile(os.path.join(SHIPPED_ROOT, "sst2", "dev.tsv")):
        pytest.skip("the SST-2 dev copy is not present")
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import make_cda_probe
    finally:
        sys.path.pop(0)
    with open(cda.PROBE_FILE, encoding="utf-8") as f:
        assert make_cda_probe.probe_text("sst2") == f.read()
    rows = cda.read_probe()
    assert 100 <= len(rows) <= 300 and [r["id"] for r in rows] == list(range(len(rows)))
    assert all(r["source"].startswith("sst2/dev.tsv:") and r["label"] in (0, 1) for r in rows)
    assert all(r["text"] != r["swapped"] and r["swaps"] for r in rows)


@pytest.mark.slow
def test_imdb_probe_regenerates_identically(shared_data):
    """Reads the 25,000 IMDB test reviews (about 10 s): the committed probe is what the script writes."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import make_cda_probe
    finally:
        sys.path.pop(0)
    with open(make_cda_probe.FILES["imdb"], encoding="utf-8") as f:
        assert make_cda_probe.probe_text("imdb", shared_data) == f.read()
    rows = cda.read_probe(make_cda_probe.FILES["imdb"])
    assert len(rows) == 2 * make_cda_probe.IMDB_PER_LABEL and sum(r["label"] for r in rows) == len(rows) // 2
    assert len({r["source"] for r in rows}) == len(rows)  # one sentence per review


def test_probe_file_errors(tmp_path):
    p = tmp_path / "probe.tsv"
    p.write_text("id\tsource\tlabel\ttext\n0\ts\t1\tx\n")
    with pytest.raises(DataError, match="probe.tsv:1: header"):
        cda.read_probe(str(p))
    p.write_text("\t".join(cda.PROBE_COLUMNS) + "\n0\ts\tpos\the>she\the\tshe\n")
    with pytest.raises(DataError, match="probe.tsv:2: id and label must be integers"):
        cda.read_probe(str(p))


@pytest.mark.slow
def test_tiny_run_with_cda_and_probe_script(tmp_path, tiny_bert_dir):
    """A tiny CDA run end to end, then scripts/counterfactual.py on it: JSON and markdown with the flip rate."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    wd = tmp_path / "run"
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
                        os.path.join(REPO, "configs", "sst2_cda.py:runlocal"), "--workdir", str(wd),
                        f"--config.model.name={tiny_bert_dir}", "--config.task.max_length=32",
                        "--config.train.pad_to_multiple_of=32", "--config.train.progress=false",
                        "--config.train.eval_batch_size=256"], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "counterfactual augmentation (cda, add)" in p.stderr
    r = json.load(open(wd / "results.json"))
    assert r["train_examples"] > 256
    out = tmp_path / "cf"
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "counterfactual.py"), "--workdir", str(wd),
                        "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(str(out) + ".json"))
    run = res["runs"][0]
    assert run["augment"] == "cda" and set(run["probes"]) == {"sst2_dev", "imdb_test"}
    q = run["probes"]["sst2_dev"]
    assert q["n_pairs"] == len(cda.read_probe())
    assert 0.0 <= q["flip_rate"] <= 1.0 and q["flips"] == len(q["flipped"]) == round(q["flip_rate"] * q["n_pairs"])
    assert res["paired"] == {"sst2_dev": [], "imdb_test": []}  # no run without augmentation to pair with
    assert "flip rate" in open(str(out) + ".md").read()
