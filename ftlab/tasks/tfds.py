"""Tasks backed by tensorflow-datasets: `get_task("tfds:glue/sst2", data_dir)`.

The task is built from the prepared dataset's own info (`dataset_info.json`), so no dataset code or network is
needed: text fields are recognised by the usual names (table below), the label is the `label` feature (a
ClassLabel gives a classification task with its class names, a float gives regression), and NER-style datasets
give a tagging task from `tokens` + a sequence of ClassLabel (`ner_tags`, `ner`, `tags`). Label -1 (GLUE test
splits) reads as None. `Task.splits` maps ftlab's split names to tfds' ("dev" -> "validation", or
"validation_matched" for MNLI) plus every tfds split under its own name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ftlab.data import tfds_source
from ftlab.data.errors import DataError
from ftlab.tasks import TASKS, Task

# (text_a, text_b) feature names, tried in order; the first fully present pair wins.
TEXT_FIELDS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("question", "passage"),
    ("sentence", None),
    ("text", None),
)
TAG_FIELDS = ("ner_tags", "ner", "tags")


def tfds_task(name: str, data_dir: str | None) -> Task:
    """A `Task` for tfds dataset `name`, from its prepared info under `data_dir`."""
    tfds = tfds_source._tfds()
    b = tfds_source.builder(name, data_dir)
    feats = b.info.features
    texts = {k for k, f in feats.items() if isinstance(f, tfds.features.Text)}
    splits = {s: s for s in b.info.splits}
    for dev in ("validation", "validation_matched", "dev"):
        if dev in splits:
            splits.setdefault("dev", dev)
            break
    # GLUE configs keep GLUE's metrics (e.g. MRPC F1, CoLA Matthews) when the label type agrees.
    known = TASKS.get(name.split("/")[-1].split(":")[0]) if name.startswith("glue/") else None
    tag_field = next((t for t in TAG_FIELDS if t in feats and "tokens" in feats), None)
    if tag_field is not None:
        names = _class_names(feats[tag_field], tfds)
        if names is None:
            raise DataError(f"tfds:{name}: tag feature {tag_field!r} is not a sequence of ClassLabel")
        kind, columns = "tagging", ("tokens", None, tag_field)
        metrics: tuple[str, ...] = ("f1", "precision", "recall")
    else:
        pair = next((p for p in TEXT_FIELDS if p[0] in texts and (p[1] is None or p[1] in texts)), None)
        if pair is None or "label" not in feats:
            raise DataError(
                f"tfds:{name}: cannot find text fields {[p for p in TEXT_FIELDS]} and a 'label' feature in "
                f"{sorted(feats.keys())}"
            )
        label = feats["label"]
        if isinstance(label, tfds.features.ClassLabel):
            kind, names = "classification", tuple(label.names)
        elif np.issubdtype(np.dtype(label.np_dtype), np.floating):
            kind, names = "regression", ()
        else:
            raise DataError(f"tfds:{name}: label feature {label} is neither a ClassLabel nor a float")
        columns = (pair[0], pair[1], "label")
        metrics = known.metrics if known is not None and known.kind == kind else _default_metrics(kind)
    return Task(
        name=f"tfds:{name}",
        kind=kind,
        label_names=names,
        metrics=metrics,
        main_metric=metrics[0],
        splits=splits,
        reader="tfds",
        dirs=(data_dir or "",),
        columns=columns,
    )


def _default_metrics(kind: str) -> tuple[str, ...]:
    return ("accuracy",) if kind == "classification" else ("pearson", "spearman")


def _class_names(feature: Any, tfds: Any) -> tuple[str, ...] | None:
    inner = getattr(feature, "feature", None)
    if isinstance(inner, tfds.features.ClassLabel):
        return tuple(inner.names)
    return None


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def read(task: Task, split: str, data_dir: str | None) -> list[dict[str, Any]]:
    """Examples of `split` in ftlab's example format; `source` is "tfds:<name>/<split>[i]"."""
    if split not in task.splits:
        raise DataError(f"task {task.name!r} has no split {split!r} (splits: {sorted(task.splits)})")
    name = task.name[len("tfds:") :]
    tfds_split = task.splits[split]
    src = tfds_source.data_source(
        name, tfds_split, data_dir if data_dir is not None else task.dirs[0] or None
    )
    a_col, b_col, label_col = task.columns
    out = []
    for i in range(len(src)):
        row = src[i]
        where = f"{task.name}/{tfds_split}[{i}]"
        if task.kind == "tagging":
            tags = [int(t) for t in np.asarray(row[label_col]).reshape(-1)]
            out.append({"tokens": [_text(t) for t in row[a_col]], "tags": tags, "source": where})
            continue
        raw = np.asarray(row[label_col]).item()
        if task.kind == "regression":
            label: int | float | None = float(raw)
        else:
            label = None if raw < 0 else int(raw)
            if label is not None and label >= task.num_labels:
                raise DataError(
                    f"{where}: label {raw} outside [0, {task.num_labels}) {list(task.label_names)}"
                )
        out.append(
            {
                "text_a": _text(row[a_col]),
                "text_b": _text(row[b_col]) if b_col else None,
                "label": label,
                "source": where,
            }
        )
    return out


def read_texts(name: str, split: str, field: str, data_dir: str | None) -> list[str]:
    """The `field` of every row of a prepared tfds dataset's split (LM text sources, ftlab.data.text)."""
    src = tfds_source.data_source(name, split, data_dir)
    out = []
    for i in range(len(src)):
        row = src[i]
        if field not in row:
            raise DataError(f"tfds:{name}/{split}[{i}]: no feature {field!r} (config key lm.field); "
                            f"features: {sorted(row)}")
        out.append(_text(row[field]))
    return out
