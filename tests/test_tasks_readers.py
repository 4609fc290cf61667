"""Task readers on the real staged files (counts and label distributions from shared/data/SOURCES.md), GLUE
fixtures in the published formats for the tasks not staged, bad input, user tasks and data-dir resolution."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from ftlab.data import DataError, resolve_data_dir
from ftlab.data.paths import SHIPPED_ROOT
from ftlab.tasks import TASKS, get_task, make_user_task, predictions_from_logits

# CI keeps the data beside the checkout: <repo>/../shared/data, resolved from this file, not the cwd.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"staged data not found at {DATA}")

# (task, split) -> (rows, {label index: count} or None) from SOURCES.md.
REAL = {
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "dev"): (872, {0: 428, 1: 444}),
    ("sst2", "test"): (1821, {None: 1821}),
    ("cola", "train"): (8551, {0: 2528, 1: 6023}),
    ("cola", "dev"): (1043, {0: 322, 1: 721}),
    ("cola", "test"): (1063, {None: 1063}),
    ("mrpc", "train"): (3668, {0: 1194, 1: 2474}),
    ("mrpc", "dev"): (408, {0: 129, 1: 279}),
    ("mrpc", "test"): (1725, {None: 1725}),
    ("stsb", "train"): (5749, None),
    ("stsb", "dev"): (1500, None),
    ("stsb", "test"): (1379, None),
    ("sst5", "train"): (8544, {0: 1092, 1: 2218, 2: 1624, 3: 2322, 4: 1288}),
    ("sst5", "dev"): (1101, {0: 139, 1: 289, 2: 229, 3: 279, 4: 165}),
    ("sst5", "test"): (2210, {0: 279, 1: 633, 2: 389, 3: 510, 4: 399}),
    ("trec", "train"): (5452, {0: 86, 1: 1162, 2: 1250, 3: 1223, 4: 835, 5: 896}),
    ("trec", "test"): (500, {0: 9, 1: 138, 2: 94, 3: 65, 4: 81, 5: 113}),
    ("cr", "train"): (3016, {0: 1078, 1: 1938}),
    ("cr", "dev"): (755, {0: 288, 1: 467}),
    ("subj", "train"): (8000, {0: 4012, 1: 3988}),
    ("subj", "dev"): (2000, {0: 988, 1: 1012}),
    ("mpqa", "train"): (8482, {0: 5852, 1: 2630}),
    ("mpqa", "dev"): (2121, {0: 1440, 1: 681}),
    ("imdb", "train"): (25000, {0: 12500, 1: 12500}),
    ("imdb", "test"): (25000, {0: 12500, 1: 12500}),
}


@needs_data
@pytest.mark.parametrize("task_name,split", sorted(REAL))
def test_real_counts_and_labels(task_name, split):
    task = get_task(task_name)
    examples = task.read(split, str(DATA))
    rows, dist = REAL[(task_name, split)]
    assert len(examples) == rows
    if dist is not None:
        assert dict(Counter(e["label"] for e in examples)) == dist
    e = examples[0]
    assert set(e) == {"text_a", "text_b", "label", "source"}
    assert isinstance(e["text_a"], str) and e["text_a"]
    assert (e["text_b"] is not None) == (task_name in ("mrpc", "stsb"))
    assert ":" in e["source"] and os.path.isfile(e["source"].rsplit(":", 1)[0])


@needs_data
def test_stsb_scores_are_floats_in_range():
    for split in ("train", "dev"):
        labels = [e["label"] for e in get_task("stsb").read(split, str(DATA))]
        assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
    assert get_task("stsb").read("train", str(DATA))[0]["label"] == 5.0


@needs_data
def test_mrpc_bom_header_and_first_row():
    ex = get_task("mrpc").read("train", str(DATA))[0]
    assert ex["label"] == 1 and ex["text_a"].startswith("Amrozi accused his brother")
    assert ex["text_b"].startswith("Referring to him as only")


@needs_data
def test_cola_headerless_rows():
    ex = get_task("cola").read("train", str(DATA))[0]
    assert ex == {
        "text_a": "Our friends won't buy this analysis, let alone the next one we propose.",
        "text_b": None,
        "label": 1,
        "source": f"{DATA}/cola/train.tsv:1",
    }


@needs_data
def test_conll_counts_and_tags():
    task = get_task("conll2003")
    sizes = {"train": (14041, 203621), "dev": (3250, 51362), "test": (3453, 46435)}
    read = {split: task.read(split, str(DATA)) for split in sizes}
    for split, (n_sent, n_tok) in sizes.items():
        ex = read[split]
        assert len(ex) == n_sent and sum(len(e["tokens"]) for e in ex) == n_tok
        assert all(len(e["tokens"]) == len(e["tags"]) for e in ex)
    first = read["train"][0]
    assert first["tokens"][:3] == ["EU", "rejects", "German"]
    assert [task.label_names[t] for t in first["tags"][:3]] == ["B-ORG", "O", "B-MISC"]
    assert first["source"] == f"{DATA}/conll2003/train.txt:3"


@needs_data
def test_mr_fixed_split():
    task = get_task("mr")
    train, dev = task.read("train", str(DATA)), task.read("dev", str(DATA))
    assert (len(train), len(dev)) == (9596, 1066)
    assert not {e["source"] for e in train} & {e["source"] for e in dev}
    assert Counter(e["label"] for e in train + dev) == {0: 5331, 1: 5331}
    assert [e["source"] for e in dev] == [e["source"] for e in task.read("dev", str(DATA))]
    # A NEL byte (0x85, latin-1) inside a sentence must not split the line.
    assert any("\x85" in e["text_a"] for e in train + dev)


def test_task_contract():
    for name, task in TASKS.items():
        assert task.name == name and task.main_metric in task.metrics
        assert task.num_labels == (1 if task.kind == "regression" else len(task.label_names))
    assert get_task("mrpc").metrics == ("f1", "accuracy") and get_task("mrpc").main_metric == "f1"
    assert get_task("qqp").main_metric == "f1"
    assert get_task("cola").main_metric == "matthews_corr"
    assert get_task("stsb").metrics == ("pearson", "spearman") and get_task("stsb").num_labels == 1
    assert get_task("conll2003").main_metric == "f1" and get_task("conll2003").num_labels == 9
    assert hash(get_task("sst2")) == hash(get_task("sst2"))
    with pytest.raises(KeyError, match="did you mean 'sst2'"):
        get_task("sst-2")


def test_predictions_from_logits():
    import numpy as np

    assert predictions_from_logits(get_task("sst2"), np.array([[0.1, 2.0], [3.0, -1.0]])).tolist() == [1, 0]
    assert predictions_from_logits(get_task("stsb"), np.array([[1.5], [2.5]])).tolist() == [1.5, 2.5]
    assert predictions_from_logits(get_task("conll2003"), np.zeros((2, 5, 9))).shape == (2, 5)


# ------------------------------------------------------------------------------- GLUE fixtures (published formats)

MNLI_HEAD = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"

FIXTURES = {
    "qqp": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n"
        "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n",
        "test.tsv": "id\tquestion1\tquestion2\n0\tWhy do rockets look white?\tWhy are rockets white?\n",
    },
    "mnli": {
        "train.tsv": MNLI_HEAD + "\tlabel1\tgold_label\n"
        "0\t31193\t31193n\tgovernment\t( ( Conceptually ...\t( ( Product ...\t(ROOT ...\t(ROOT ...\tConceptually cream skimming has two basic dimensions - product and geography.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n"
        '1\t101457\t101457e\ttelephone\t( you ...\t( You ...\t(ROOT ...\t(ROOT ...\tyou know during the season and i guess at at your level uh you lose them to the next level if "if"\tYou lose the things to the following level if the people recall.\tentailment\tentailment\n',
        "dev_matched.tsv": MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t63735\t63735n\tslate\t( ...\t( ...\t(ROOT ...\t(ROOT ...\tThe new rights are nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
        "dev_mismatched.tsv": MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t75290\t75290c\tletters\t( ...\t( ...\t(ROOT ...\t(ROOT ...\tYour contribution helped make it possible.\tYour contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n",
        "test_matched.tsv": MNLI_HEAD
        + "\n0\t31493\t31493\ttravel\t( ...\t( ...\t(ROOT ...\t(ROOT ...\tHierbas, ans seco, ans dulce.\tHierbas is a name.\n",
    },
    "qnli": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, it was darker.\tnot_entailment\n"
        "1\tWhich missile batteries often have individual launchers?\tThe SAM batteries had individual launchers.\tentailment\n",
        "test.tsv": "index\tquestion\tsentence\n0\tWhat organization is devoted to Jihad?\tFor some decades prior to the First Palestine Intifada.\n",
    },
    "rte": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
        "1\tA place of sorrow, after Pope John Paul II died.\tPope Benedict XVI is the new leader.\tentailment\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMaturity defaults.\tConsumers are rich.\n",
    },
    "wnli": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot had a hole.\t1\n"
        "1\tJohn couldn't see the stage with Billy in front of him because he is so short.\tJohn is so short.\t1\n"
        "2\tThe police arrested all of the gang members.\tThe police were trying to stop the gang.\t0\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMaria took the cake.\tThe cake was taken.\n",
    },
}


@pytest.fixture
def glue_dir(tmp_path):
    for task, files in FIXTURES.items():
        d = tmp_path / task.upper()  # GLUE's own folder names
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_glue_fixtures(glue_dir):
    qqp = get_task("qqp").read("train", str(glue_dir))
    assert [(e["text_a"][:6], e["text_b"][:5], e["label"]) for e in qqp] == [
        ("How is", "Which", 0),
        ("How do", "How d", 1),
    ]
    assert get_task("qqp").read("test", str(glue_dir))[0]["label"] is None
    mnli = get_task("mnli")
    assert [e["label"] for e in mnli.read("train", str(glue_dir))] == [2, 1]  # neutral, entailment
    assert mnli.read("train", str(glue_dir))[1]["text_a"].endswith('if "if"')  # quotes kept verbatim
    assert mnli.read("dev_matched", str(glue_dir))[0]["label"] == 2
    assert mnli.read("dev", str(glue_dir)) == mnli.read("dev_matched", str(glue_dir))
    assert mnli.read("dev_mismatched", str(glue_dir))[0]["label"] == 0
    t = mnli.read("test_matched", str(glue_dir))[0]
    assert (t["text_a"], t["text_b"], t["label"]) == (
        "Hierbas, ans seco, ans dulce.",
        "Hierbas is a name.",
        None,
    )
    with pytest.raises(DataError, match="test_mismatched.*file not found"):
        mnli.read("test_mismatched", str(glue_dir))
    qnli = get_task("qnli").read("train", str(glue_dir))
    assert [e["label"] for e in qnli] == [1, 0] and qnli[0]["text_a"].startswith("When did")
    assert [e["label"] for e in get_task("rte").read("train", str(glue_dir))] == [1, 0]
    assert [e["label"] for e in get_task("wnli").read("train", str(glue_dir))] == [1, 1, 0]
    for name in ("qnli", "rte", "wnli"):
        assert get_task(name).read("test", str(glue_dir))[0]["label"] is None


# ------------------------------------------------------------------------------------------------ bad input


def test_wrong_column_count_names_file_and_line(tmp_path):
    d = tmp_path / "sst2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\ngood movie\t1\nbad\tmovie\t0\n")
    with pytest.raises(DataError, match=r"sst2/train\.tsv:3: expected 2 tab-separated columns, found 3"):
        get_task("sst2").read("train", str(tmp_path))
    (tmp_path / "cola").mkdir()
    (tmp_path / "cola" / "train.tsv").write_text("src\t1\t\tfine sentence\nsrc\t0\tonly three\n")
    with pytest.raises(DataError, match=r"cola/train\.tsv:2: expected 4 tab-separated columns, found 3"):
        get_task("cola").read("train", str(tmp_path))


def test_label_outside_label_set(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t1\nodd\t2\n")
    with pytest.raises(
        DataError, match=r"SST-2/dev\.tsv:3: label '2' is not in the label set .*\['0', '1'\]"
    ):
        get_task("sst2").read("dev", str(tmp_path))
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\tfive\n")
    with pytest.raises(DataError, match=r"stsb/dev\.tsv:2: regression label 'five'"):
        get_task("stsb").read("dev", str(tmp_path))


def test_missing_file_and_label_column(tmp_path):
    with pytest.raises(DataError, match=r"task 'mrpc' split 'dev': file not found; tried .*mrpc/dev\.tsv"):
        get_task("mrpc").read("dev", str(tmp_path))
    with pytest.raises(DataError, match="has no split 'validation'"):
        get_task("mrpc").read("validation", str(tmp_path))
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "dev.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n")
    with pytest.raises(DataError, match="lacks the label column 'label'"):
        get_task("rte").read("dev", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        get_task("rte").read("dev", str(tmp_path / "nope"))


def test_bad_encoding_names_line(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_bytes(b"sentence\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: bytes .* not valid utf-8"):
        get_task("sst2").read("dev", str(tmp_path))


def test_conll_bad_rows(tmp_path):
    (tmp_path / "conll2003").mkdir()
    f = tmp_path / "conll2003" / "valid.txt"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(DataError, match=r"valid\.txt:4: expected 4 whitespace-separated columns, found 3"):
        get_task("conll2003").read("dev", str(tmp_path))
    f.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP B-FOO\n")
    with pytest.raises(DataError, match=r"valid\.txt:2: label 'B-FOO' is not in the label set"):
        get_task("conll2003").read("dev", str(tmp_path))


# ------------------------------------------------------------------------------------------------ user tasks


def test_user_jsonl_csv_tsv(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n', encoding="utf-8"
    )
    task = make_user_task(
        "mine", "classification", path_train=str(tmp_path / "train.jsonl"), label_names=("neg", "pos")
    )
    ex = task.read("train", None)
    assert [(e["text_a"], e["label"]) for e in ex] == [("good", 1), ("bad", 0)]
    assert ex[1]["source"].endswith("train.jsonl:3")
    (tmp_path / "bad.jsonl").write_text('{"text": "good", "label": "meh"}\n')
    bad = make_user_task(
        "mine", "classification", path_train=str(tmp_path / "bad.jsonl"), label_names=("neg", "pos")
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:1: label 'meh' is not in the label set"):
        bad.read("train")

    (tmp_path / "pairs.csv").write_text('a,b,y\n"x, with comma",second,1.5\n"multi\nline",z,2\n')
    reg = make_user_task(
        "pairs", "regression", path_dev=str(tmp_path / "pairs.csv"), text_fields=("a", "b"), label_field="y"
    )
    ex = reg.read("dev")
    assert [(e["text_a"], e["text_b"], e["label"]) for e in ex] == [
        ("x, with comma", "second", 1.5),
        ("multi\nline", "z", 2.0),
    ]
    assert ex[1]["source"].endswith("pairs.csv:3")

    (tmp_path / "t.tsv").write_text("text\tlabel\nhello\t1\n")
    assert (
        make_user_task(
            "t", "classification", path_train=str(tmp_path / "t.tsv"), label_names=("0", "1")
        ).read("train")[0]["label"]
        == 1
    )

    (tmp_path / "ner.jsonl").write_text(
        json.dumps({"tokens": ["Paris", "is"], "tags": ["B-LOC", "O"]}) + "\n"
    )
    ner = make_user_task(
        "ner",
        "tagging",
        path_train=str(tmp_path / "ner.jsonl"),
        text_fields=("tokens",),
        label_field="tags",
        label_names=("O", "B-LOC", "I-LOC"),
    )
    assert ner.read("train")[0]["tags"] == [1, 0]


def test_user_task_from_dir(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"q": "a", "p": "b", "label": 1}\n')
    (tmp_path / "task.json").write_text(
        json.dumps(
            {
                "kind": "classification",
                "splits": {"train": "train.jsonl"},
                "text_fields": ["q", "p"],
                "label_names": [0, 1],
            }
        )
    )
    task = get_task(f"jsonl:{tmp_path}")
    assert task.read("train")[0] == {
        "text_a": "a",
        "text_b": "b",
        "label": 1,
        "source": f"{tmp_path}/train.jsonl:1",
    }
    with pytest.raises(DataError, match="task.json not found"):
        get_task(f"csv:{tmp_path / 'nowhere'}")


# ------------------------------------------------------------------------------------------------ data dirs


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("FTLAB_DATA", raising=False)
    assert resolve_data_dir("sst2", None) == SHIPPED_ROOT
    with pytest.raises(DataError, match="FTLAB_DATA"):
        resolve_data_dir("mrpc", None)
    monkeypatch.setenv("FTLAB_DATA", str(tmp_path))
    assert resolve_data_dir("mrpc", None) == str(tmp_path)
    assert resolve_data_dir("sst2", None) == str(tmp_path)  # the env var wins over the shipped copy
    assert resolve_data_dir("sst2", str(DATA)) == str(DATA)


def test_shipped_sst2(monkeypatch):
    monkeypatch.delenv("FTLAB_DATA", raising=False)
    task = get_task("sst2")
    assert len(task.read("dev")) == 872
    assert os.path.getsize(task.path("train")) == 3806081
