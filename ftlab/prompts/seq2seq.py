"""Text-to-text prompts for an encoder–decoder (T5): the encoder reads the filled template, the decoder writes the
label word (NumPy, no JAX). The seq2seq counterpart of `ftlab.prompts.encode`'s cloze and causal scorers.

Encoder input: the tokenizer's leading specials + the template with its `{mask}` slot written as `slot_text`
(default '': the slot and the space before it are dropped, the Flan form "…Is it great or terrible?" with
`{mask}` at the end; T5's span-corruption form uses slot_text='<extra_id_0>') + its trailing specials (T5:
`</s>`). Text fields are truncated as in `encode_prompts` (longest first, from the end) to fit `max_length`.

Decoder (teacher forcing), one row per verbalizer choice q: [decoder_start] + the word's tokens w_1..w_L (the
word tokenised on its own, no leading space; a sentencepiece tokenizer adds its '▁' itself). Position j predicts
w_{j+1}; with `score_eos` (default) position L also predicts the model's eos, so a label word must also *end*
there (what greedy generation needs to produce it exactly). The choice score is the sum of those
log-probabilities; a label's score is the mean over its choices (`ftlab.train.prompting.label_scores`).

`Seq2SeqEncoded.collate` (used by `ftlab.data.batching.batches`) gives, for B examples and Q choices:

    input_ids, attention_mask          [B, S] int32     encoder rows (right-padded)
    decoder_input_ids,
    decoder_attention_mask             [B*Q, Td] int32  rows of example b are b*Q .. b*Q+Q-1
    encoder_rows                       [B*Q] int32      the encoder row each decoder row reads (b)
    choice_row [B, Q], choice_pos / choice_tok / choice_w [B, Q, M], choice_label [B, Q], labels [B],
    example_mask [B], index [B]        as `ftlab.prompts.encode` (choice_row indexes the decoder rows)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftlab.prompts.encode import MISSING_CLASS, _ids, special_tokens, truncate_fields, word_tokens
from ftlab.prompts.template import Segment, field_text, parse_template, parse_verbalizer


@dataclasses.dataclass
class Seq2SeqEncoded:
    """Encoder rows of N examples and the Q decoder rows / targets (the same for every example)."""

    rows: list[np.ndarray]
    decoder_rows: list[np.ndarray]
    choice_pos: np.ndarray  # [Q, M]
    choice_tok: np.ndarray  # [Q, M]
    choice_w: np.ndarray  # [Q, M]
    choice_label: np.ndarray  # [Q]
    labels: np.ndarray  # [N]
    max_length: int
    scorer: str = "seq2seq"
    kind: str = "classification"

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.rows], dtype=np.int64)

    def collate(self, idx: np.ndarray, width: int, pad_id: int) -> dict[str, np.ndarray]:
        """Batch of examples `idx` (-1 = padding example); encoder rows padded to `width`, decoder rows to the
        longest decoder row (fixed, so one compilation per encoder width)."""
        b, q = len(idx), len(self.decoder_rows)
        td = max(len(r) for r in self.decoder_rows)
        ids = np.full((b, width), pad_id, np.int32)
        mask = np.zeros((b, width), np.int32)
        dec = np.full((q, td), pad_id, np.int32)
        dmask = np.zeros((q, td), np.int32)
        for k, row in enumerate(self.decoder_rows):
            dec[k, : len(row)] = row
            dmask[k, : len(row)] = 1
        labels = np.zeros(b, np.int32)
        for j, i in enumerate(idx):
            if i >= 0:
                ids[j, : len(self.rows[i])] = self.rows[i]
                mask[j, : len(self.rows[i])] = 1
                labels[j] = self.labels[i]
        return {"input_ids": ids, "attention_mask": mask,
                "decoder_input_ids": np.tile(dec, (b, 1)), "decoder_attention_mask": np.tile(dmask, (b, 1)),
                "encoder_rows": np.repeat(np.arange(b, dtype=np.int32), q),
                "choice_row": (np.arange(b, dtype=np.int32)[:, None] * q + np.arange(q, dtype=np.int32)[None]),
                "choice_pos": np.broadcast_to(self.choice_pos, (b, *self.choice_pos.shape)).astype(np.int32),
                "choice_tok": np.broadcast_to(self.choice_tok, (b, *self.choice_tok.shape)).astype(np.int32),
                "choice_w": np.broadcast_to(self.choice_w, (b, *self.choice_w.shape)).astype(np.float32),
                "choice_label": np.broadcast_to(self.choice_label, (b, q)).astype(np.int32),
                "labels": labels, "example_mask": (idx >= 0).astype(np.float32), "index": idx.astype(np.int32)}


def fill_ids(examples: Sequence[Mapping[str, Any]], tokenizer: Any, template: str, max_length: int,
             lead: list[int], trail: list[int], slot_ids: list[int] | None) -> list[list[int]]:
    """Token ids of each example's filled template: lead + segments + trail, the `{mask}` slot written as
    `slot_ids` (its leading space included by the caller) or, with slot_ids None, the template cut just before
    the slot (a causal LM's generation prompt). Fields are truncated to fit max_length; raises when the fixed
    part leaves no room."""
    segs = parse_template(template)
    mask_at = next(i for i, s in enumerate(segs) if s.kind == "mask")
    keep: list[tuple[int, Segment]] = list(enumerate(segs))[: mask_at if slot_ids is None else len(segs)]
    lit = {i: _ids(tokenizer, s.text) for i, s in keep if s.kind == "text"}
    field_idx = [i for i, s in keep if s.kind == "field"]
    field_ids = {}
    for i in field_idx:
        s = segs[i]
        texts = [(" " if s.space else "") + field_text(s, e, template) for e in examples]
        field_ids[i] = [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    fixed = len(lead) + len(trail) + sum(len(v) for v in lit.values()) + len(slot_ids or [])
    budget = max_length - fixed
    if budget < len(field_idx):
        raise ValueError(f"template {template!r} needs {fixed} tokens without its text, which leaves {budget} of "
                         f"max_length={max_length}; raise max_length")
    out = []
    for n in range(len(examples)):
        lens = truncate_fields([len(field_ids[i][n]) for i in field_idx], budget)
        parts: dict[int, list[int]] = {**lit, mask_at: list(slot_ids or [])}
        for i, k in zip(field_idx, lens, strict=True):
            parts[i] = field_ids[i][n][:k]
        out.append(lead + [t for i, _ in keep for t in parts[i]] + trail)
    return out


def encode_seq2seq(
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template: str,
    verbalizer: str | Mapping[str, Any],
    label_names: Sequence[str],
    max_length: int,
    decoder_start_token_id: int,
    eos_token_id: int | None,
    score_eos: bool = True,
    slot_text: str = "",
) -> Seq2SeqEncoded:
    """Encode `examples` for the seq2seq scorer (module docstring). decoder_start_token_id / eos_token_id come
    from the model's config (T5: 0 and 1); score_eos needs an eos_token_id."""
    if not examples:
        raise ValueError("no examples to encode")
    if score_eos and eos_token_id is None:
        raise ValueError("score_eos=True needs the model's eos_token_id (or pass score_eos=False)")
    segs = parse_template(template)
    slot = next(s for s in segs if s.kind == "mask")
    choices = parse_verbalizer(verbalizer, label_names)
    lead, trail = special_tokens(tokenizer)
    slot_ids = _ids(tokenizer, (" " if slot.space else "") + slot_text) if slot_text else []
    rows = [np.array(r, np.int32) for r in fill_ids(examples, tokenizer, template, max_length, lead, trail, slot_ids)]
    words = [word_tokens(tokenizer, w, space=False) for _, w in choices]
    dec_rows, targets = [], []
    for w in words:
        dec_rows.append(np.array([decoder_start_token_id, *w], np.int32))
        targets.append([(j, t) for j, t in enumerate(w)] + ([(len(w), int(eos_token_id))] if score_eos else []))
    m = max(len(t) for t in targets)
    pos = np.zeros((len(words), m), np.int32)
    tok = np.zeros_like(pos)
    wt = np.zeros(pos.shape, np.float32)
    for q, ts in enumerate(targets):
        for k, (p, t) in enumerate(ts):
            pos[q, k], tok[q, k], wt[q, k] = p, t, 1.0
    labels = np.array([MISSING_CLASS if e.get("label") is None else e["label"] for e in examples], np.int32)
    return Seq2SeqEncoded(rows=rows, decoder_rows=dec_rows, choice_pos=pos, choice_tok=tok, choice_w=wt,
                          choice_label=np.array([c for c, _ in choices], np.int32), labels=labels,
                          max_length=max_length)
