"""Examples + template + verbalizer -> token rows and label-word targets for the two scorers (NumPy, no JAX).

Each example becomes R token rows and, for each of the verbalizer's Q choices (label, word), a list of
(row, position, token) targets whose log-probabilities make the choice's score:

  cloze  (masked LM): the mask slot holds L [MASK] tokens; one row per distinct label-word length L (one row
         when every label word is a single token). Choice q reads its L tokens at the L mask positions;
         score = mean of their log-probabilities (PET's multi-mask scoring, all masks predicted at once).
  causal (causal LM): one row per choice, the label word written into the slot. Targets are the word's
         tokens and, with `score_suffix`, the template text after the slot (e.g. the "." of "It was great.",
         or the whole question in TREC's "{mask}: {sentence}"); score = sum of log p(token | tokens before).
         Each row starts with a start token (the tokenizer's own leading special tokens, else its BOS, else
         its EOS) so that a slot at the very start still has a position predicting it.

A label's score is the mean over its choices (one word per label: the word's score). Truncation: the template
words, special tokens and slot always survive; the text fields are shortened (longest first, from their end)
until the longest row fits `max_length`.

`PromptEncoded.collate` (used by `ftlab.data.batching.batches`) gives, for B examples:

    input_ids, attention_mask  [B*R, T] int32    rows of example b are b*R .. b*R+R-1 (right-padded)
    choice_row                 [B, Q] int32       row (into B*R) of each choice
    choice_pos, choice_tok     [B, Q, M] int32    position whose logits are read, token to score there
    choice_w                   [B, Q, M] float32  weight of each target (0 = padding; 1/L for cloze means)
    choice_label               [B, Q] int32       label index of each choice
    positions                  [B*R, P] int32     the distinct positions each row's choices read (padded with
                                                  the row's first); the model runs its LM head there only
    labels [B] int32, example_mask [B] float32, index [B] int32   as for ordinary batches

`positions` makes the vocabulary projection cost P positions per row instead of T (cloze with one-token label
words: P = 1): `ftlab.train.step.model_inputs` passes it to the model, whose per-token head then returns
logits [B*R, P, V], and `ftlab.train.prompting.choice_scores` reads choice_pos's slot among them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftlab.prompts.template import Segment, TemplateError, field_text, fill, parse_template, parse_verbalizer

SCORERS = ("cloze", "causal")
MISSING_CLASS = -1


@dataclasses.dataclass
class PromptEncoded:
    """Prompt rows of N examples. rows[i]: R int32 arrays. Choice arrays as in the module docstring, per
    example ([N, Q], [N, Q, M]); `choice_label` [Q]."""

    rows: list[list[np.ndarray]]
    choice_row: np.ndarray
    choice_pos: np.ndarray
    choice_tok: np.ndarray
    choice_w: np.ndarray
    choice_label: np.ndarray
    labels: np.ndarray
    max_length: int
    scorer: str
    kind: str = "classification"

    @functools.cached_property
    def row_positions(self) -> np.ndarray:
        """[N, R, P] the distinct positions read by each row's choices (targets of weight 0 excluded), sorted,
        padded with the row's first one (0 for a row nobody reads); P is the largest count in the set."""
        n, r = len(self), self.num_rows
        sets = [[sorted({int(p) for q in range(self.choice_pos.shape[1]) if self.choice_row[i, q] == k
                         for p, w in zip(self.choice_pos[i, q], self.choice_w[i, q], strict=True) if w != 0})
                 for k in range(r)] for i in range(n)]
        width = max(1, max((len(x) for rows in sets for x in rows), default=1))
        out = np.zeros((n, r, width), np.int32)
        for i, rows in enumerate(sets):
            for k, x in enumerate(rows):
                if x:
                    out[i, k] = x + [x[0]] * (width - len(x))
        return out

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_rows(self) -> int:
        return len(self.rows[0])

    @property
    def lengths(self) -> np.ndarray:
        """[N] longest row of each example (the batcher pads to the longest of a batch)."""
        return np.array([max(len(r) for r in rs) for rs in self.rows], dtype=np.int64)

    def collate(self, idx: np.ndarray, width: int, pad_id: int) -> dict[str, np.ndarray]:
        """Batch of examples `idx` (-1 = padding example) padded to `width` tokens. `choice_row` indexes this
        batch's rows, so one process builds the whole batch (a sharded multi-device step: untested)."""
        r = self.num_rows
        b = len(idx)
        real = idx >= 0
        ids = np.full((b * r, width), pad_id, np.int32)
        mask = np.zeros((b * r, width), np.int32)
        q, m = self.choice_pos.shape[1:]
        out = {"choice_row": np.zeros((b, q), np.int32), "choice_pos": np.zeros((b, q, m), np.int32),
               "choice_tok": np.zeros((b, q, m), np.int32), "choice_w": np.zeros((b, q, m), np.float32),
               "choice_label": np.broadcast_to(self.choice_label, (b, q)).astype(np.int32),
               "labels": np.zeros(b, np.int32)}
        for j, i in enumerate(idx):
            if i < 0:
                continue
            for k, row in enumerate(self.rows[i]):
                ids[j * r + k, : len(row)] = row
                mask[j * r + k, : len(row)] = 1
            out["choice_row"][j] = j * r + self.choice_row[i]
            out["choice_pos"][j] = self.choice_pos[i]
            out["choice_tok"][j] = self.choice_tok[i]
            out["choice_w"][j] = self.choice_w[i]
            out["labels"][j] = self.labels[i]
        positions = np.zeros((b, r, self.row_positions.shape[2]), np.int32)
        positions[real] = self.row_positions[idx[real]]
        out.update(input_ids=ids, attention_mask=mask, positions=positions.reshape(b * r, -1),
                   example_mask=real.astype(np.float32), index=idx.astype(np.int32))
        return out


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(leading, trailing) special token ids the tokenizer adds around one sequence ([CLS] / [SEP] for BERT)."""
    probe = _ids(tokenizer, "hello")
    full = list(tokenizer("hello", add_special_tokens=True)["input_ids"])
    for s in range(len(full) - len(probe) + 1):
        if full[s : s + len(probe)] == probe:
            return full[:s], full[s + len(probe):]
    raise ValueError(f"cannot locate the text inside the tokenizer's special tokens: {full} vs {probe}")


def start_tokens(tokenizer: Any) -> list[int]:
    """The causal scorer's first token(s): leading special tokens, else BOS, else EOS."""
    lead, _ = special_tokens(tokenizer)
    if lead:
        return lead
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if t is not None:
            return [int(t)]
    raise ValueError("the tokenizer has no BOS/EOS token to start a causal-LM prompt with")


def word_tokens(tokenizer: Any, word: str, space: bool) -> list[int]:
    """Token ids of a label word as it appears in the slot (with the slot's leading space for BPE)."""
    ids = _ids(tokenizer, (" " if space else "") + word)
    if not ids:
        raise TemplateError(f"label word {word!r} tokenises to nothing")
    return ids


def truncate_fields(field_lens: Sequence[int], budget: int) -> list[int]:
    """Lengths after cutting the longest field one token at a time until the sum fits `budget`."""
    lens = list(field_lens)
    while sum(lens) > budget:
        k = int(np.argmax(lens))
        lens[k] -= 1
    return lens


def encode_prompts(
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template: str,
    verbalizer: str | Mapping[str, Any],
    label_names: Sequence[str],
    max_length: int,
    scorer: str,
    score_suffix: bool = True,
    variants: int = 1,
) -> PromptEncoded:
    """Encode `examples` (from `Task.read`) for `scorer` ('cloze' | 'causal'); see the module docstring.

    `variants` > 1: every `variants` consecutive examples are versions of one input (e.g. with different
    demonstration sets, `ftlab.prompts.demos`); they become one example whose rows and choices are theirs
    together, so each label's score is the mean over the versions."""
    if variants > 1:
        if len(examples) % variants:
            raise ValueError(f"{len(examples)} examples do not split into groups of variants={variants}")
        return merge_variants(encode_prompts(examples, tokenizer, template, verbalizer, label_names, max_length,
                                             scorer, score_suffix), variants)
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; choose from {SCORERS}")
    if not examples:
        raise ValueError("no examples to encode")
    segs = parse_template(template)
    choices = parse_verbalizer(verbalizer, label_names)
    slot = next(s for s in segs if s.kind == "mask")
    words = [word_tokens(tokenizer, w, slot.space) for _, w in choices]
    lit = {i: _ids(tokenizer, s.text) for i, s in enumerate(segs) if s.kind == "text"}
    field_idx = [i for i, s in enumerate(segs) if s.kind == "field"]
    # All texts of one field position in one tokenizer call (fast tokenizers batch in Rust).
    field_ids: dict[int, list[list[int]]] = {}
    for i in field_idx:
        s = segs[i]
        texts = [(" " if s.space else "") + field_text(s, e, template) for e in examples]
        field_ids[i] = [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if scorer == "cloze":
        if tokenizer.mask_token_id is None:
            raise ValueError(f"the cloze scorer needs a tokenizer with a mask token; {type(tokenizer).__name__} "
                             "has none (use scorer='causal' for a decoder)")
        lead, trail = special_tokens(tokenizer)
        groups = sorted({len(w) for w in words})
        slots = [[int(tokenizer.mask_token_id)] * n for n in groups]
        choice_row = np.array([groups.index(len(w)) for w in words], np.int32)
    else:
        lead, trail = start_tokens(tokenizer), []
        slots = words
        choice_row = np.arange(len(words), dtype=np.int32)
    fixed = len(lead) + len(trail) + sum(len(v) for v in lit.values()) + max(len(s) for s in slots)
    budget = max_length - fixed
    if budget < len(field_idx):
        raise ValueError(f"template {template!r} with its label words needs {fixed} tokens, which leaves "
                         f"{budget} of max_length={max_length} for the text; raise max_length")

    rows, targets = [], []
    for n in range(len(examples)):
        lens = truncate_fields([len(field_ids[i][n]) for i in field_idx], budget)
        parts: dict[int, list[int]] = {**lit}
        for i, k in zip(field_idx, lens, strict=True):
            parts[i] = field_ids[i][n][:k]
        mask_at = next(i for i, s in enumerate(segs) if s.kind == "mask")
        before = lead + [t for i in range(mask_at) for t in parts[i]]
        after = [t for i in range(mask_at + 1, len(segs)) for t in parts[i]]
        ex_rows = [np.array(before + s + after + trail, np.int32) for s in slots]
        ex_targets = []
        for q, w in enumerate(words):
            start = len(before)
            if scorer == "cloze":
                ex_targets.append([(start + m, w[m], 1.0 / len(w)) for m in range(len(w))])
            else:
                row = ex_rows[q]
                end = start + len(w) + (len(after) if score_suffix else 0)
                ex_targets.append([(j - 1, int(row[j]), 1.0) for j in range(start, end)])
        rows.append(ex_rows)
        targets.append(ex_targets)
    q_n = len(choices)
    m_n = max(len(t) for ts in targets for t in ts)
    pos = np.zeros((len(rows), q_n, m_n), np.int32)
    tok = np.zeros_like(pos)
    w = np.zeros(pos.shape, np.float32)
    for n, ts in enumerate(targets):
        for q, t in enumerate(ts):
            for m, (p, k, wt) in enumerate(t):
                pos[n, q, m], tok[n, q, m], w[n, q, m] = p, k, wt
    labels = np.array([MISSING_CLASS if e.get("label") is None else e["label"] for e in examples], np.int32)
    return PromptEncoded(rows=rows, choice_row=np.broadcast_to(choice_row, (len(rows), q_n)).copy(),
                         choice_pos=pos, choice_tok=tok, choice_w=w,
                         choice_label=np.array([c for c, _ in choices], np.int32), labels=labels,
                         max_length=max_length, scorer=scorer)


def merge_variants(enc: PromptEncoded, n: int) -> PromptEncoded:
    """Every `n` consecutive examples of `enc` -> one example with all their rows and choices."""
    r = enc.num_rows
    m = len(enc) // n

    def cat(x: np.ndarray) -> np.ndarray:  # [N, Q, ...] -> [N/n, n*Q, ...]
        return x.reshape(m, n * x.shape[1], *x.shape[2:])

    rows = [[row for s in range(n) for row in enc.rows[i * n + s]] for i in range(m)]
    offset = (np.arange(len(enc)) % n * r)[:, None]
    labels = enc.labels.reshape(m, n)
    if (labels != labels[:, :1]).any():
        raise ValueError("versions of one example must share its label")
    return PromptEncoded(rows=rows, choice_row=cat(enc.choice_row + offset), choice_pos=cat(enc.choice_pos),
                         choice_tok=cat(enc.choice_tok), choice_w=cat(enc.choice_w),
                         choice_label=np.tile(enc.choice_label, n), labels=labels[:, 0].copy(),
                         max_length=enc.max_length, scorer=enc.scorer)


def demonstrations(
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template: str,
    verbalizer: str | Mapping[str, Any],
    label_names: Sequence[str],
    seed: int,
    max_tokens: int,
    separator: str = "\n",
) -> tuple[list[int], int]:
    """In-context prefix: `examples` in a seeded random order, each filled with its label's (first) word,
    joined by `separator`, after the causal start token. Whole demonstrations are dropped from the end until
    the prefix has at most `max_tokens` tokens. Returns (token ids, number of demonstrations kept)."""
    choices = parse_verbalizer(verbalizer, label_names)
    word = {}
    for c, w in choices:
        word.setdefault(c, w)
    order = np.random.default_rng(seed).permutation(len(examples))
    texts = [fill(template, examples[i], word[examples[i]["label"]]) + separator for i in order]
    pieces = [_ids(tokenizer, t) for t in texts]
    ids = start_tokens(tokenizer)
    kept = 0
    for p in pieces:
        if len(ids) + len(p) > max_tokens:
            break
        ids += p
        kept += 1
    return ids, kept


__all__ = ["PromptEncoded", "Segment", "demonstrations", "encode_prompts", "special_tokens", "start_tokens",
           "word_tokens"]
