"""tensorflow-datasets source without TensorFlow: build tiny ArrayRecord datasets offline, read them back."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_datasets") is None, reason="tfds missing"
)


def _prepare(data_dir):
    import tensorflow_datasets as tfds

    # The real GLUE schema (tfds glue 2.0.0: feature names, class names, idx), in tiny. skip_registration: the
    # reader must find the dataset from its files (dataset_info.json), as on a machine that only has the
    # prepared folder (tfds' own glue module is not importable without TensorFlow anyway).
    class Glue(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("2.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ("sst2", "stsb", "mrpc")]

        def _info(self):
            cfg = self.builder_config.name
            if cfg == "sst2":
                feats = {
                    "sentence": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["negative", "positive"]),
                }
            elif cfg == "mrpc":
                feats = {
                    "sentence1": tfds.features.Text(),
                    "sentence2": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["not_equivalent", "equivalent"]),
                }
            else:
                feats = {
                    "sentence1": tfds.features.Text(),
                    "sentence2": tfds.features.Text(),
                    "label": np.float32,
                }
            feats["idx"] = np.int32
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(feats))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6, False), "test": self._generate_examples(2, True)}

        def _generate_examples(self, n, test):
            cfg = self.builder_config.name
            for i in range(n):
                if cfg == "sst2":
                    row = {"sentence": f"sentence {i} café", "label": -1 if test else i % 2}
                elif cfg == "mrpc":
                    row = {"sentence1": f"a{i}", "sentence2": f"b{i}", "label": -1 if test else i % 2}
                else:
                    row = {"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i * 0.5}
                yield i, {**row, "idx": i}

    class TinyNer(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            tags = tfds.features.ClassLabel(names=["O", "B-PER", "I-PER"])
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "tokens": tfds.features.Sequence(tfds.features.Text()),
                        "ner_tags": tfds.features.Sequence(tags),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(), "validation": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"tokens": ["Ada", "Lovelace", "wrote"], "ner_tags": [1, 2, 0]}

    for cfg in ("sst2", "stsb", "mrpc"):
        Glue(config=cfg, data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    TinyNer(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    _prepare(d)
    return str(d)


def test_tfds_glue_like_tasks(tfds_dir):
    import sys

    from ftlab.data import DataError
    from ftlab.tasks import get_task

    assert "tensorflow" not in sys.modules  # the whole path runs without TensorFlow
    sst2 = get_task("tfds:glue/sst2", tfds_dir)
    assert (sst2.kind, sst2.label_names, sst2.metrics) == (
        "classification",
        ("negative", "positive"),
        ("accuracy",),
    )
    train = sst2.read("train", tfds_dir)
    assert sorted((e["text_a"], e["label"]) for e in train) == [
        (f"sentence {i} café", i % 2) for i in range(6)
    ]
    assert all(e["text_b"] is None and e["source"].startswith("tfds:glue/sst2/train[") for e in train)
    assert [e["label"] for e in sst2.read("test", tfds_dir)] == [None, None]

    stsb = get_task("tfds:glue/stsb", tfds_dir)
    assert stsb.kind == "regression" and stsb.num_labels == 1
    assert sorted((e["text_a"], e["text_b"], e["label"]) for e in stsb.read("train", tfds_dir))[1] == (
        "a1",
        "b1",
        0.5,
    )
    mrpc = get_task("tfds:glue/mrpc", tfds_dir)
    assert mrpc.kind == "classification" and mrpc.label_names == ("not_equivalent", "equivalent")
    assert mrpc.metrics == ("f1", "accuracy") and mrpc.main_metric == "f1"  # GLUE's metrics for glue/mrpc
    with pytest.raises(DataError, match="no split 'dev'"):
        sst2.read("dev", tfds_dir)
    with pytest.raises(DataError, match="not found"):
        get_task("tfds:nonexistent_ds/x", tfds_dir)
    assert "tensorflow" not in sys.modules


def test_tfds_tagging_and_dev_alias(tfds_dir):
    from ftlab.tasks import get_task

    task = get_task("tfds:tiny_ner", tfds_dir)
    assert (
        task.kind == "tagging"
        and task.label_names == ("O", "B-PER", "I-PER")
        and task.splits["dev"] == "validation"
    )
    assert task.read("dev", tfds_dir) == [
        {"tokens": ["Ada", "Lovelace", "wrote"], "tags": [1, 2, 0], "source": "tfds:tiny_ner/validation[0]"}
    ]


def test_tfds_text_source_for_lm_stages(tfds_dir):
    """tfds:<name>/<config>:<split> as an LM text source (ftlab.data.text): the feature's strings, in order."""
    from ftlab.data import DataError
    from ftlab.data.text import read_documents

    docs = read_documents("tfds:glue/sst2:train", data_dir=tfds_dir, field="sentence")
    assert sorted(docs) == sorted(f"sentence {i} café" for i in range(6))
    with pytest.raises(DataError, match="no feature 'text'"):
        read_documents("tfds:glue/sst2:train", data_dir=tfds_dir)
