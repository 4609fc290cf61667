"""K-shot splits following LM-BFF (Gao et al. 2021, `tools/generate_k_shot_data.py`), reproducible and checked.

For a task, K and a seed: the original train set is permuted with `np.random.RandomState(seed)` (the legacy
generator, whose stream NumPy keeps fixed across versions); walking the permutation, the first K examples of
each class form the K-shot train split and the next K of each class the K-shot dev split (disjoint; a class
with fewer than 2K examples gives what it has to dev, e.g. TREC's ABBR at K=64). Rows are grouped by class
(label order), in permutation order within a class. The test set is the task's original evaluation set
(`TEST_SPLIT`: GLUE's dev set for SST-2/MRPC/CoLA, ftlab's held-out 10% for MR, the test set for SST-5/TREC).

Files: `DIR/<task>/<K>-<seed>/{train,dev}.tsv`, UTF-8 TSVs with a header. For tasks read by `glue_tsv` (SST-2,
SST-5, MRPC) they are the original header line and the selected lines byte for byte, so the task's own reader
reads them; tasks stored in other formats (MR, TREC, CoLA, CR, MPQA) get `sentence<TAB>label` with the label
name. `DIR/manifest.json` (and the committed `ftlab/assets/kshot/manifest.json`) maps
"<task>/<K>-<seed>/<file>" to {"md5", "rows"}; `check` compares regenerated splits with it.

In training: `task.kshot="16-42"` samples the split in memory from the original data (and checks it against
the committed manifest when that holds the split), or reads it from `task.kshot_dir` when given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from ftlab.data.errors import DataError

SEEDS = (13, 21, 42, 87, 100)
KS = (4, 8, 16, 32, 64)
TASKS = ("sst2", "sst5", "mr", "trec", "mrpc")
TEST_SPLIT = {"sst2": "dev", "sst5": "test", "mr": "dev", "trec": "test", "mrpc": "dev", "cola": "dev",
              "cr": "dev", "mpqa": "dev", "subj": "dev"}
MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "kshot",
                        "manifest.json")
_GLUE_READERS = ("glue_tsv",)


def parse_spec(spec: str) -> tuple[int, int]:
    """"16-42" -> (16, 42)."""
    k, sep, seed = str(spec).partition("-")
    if not sep or not k.isdigit() or not seed.isdigit() or int(k) < 1:
        raise ValueError(f"k-shot spec {spec!r}: expected '<K>-<seed>', e.g. '16-42'")
    return int(k), int(seed)


def select(labels: list[int], num_labels: int, k: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the K-shot train and dev examples (see the module docstring)."""
    perm = np.random.RandomState(seed).permutation(len(labels))
    in_order = np.asarray(labels)[perm]
    train, dev = [], []
    for c in range(num_labels):
        of_c = perm[in_order == c].tolist()
        train += of_c[:k]
        dev += of_c[k : 2 * k]
    return train, dev


def _raw_lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def render(task: Any, examples: list[dict[str, Any]], cache: dict | None = None) -> bytes:
    """The TSV bytes of a K-shot split (format in the module docstring). `cache`: raw lines per source file,
    kept between calls."""
    if task.reader in _GLUE_READERS:
        cache = {} if cache is None else cache
        out = []
        for e in examples:
            path, _, line = e["source"].rpartition(":")
            if path not in cache:
                cache[path] = _raw_lines(path)
            if not out:
                out.append(cache[path][0].rstrip(b"\r\n") + b"\n")
            out.append(cache[path][int(line) - 1].rstrip(b"\r\n") + b"\n")
        return b"".join(out)
    if any(e.get("text_b") is not None for e in examples):
        raise DataError(f"task {task.name!r}: k-shot files for sentence-pair tasks need a GLUE-format reader")
    rows = ["sentence\tlabel\n"]
    for e in examples:
        if "\t" in e["text_a"] or "\n" in e["text_a"]:
            raise DataError(f"{e['source']}: text holds a tab or newline; it cannot be written as a TSV row")
        rows.append(f"{e['text_a']}\t{task.label_names[e['label']]}\n")
    return "".join(rows).encode("utf-8")


def sample(task: Any, data_dir: str | None, k: int, seed: int, examples: list | None = None,
           cache: dict | None = None) -> dict[str, bytes]:
    """{'train.tsv': bytes, 'dev.tsv': bytes} of the K-shot split of `task` from its original train set
    (`examples`: that set already read, when sampling many splits)."""
    if task.kind != "classification":
        raise DataError(f"k-shot splits are per class; task {task.name!r} is {task.kind}")
    if examples is None:
        examples = task.read("train", data_dir)
    train, dev = select([e["label"] for e in examples], task.num_labels, k, seed)
    return {"train.tsv": render(task, [examples[i] for i in train], cache),
            "dev.tsv": render(task, [examples[i] for i in dev], cache)}


def entries(task_name: str, k: int, seed: int, files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Manifest entries {"<task>/<K>-<seed>/<file>": {"md5", "rows"}} of rendered files."""
    return {f"{task_name}/{k}-{seed}/{name}": {"md5": hashlib.md5(data).hexdigest(), "rows": data.count(b"\n") - 1}
            for name, data in files.items()}


def load_manifest(path: str = MANIFEST) -> dict[str, dict[str, Any]]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)["files"]


def check(task_name: str, k: int, seed: int, files: dict[str, bytes], manifest: dict[str, Any],
          where: str = MANIFEST) -> None:
    """Raise `DataError` if regenerated `files` differ from the manifest's entries (when it has them)."""
    for key, want in entries(task_name, k, seed, files).items():
        have = manifest.get(key)
        if have is not None and have != want:
            raise DataError(f"k-shot split {key}: regenerated md5 {want['md5']} ({want['rows']} rows) differs "
                            f"from {where}: {have['md5']} ({have['rows']} rows); the source data differ from "
                            "the copy the manifest was made from")


def write(out_dir: str, task_name: str, k: int, seed: int, files: dict[str, bytes]) -> None:
    d = os.path.join(out_dir, task_name, f"{k}-{seed}")
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name + ".tmp"), "wb") as f:
            f.write(data)
        os.replace(os.path.join(d, name + ".tmp"), os.path.join(d, name))


def split_task(task: Any, split_dir: str) -> Any:
    """A copy of `task` whose train/dev splits are the K-shot files in `split_dir`."""
    columns = task.columns if task.reader in _GLUE_READERS else ("sentence", None, "label")
    return dataclasses.replace(task, reader="glue_tsv", columns=columns, encoding="utf-8", dirs=("",),
                               splits={s: os.path.join(os.path.abspath(split_dir), f"{s}.tsv")
                                       for s in ("train", "dev")})


def read(task: Any, split: str, data_dir: str | None, spec: str, kshot_dir: str = "") -> list[dict[str, Any]]:
    """Examples of `split` of the K-shot version `spec` ("16-42") of `task`: 'train' / 'dev' are the K-shot
    splits (from `kshot_dir`, or sampled now and checked against the committed manifest), 'test' is the
    task's original evaluation split (`TEST_SPLIT`)."""
    if split == "test":
        if task.name not in TEST_SPLIT:
            raise DataError(f"task {task.name!r} has no k-shot test split defined (tasks: {sorted(TEST_SPLIT)})")
        return task.read(TEST_SPLIT[task.name], data_dir)
    if split not in ("train", "dev"):
        raise DataError(f"k-shot splits are train, dev and test (the original {TEST_SPLIT.get(task.name)!r}); "
                        f"got {split!r}")
    k, seed = parse_spec(spec)
    if kshot_dir:
        split_dir = os.path.join(kshot_dir, task.name, f"{k}-{seed}")
        if not os.path.isdir(split_dir):
            raise DataError(f"k-shot split {spec} of task {task.name!r} not found at {split_dir} "
                            "(make it with scripts/make_kshot.py)")
    else:
        import tempfile

        files = sample(task, data_dir, k, seed)
        check(task.name, k, seed, files, load_manifest())
        with tempfile.TemporaryDirectory(prefix="ftlab-kshot-") as tmp:
            write(tmp, task.name, k, seed, files)
            split_dir = os.path.join(tmp, task.name, f"{k}-{seed}")
            examples = split_task(task, split_dir).read(split)
        for e in examples:  # name the split, not the deleted temporary file
            e["source"] = f"kshot:{task.name}/{k}-{seed}/{split}.tsv:" + e["source"].rpartition(":")[2]
        return examples
    return split_task(task, split_dir).read(split)
