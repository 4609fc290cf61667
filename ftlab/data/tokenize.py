"""Examples -> token ids: `encode(examples, tokenizer, task, max_length) -> Encoded`.

Uses a Hugging Face *fast* tokenizer in batch mode (Rust, parallel): SST-2's 67k sentences encode in about a
second. Sentence pairs are tokenised as pairs (`[CLS] a [SEP] b [SEP]` for BERT) with 'longest_first'
truncation. For tagging, words are tokenised with `is_split_into_words=True`; the first sub-token of each word
carries the word's tag and every other position (later sub-tokens, special tokens) carries -100, the usual
convention (Devlin et al. 2019, §4.3) that metrics and losses ignore.

`Encoded` holds one int32 array per example (ragged; padding is the batcher's job), so that batches can be
padded only to their own longest row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ftlab.tasks import Task

IGNORE = -100  # label of positions without a word tag (sub-tokens, special tokens, padding)
MISSING_CLASS = -1  # classification label of an example without a label (test splits)


@dataclasses.dataclass
class Encoded:
    """Token ids per example. `input_ids[i]`: [T_i] int32. `token_type_ids`: same shapes, or None when the
    tokenizer has none (GPT-2, Llama). `labels`: [N] int32 (classification; -1 = no label), [N] float32
    (regression; NaN = no label), or a list of [T_i] int32 (tagging; -100 = no tag). `kind`: the task kind.
    `max_length`: the truncation length used (the batcher never pads beyond it). `soft_labels`: [N, C] float32
    class distributions of soft-labelled examples (distillation, `ftlab.data.pseudo_labels`), else None."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: np.ndarray | list[np.ndarray]
    kind: str
    max_length: int
    soft_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """[N] int64 token counts."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(
    examples: Sequence[dict[str, Any]],
    tokenizer: Any,
    task: Task,
    max_length: int,
    *,
    model_max_positions: int | None = None,
) -> Encoded:
    """Tokenise `examples` (as returned by `Task.read`) for `task`, truncating to `max_length` tokens.

    `model_max_positions`: the model's position-embedding count; a `max_length` beyond it raises, since
    positions past it have no embedding.
    """
    if max_length < 4:
        raise ValueError(f"max_length={max_length} is too small to hold special tokens and text")
    if model_max_positions is not None and max_length > model_max_positions:
        raise ValueError(
            f"max_length={max_length} exceeds the model's {model_max_positions} position embeddings; "
            f"lower max_length to at most {model_max_positions}"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; load one with use_fast=True")
    if not examples:
        raise ValueError(f"no examples to encode for task {task.name!r} (an empty split?)")
    if task.kind == "tagging":
        return _encode_tagging(examples, tokenizer, max_length)

    texts_a = [e["text_a"] for e in examples]
    has_b = [e.get("text_b") is not None for e in examples]
    if any(has_b) and not all(has_b):
        first = has_b.index(not has_b[0])
        raise ValueError(f"{examples[first]['source']}: mixes single sentences and sentence pairs in one set")
    texts_b = [e["text_b"] for e in examples] if has_b and has_b[0] else None
    out = tokenizer(
        texts_a,
        texts_b,
        truncation="longest_first" if texts_b is not None else True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    input_ids = [np.asarray(x, dtype=np.int32) for x in out["input_ids"]]
    token_type_ids = (
        [np.asarray(x, dtype=np.int32) for x in out["token_type_ids"]] if "token_type_ids" in out else None
    )
    if task.kind == "regression":
        labels = np.array([np.nan if e["label"] is None else e["label"] for e in examples], dtype=np.float32)
    else:
        labels = np.array(
            [MISSING_CLASS if e["label"] is None else e["label"] for e in examples], dtype=np.int32
        )
    soft = None
    if "soft_labels" in examples[0]:  # soft-labelled examples (ftlab.data.pseudo_labels): all or none
        missing = [e["source"] for e in examples if "soft_labels" not in e]
        if missing or task.kind != "classification":
            raise ValueError(f"soft labels need a classification task whose examples all carry them "
                             f"(task {task.name!r} is {task.kind}; without soft labels: {missing[:3]})")
        soft = np.stack([np.asarray(e["soft_labels"], np.float32) for e in examples])
    return Encoded(input_ids, token_type_ids, labels, task.kind, max_length, soft)


def _encode_tagging(examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> Encoded:
    out = tokenizer(
        [e["tokens"] for e in examples],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    input_ids, labels = [], []
    for i, e in enumerate(examples):
        ids = np.asarray(out["input_ids"][i], dtype=np.int32)
        word_ids = out.word_ids(i)
        lab = np.full(len(ids), IGNORE, dtype=np.int32)
        prev = None
        for pos, w in enumerate(word_ids):
            if w is not None and w != prev:
                lab[pos] = e["tags"][w]
            prev = w
        input_ids.append(ids)
        labels.append(lab)
    token_type_ids = (
        [np.asarray(x, dtype=np.int32) for x in out["token_type_ids"]] if "token_type_ids" in out else None
    )
    return Encoded(input_ids, token_type_ids, labels, "tagging", max_length)
