"""Task definitions: for each benchmark, its reader, input fields, label space, metrics and split files.

A `Task` is a frozen record; `get_task(name)` looks it up in the plain `TASKS` dict below (no registry). The
training loop needs nothing else from a task:

    task = get_task("mrpc")
    examples = task.read("train", data_dir)     # [{'text_a', 'text_b', 'label', 'source'}, ...]
    ...
    scores = metrics.compute(task, predictions_from_logits(task, logits), references)
    dev_score = scores[task.main_metric]

Examples are dicts: `{'text_a': str, 'text_b': str | None, 'label': int | float | None, 'source': 'path:line'}`
for classification/regression, `{'tokens': [str], 'tags': [int], 'source': ...}` for tagging. Class labels are
indices into `task.label_names` (the label strings exactly as written in the files); test files without labels
give `label=None`.

Names accepted by `get_task`: the keys of `TASKS` (all nine GLUE tasks, conll2003, sst5, mr, trec, cr, subj,
mpqa, imdb); `tfds:<dataset>[/<config>]` (a prepared tensorflow-datasets directory, see `ftlab/tasks/tfds.py`);
`jsonl:<dir>` / `csv:<dir>` (a user task described by `<dir>/task.json`, see `make_user_task`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
from typing import Any

import numpy as np

from ftlab.data.errors import DataError
from ftlab.data.paths import resolve_data_dir  # re-exported: `from ftlab.tasks import resolve_data_dir`

KINDS = ("classification", "regression", "tagging", "masked_lm", "causal_lm")
LM_KINDS = ("masked_lm", "causal_lm")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task. `reader` names a function in `ftlab/tasks/readers.py`: `fn(path, task, split) -> examples`.

    `dirs`: folder names under the data root tried in order ("" = the root itself). `columns`: the reader's
    field names `(text_a, text_b or None, label)`. `splits` values may be absolute paths (user tasks).
    """

    name: str
    kind: str
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    splits: dict[str, str]
    reader: str
    dirs: tuple[str, ...] = ("",)
    columns: tuple[str | None, ...] = ()
    encoding: str = "utf-8"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} not in {KINDS}")
        if self.kind in ("regression", *LM_KINDS) and self.label_names:
            raise ValueError(f"task {self.name!r}: a {self.kind} task has no label_names")
        if self.kind in ("classification", "tagging") and len(self.label_names) < 2:
            raise ValueError(f"task {self.name!r}: {self.kind} needs at least 2 label_names")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"task {self.name!r}: duplicate label_names {self.label_names}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name!r}: main_metric {self.main_metric!r} not in {self.metrics}")

    # A dict field makes the generated hash fail; tasks are identified by their definition's immutable parts.
    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.label_names, self.reader, tuple(sorted(self.splits.items()))))

    @property
    def reads_pairs(self) -> bool:
        """True when the task's examples are sentence pairs (its columns name a second text field)."""
        return len(self.columns) > 1 and self.columns[1] is not None

    @property
    def num_labels(self) -> int:
        """Output width of the task head: number of classes / tags, 1 for regression."""
        return 1 if self.kind == "regression" else len(self.label_names)

    def path(self, split: str, data_dir: str | None = None) -> str:
        """The file of `split`: the first existing `<data_dir>/<dir>/<splits[split]>` over `dirs`."""
        if split not in self.splits:
            raise DataError(f"task {self.name!r} has no split {split!r} (splits: {sorted(self.splits)})")
        name = self.splits[split]
        if os.path.isabs(name):
            candidates = [name]
        else:
            root = resolve_data_dir(self.name, data_dir)
            candidates = [os.path.join(root, d, name) if d else os.path.join(root, name) for d in self.dirs]
        for c in candidates:
            if os.path.isfile(c):
                return c
        raise DataError(f"task {self.name!r} split {split!r}: file not found; tried {candidates}")

    def read(self, split: str, data_dir: str | None = None) -> list[dict[str, Any]]:
        """Examples of `split` read from `data_dir` (None: `$FTLAB_DATA`, or the shipped copy for sst2)."""
        if self.kind in LM_KINDS:
            raise DataError(f"task {self.name!r} reads raw text from the config's lm section (ftlab.data.text), "
                            "not split files")
        if self.reader == "tfds":  # no files: tfds resolves its own paths under data_dir
            return importlib.import_module("ftlab.tasks.tfds").read(self, split, data_dir)
        from ftlab.tasks import readers  # readers import Task for type hints only; import here avoids a cycle

        return getattr(readers, self.reader)(self.path(split, data_dir), self, split)

    def label_index(self, value: Any, where: str) -> int:
        """Index of a raw label value in `label_names`; `DataError` naming `where`, the value and the set."""
        key = value if isinstance(value, str) else str(value)
        try:
            return self.label_names.index(key)
        except ValueError:
            raise DataError(
                f"{where}: label {value!r} is not in the label set of task {self.name!r}: {list(self.label_names)}"
            ) from None


def predictions_from_logits(task: Task, logits: Any) -> np.ndarray:
    """Model outputs -> predictions: argmax over classes (`[N, C]` -> `[N]`, tagging `[N, T, C]` -> `[N, T]`),
    or the single regression output (`[N, 1]` or `[N]` -> `[N]`)."""
    logits = np.asarray(logits)
    if task.kind == "regression":
        if logits.ndim == 2 and logits.shape[1] == 1:
            return logits[:, 0]
        if logits.ndim != 1:
            raise ValueError(f"regression logits must be [N] or [N, 1], got shape {logits.shape}")
        return logits
    return np.argmax(logits, axis=-1)


# ------------------------------------------------------------------------------------------------ task table

_GLUE_SPLITS = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_ENTAIL = ("entailment", "not_entailment")
CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def _glue(
    name: str,
    dirs: tuple[str, ...],
    columns: tuple[str | None, ...],
    label_names: tuple[str, ...],
    metrics: tuple[str, ...] = ("accuracy",),
    kind: str = "classification",
    splits: dict[str, str] | None = None,
    reader: str = "glue_tsv",
) -> Task:
    return Task(
        name=name,
        kind=kind,
        label_names=label_names,
        metrics=metrics,
        main_metric=metrics[0],
        splits=dict(splits or _GLUE_SPLITS),
        reader=reader,
        dirs=dirs,
        columns=columns,
    )


TASKS: dict[str, Task] = {
    # GLUE (Wang et al. 2019), published TSV formats; columns are looked up by header name.
    "sst2": _glue("sst2", ("sst2", "SST-2"), ("sentence", None, "label"), ("0", "1")),
    # CoLA train/dev have no header (source, label, original mark, sentence); test has "index sentence".
    "cola": _glue(
        "cola",
        ("cola", "CoLA"),
        ("sentence", None, "label"),
        ("0", "1"),
        ("matthews_corr",),
        reader="cola_tsv",
    ),
    # MRPC's first line starts with a UTF-8 BOM; the label column is called "Quality".
    "mrpc": _glue(
        "mrpc", ("mrpc", "MRPC"), ("#1 String", "#2 String", "Quality"), ("0", "1"), ("f1", "accuracy")
    ),
    "stsb": _glue(
        "stsb",
        ("stsb", "STS-B"),
        ("sentence1", "sentence2", "score"),
        (),
        ("pearson", "spearman"),
        "regression",
    ),
    "qqp": _glue(
        "qqp", ("qqp", "QQP"), ("question1", "question2", "is_duplicate"), ("0", "1"), ("f1", "accuracy")
    ),
    # Label order as in Hugging Face's GLUE processors (contradiction, entailment, neutral). "dev" is an alias of
    # dev_matched, the split the GLUE leaderboard's MNLI-m number and most papers' dev scores use.
    "mnli": _glue(
        "mnli",
        ("mnli", "MNLI"),
        ("sentence1", "sentence2", "gold_label"),
        ("contradiction", "entailment", "neutral"),
        splits={
            "train": "train.tsv",
            "dev": "dev_matched.tsv",
            "dev_matched": "dev_matched.tsv",
            "dev_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
    ),
    "qnli": _glue("qnli", ("qnli", "QNLI"), ("question", "sentence", "label"), _ENTAIL),
    "rte": _glue("rte", ("rte", "RTE"), ("sentence1", "sentence2", "label"), _ENTAIL),
    "wnli": _glue("wnli", ("wnli", "WNLI"), ("sentence1", "sentence2", "label"), ("0", "1")),
    # CoNLL-2003 English NER (Tjong Kim Sang & De Meulder 2003), IOB2 tags in the last column.
    "conll2003": Task(
        name="conll2003",
        kind="tagging",
        label_names=CONLL_TAGS,
        metrics=("f1", "precision", "recall"),
        main_metric="f1",
        splits={"train": "train.txt", "dev": "valid.txt", "test": "test.txt"},
        reader="conll",
        dirs=("conll2003", "CoNLL-2003", "conll"),
    ),
    # SST-5 (Socher et al. 2013): "label<TAB>sentence" with a header, derived from the PTB trees' root labels.
    "sst5": _glue("sst5", ("sst5", "SST-5"), ("sentence", None, "label"), ("0", "1", "2", "3", "4")),
    # MR (Pang & Lee 2005): no official split; `readers.mr_polarity` documents the fixed 90/10 split.
    "mr": Task(
        name="mr",
        kind="classification",
        label_names=("neg", "pos"),
        metrics=("accuracy",),
        main_metric="accuracy",
        splits={"train": "rt-polarity.pos", "dev": "rt-polarity.pos"},
        reader="mr_polarity",
        dirs=("mr", "MR", "rt-polaritydata"),
        encoding="latin-1",
    ),
    # TREC question classification (Li & Roth 2002), the 6 coarse classes; there is no dev split.
    "trec": Task(
        name="trec",
        kind="classification",
        label_names=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"),
        metrics=("accuracy",),
        main_metric="accuracy",
        splits={"train": "train_5500.label", "test": "TREC_10.label"},
        reader="trec",
        dirs=("trec", "TREC"),
        encoding="latin-1",
    ),
    # IMDB (Maas et al. 2011) as "label rating id text" TSVs; there is no dev split.
    # Language-model stages (domain/task-adaptive pre-training): the text comes from the config's `lm` section
    # (ftlab.data.text, ftlab.train.lm); the metrics are the eval text's loss and perplexity (lower is better).
    "mlm": Task("mlm", "masked_lm", (), ("perplexity", "loss"), "perplexity", {}, "text"),
    "clm": Task("clm", "causal_lm", (), ("perplexity", "loss"), "perplexity", {}, "text"),
    "imdb": _glue(
        "imdb",
        ("imdb",),
        ("text", None, "label"),
        ("0", "1"),
        splits={"train": "train.tsv.gz", "test": "test.tsv.gz"},
    ),
}

# CR / SUBJ / MPQA: the lowercased, re-split SentEval variant staged in senteval_preprocessed/ ("label<TAB>text",
# no header, dev.tsv is the held-out split).
for _name in ("cr", "subj", "mpqa"):
    TASKS[_name] = Task(
        name=_name,
        kind="classification",
        label_names=("0", "1"),
        metrics=("accuracy",),
        main_metric="accuracy",
        splits={"train": "train.tsv", "dev": "dev.tsv"},
        reader="label_text_tsv",
        dirs=(_name, _name.upper(), f"senteval_preprocessed/{_name}"),
    )


def get_task(name: str, data_dir: str | None = None) -> Task:
    """The task called `name` (see the module docstring for accepted names).

    `data_dir` is only consulted for `tfds:` names, whose label set is read from the prepared dataset's info.
    """
    if name in TASKS:
        return TASKS[name]
    prefix, _, rest = name.partition(":")
    if prefix == "tfds" and rest:
        return importlib.import_module("ftlab.tasks.tfds").tfds_task(rest, data_dir)
    if prefix in ("jsonl", "csv", "tsv") and rest:
        return _user_task_from_dir(prefix, rest)
    close = difflib.get_close_matches(name, list(TASKS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(
        f"unknown task {name!r}{hint} (known: {sorted(TASKS)}, or 'tfds:<name>', 'jsonl:<dir>', 'csv:<dir>')"
    )


# ------------------------------------------------------------------------------------------------ user tasks

_DEFAULT_METRICS = {
    "classification": ("accuracy",),
    "regression": ("pearson", "spearman"),
    "tagging": ("f1", "precision", "recall"),
}


def make_user_task(
    name: str,
    kind: str,
    *,
    paths: dict[str, str] | None = None,
    path_train: str | None = None,
    path_dev: str | None = None,
    path_test: str | None = None,
    text_fields: tuple[str, ...] = ("text",),
    label_field: str = "label",
    label_names: tuple[str, ...] = (),
    metrics: tuple[str, ...] | None = None,
    main_metric: str | None = None,
    file_format: str | None = None,
    encoding: str = "utf-8",
) -> Task:
    """A task over the user's own JSONL / CSV / TSV files (format from the extension unless `file_format`).

    Classification/regression rows carry `text_fields` (one field, or two for sentence pairs) and `label_field`;
    JSON labels may be strings or integers and are matched against `label_names` as strings. Tagging rows
    (JSONL only) carry a list of tokens in `text_fields[0]` and a list of tag strings in `label_field`.
    CSV files need a header; TSV files need a header line naming the columns.
    """
    paths = dict(paths or {})
    for split, p in (("train", path_train), ("dev", path_dev), ("test", path_test)):
        if p is not None:
            paths[split] = p
    if not paths:
        raise ValueError(
            f"user task {name!r}: give at least one file (path_train=..., or paths={{split: path}})"
        )
    if not 1 <= len(text_fields) <= 2:
        raise ValueError(f"user task {name!r}: text_fields must name 1 or 2 fields, got {text_fields}")
    if kind == "tagging" and len(text_fields) != 1:
        raise ValueError(f"user task {name!r}: tagging takes one tokens field, got {text_fields}")
    formats = set()
    for p in paths.values():
        stem = p[:-3] if p.endswith(".gz") else p
        formats.add(file_format or os.path.splitext(stem)[1].lstrip("."))
    if len(formats) != 1 or next(iter(formats)) not in ("jsonl", "csv", "tsv"):
        raise ValueError(
            f"user task {name!r}: files must all be .jsonl, .csv or .tsv (got {sorted(formats)})"
        )
    fmt = formats.pop()
    if kind == "tagging" and fmt != "jsonl":
        raise ValueError(f"user task {name!r}: tagging data must be JSONL (tokens and tags lists)")
    metrics = tuple(metrics or _DEFAULT_METRICS[kind])
    return Task(
        name=name,
        kind=kind,
        label_names=tuple(label_names),
        metrics=metrics,
        main_metric=main_metric or metrics[0],
        splits={k: os.path.abspath(v) for k, v in paths.items()},
        reader=f"user_{fmt}",
        dirs=("",),
        columns=(text_fields[0], text_fields[1] if len(text_fields) == 2 else None, label_field),
        encoding=encoding,
    )


_USER_KEYS = {
    "name",
    "kind",
    "splits",
    "text_fields",
    "label_field",
    "label_names",
    "metrics",
    "main_metric",
    "encoding",
}


def _user_task_from_dir(fmt: str, directory: str) -> Task:
    """`jsonl:<dir>`: the task described by `<dir>/task.json`, whose `splits` map split -> file name in `<dir>`."""
    spec_path = os.path.join(directory, "task.json")
    if not os.path.isfile(spec_path):
        raise DataError(
            f"task '{fmt}:{directory}': {spec_path} not found; it must hold "
            '{"kind": ..., "splits": {"train": "train.' + fmt + '", ...}, "label_names": [...], ...}'
        )
    try:
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{spec_path}: invalid JSON ({e})") from None
    unknown = set(spec) - _USER_KEYS
    if unknown or "kind" not in spec or "splits" not in spec:
        raise DataError(
            f"{spec_path}: needs 'kind' and 'splits'; unknown keys {sorted(unknown)} (valid: {sorted(_USER_KEYS)})"
        )
    return make_user_task(
        spec.get("name", f"{fmt}:{directory}"),
        spec["kind"],
        paths={k: os.path.join(directory, v) for k, v in spec["splits"].items()},
        text_fields=tuple(spec.get("text_fields", ("text",))),
        label_field=spec.get("label_field", "label"),
        label_names=tuple(str(x) for x in spec.get("label_names", ())),
        metrics=tuple(spec["metrics"]) if "metrics" in spec else None,
        main_metric=spec.get("main_metric"),
        file_format=fmt,
        encoding=spec.get("encoding", "utf-8"),
    )
