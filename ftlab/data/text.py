"""Raw text for language-model objectives: documents from a source, tokenised and packed into fixed blocks.

    docs = read_documents("imdb/unsup.txt.gz", data_dir=...)       # list[str], one per document
    enc = pack(docs, tokenizer, block_size=128, objective="mlm")    # LMEncoded: [N, block_size] rows

A *source* is one string:

    path.txt | path.txt.gz           one document per line (blank lines skipped); relative paths are tried
                                     against the data root ($FTLAB_DATA / task.data_dir) after the cwd
    path.jsonl | path.jsonl.gz       one JSON object per line; the document is its `field` ("text" by default)
    task:<name>:<split>              the text of a task's split (text_a, then text_b after a space), e.g.
                                     task:imdb:train: task-adaptive pre-training on the task's own inputs
    tfds:<name>[/<config>]:<split>   a prepared tensorflow-datasets dataset's `field` (see ftlab/tasks/tfds.py)

Packing (`pack`) follows BERT / HF's `run_mlm.py` and `run_clm.py` "group_texts": documents are tokenised
without special tokens and concatenated into one stream with a separator after every document ([SEP] for
encoders, EOS for decoders), the stream is cut into chunks and the final incomplete chunk is dropped.
Encoders wrap every chunk as `[CLS] chunk [SEP]` (block_size − 2 stream tokens per row); decoders use
block_size stream tokens per row (with BOS in front of every document when the tokenizer has one).
Attention is not masked at document boundaries (as in both references).

`LMEncoded` plugs into `ftlab.data.batching.batches` like any encoded split (all rows have the same length,
so every batch has width block_size): its `collate` gives input_ids, attention_mask, token_type_ids (zeros,
encoders), labels (a copy of input_ids: the causal loss shifts them; the masked-LM step replaces them with
the masked positions' targets), example_mask and index.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ftlab.data.errors import DataError

OBJECTIVES = ("mlm", "clm")


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _find(path: str, data_dir: str | None) -> str:
    tried = [path]
    if os.path.isfile(path):
        return path
    roots = [r for r in (data_dir, os.environ.get("FTLAB_DATA")) if r]
    for r in roots:
        cand = os.path.join(r, path)
        tried.append(cand)
        if os.path.isfile(cand):
            return cand
    raise DataError(f"text source {path!r}: file not found; tried {tried}")


def read_documents(source: str, data_dir: str | None = None, field: str = "text", max_documents: int = 0,
                   subset_seed: int = 42) -> list[str]:
    """The documents of `source` (see the module docstring), in order.

    `max_documents` > 0 keeps that many: the first ones for files, a random subset drawn exactly as
    `task.train_subset` draws a task's examples (same `subset_seed` -> the same examples) for `task:` sources,
    so task-adaptive pre-training sees precisely the inputs the task stage trains on."""
    if not source:
        raise DataError("no text source given (config key lm.train / lm.eval)")
    if source.startswith("task:"):
        parts = source.split(":")
        if len(parts) != 3:
            raise DataError(f"text source {source!r}: expected task:<name>:<split>")
        from ftlab.tasks import get_task, resolve_data_dir

        task = get_task(parts[1])
        examples = task.read(parts[2], resolve_data_dir(task.name, data_dir or None))
        if max_documents and max_documents < len(examples):  # the loop's subset rule (loop._load_split)
            idx = np.random.default_rng(subset_seed).permutation(len(examples))[:max_documents]
            examples = [examples[i] for i in sorted(idx)]
        if examples and "text_a" not in examples[0]:
            return [" ".join(e["tokens"]) for e in examples]
        return [e["text_a"] if not e.get("text_b") else f"{e['text_a']} {e['text_b']}" for e in examples]
    if source.startswith("tfds:"):
        name, _, split = source[len("tfds:"):].rpartition(":")
        if not name or not split:
            raise DataError(f"text source {source!r}: expected tfds:<name>[/<config>]:<split>")
        from ftlab.tasks import tfds as tfds_lib

        docs = tfds_lib.read_texts(name, split, field, data_dir or None)
        return docs[:max_documents] if max_documents else docs
    path = _find(source, data_dir)
    docs: list[str] = []
    is_jsonl = path.endswith((".jsonl", ".jsonl.gz"))
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if max_documents and len(docs) >= max_documents:
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if not is_jsonl:
                docs.append(line)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise DataError(f"{path}:{lineno}: no field {field!r} (config key lm.field)")
            if not isinstance(obj[field], str):
                raise DataError(f"{path}:{lineno}: field {field!r} is {type(obj[field]).__name__}, not a string")
            docs.append(obj[field])
    if not docs:
        raise DataError(f"text source {path}: no documents")
    return docs


@dataclasses.dataclass
class LMEncoded:
    """Packed LM rows: `blocks` [N, L] int32. `kind`: 'masked_lm' | 'causal_lm'. Batches via `batches()`."""

    blocks: np.ndarray
    kind: str
    with_token_types: bool
    tokens: int  # stream tokens before packing (documents + separators)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def max_length(self) -> int:
        return self.blocks.shape[1]

    @property
    def input_ids(self) -> list[np.ndarray]:
        return list(self.blocks)

    @property
    def lengths(self) -> np.ndarray:
        return np.full(len(self.blocks), self.blocks.shape[1], np.int64)

    @property
    def labels(self) -> np.ndarray:  # one entry per row (the loop's collation of predictions never reads it)
        return np.zeros(len(self.blocks), np.int32)

    def collate(self, idx: np.ndarray, width: int, pad_id: int) -> dict[str, np.ndarray]:
        real = idx >= 0
        ids = np.full((len(idx), self.blocks.shape[1]), pad_id, np.int32)
        ids[real] = self.blocks[idx[real]]
        mask = np.repeat(real[:, None], ids.shape[1], axis=1).astype(np.int32)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": np.where(mask > 0, ids, -100).astype(np.int32),
                 "example_mask": real.astype(np.float32), "index": idx.astype(np.int32)}
        if self.with_token_types:
            batch["token_type_ids"] = np.zeros_like(ids)
        return batch


def pack(docs: Sequence[str], tokenizer: Any, block_size: int, objective: str) -> LMEncoded:
    """Tokenise `docs` and pack them into [N, block_size] rows for `objective` ('mlm' | 'clm')."""
    if objective not in OBJECTIVES:
        raise ValueError(f"LM objective {objective!r} not in {OBJECTIVES}")
    if block_size < 8:
        raise ValueError(f"lm.block_size={block_size} is too small (at least 8)")
    ids = tokenizer(list(docs), add_special_tokens=False, verbose=False)["input_ids"]
    if objective == "mlm":
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls is None or sep is None:
            raise ValueError("masked-LM packing needs a tokenizer with [CLS] and [SEP] (an encoder's)")
        n = sum(len(t) + 1 for t in ids)
        stream = np.empty(n, np.int32)
        pos = 0
        for t in ids:
            stream[pos:pos + len(t)] = t
            stream[pos + len(t)] = sep
            pos += len(t) + 1
        body = block_size - 2
        rows = len(stream) // body
        chunks = stream[: rows * body].reshape(rows, body)
        blocks = np.concatenate([np.full((rows, 1), cls, np.int32), chunks, np.full((rows, 1), sep, np.int32)], 1)
        kind, types = "masked_lm", True
    else:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("causal-LM packing needs a tokenizer with an EOS token")
        bos = tokenizer.bos_token_id
        if bos is not None and bos != eos:
            ids = [[bos, *t] for t in ids]
        from ftlab.data.batching import pack_sequences

        n = sum(len(t) + 1 for t in ids)
        blocks = pack_sequences(ids, block_size, eos)
        kind, types = "causal_lm", False
    if len(blocks) == 0:
        raise DataError(f"{len(docs)} documents ({n} tokens) fill no block of {block_size} tokens")
    return LMEncoded(blocks.astype(np.int32), kind, types, n)


def split_heldout(docs: list[str], heldout: int) -> tuple[list[str], list[str]]:
    """(train, held-out): the last `heldout` documents are held out (a fixed, documented split)."""
    if not 0 < heldout < len(docs):
        raise DataError(f"cannot hold out {heldout} of {len(docs)} documents")
    return docs[:-heldout], docs[-heldout:]
