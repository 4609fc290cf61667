"""Generation as an evaluation mode for prompted classification: the model writes its answer after the prompt
(greedy, KV-cached: `ftlab.models.generate`), and the verbalizer maps the text back to a label.

    causal LM (Llama / SmolLM2, GPT-2): the prompt is the causal start token(s) + the template up to its `{mask}`
        slot (`ftlab.prompts.seq2seq.fill_ids` with the slot cut), left-padded; the model continues it.
    T5: the encoder reads the seq2seq scorer's input (the template with the slot written as `slot_text`,
        '' = dropped; `ftlab.prompts.seq2seq`); the decoder generates from decoder_start_token_id.

Reading a generation: the new tokens up to the first eos, decoded without special tokens, cut at the first stop
string (a line break, and the template's literal text right after the slot, e.g. the '.' of "It was {mask}."),
then stripped and lower-cased, must equal one of the verbalizer's words (also stripped and lower-cased). A
generation that matches no word is counted as wrong and reported (`unmatched`, with examples). Default
`max_new_tokens`: the longest label word's token count + 1 (room for the eos or stop string).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftlab.prompts.encode import special_tokens, start_tokens, word_tokens
from ftlab.prompts.seq2seq import fill_ids
from ftlab.prompts.template import parse_template, parse_verbalizer

NO_LABEL = -1


def normalise(text: str) -> str:
    return text.strip().lower()


def word_labels(verbalizer: str | Mapping[str, Any], label_names: Sequence[str]) -> dict[str, int]:
    """{normalised word: label index}; raises when one word (after strip/lower) names two labels."""
    out: dict[str, int] = {}
    for c, w in parse_verbalizer(verbalizer, label_names):
        key = normalise(w)
        if out.get(key, c) != c:
            raise ValueError(f"verbalizer word {w!r} names labels {label_names[out[key]]!r} and {label_names[c]!r}: "
                             "a generation could not be read back")
        out[key] = c
    return out


def stop_strings(template: str) -> list[str]:
    """Where a generation's answer ends: a line break, and the template's literal text right after the slot."""
    segs = parse_template(template)
    at = next(i for i, s in enumerate(segs) if s.kind == "mask")
    stops = ["\n"]
    if at + 1 < len(segs) and segs[at + 1].kind == "text" and segs[at + 1].text.strip():
        stops.append(segs[at + 1].text.strip())
    return stops


def read_label(text: str, words: Mapping[str, int], stops: Sequence[str]) -> int:
    """Label index of a generated `text` (module docstring), or NO_LABEL."""
    for s in stops:
        if s in text:
            text = text[: text.index(s)]
    return words.get(normalise(text), NO_LABEL)


def generate_and_map(
    model: Any,
    variables: Mapping[str, Any],
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template: str,
    verbalizer: str | Mapping[str, Any],
    label_names: Sequence[str],
    max_length: int,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    slot_text: str = "",
    eos_token_id: int | None = None,
    pad_to_multiple_of: int = 16,
    show_unmatched: int = 5,
) -> dict[str, Any]:
    """Greedy generation for every example and its label read back (module docstring).

    model: build_model(cfg, 'causal_lm') (Llama / GPT-2) or build_model(cfg, 'seq2seq_lm') (T5); variables:
    {'params': θ, optionally 'delta': a module delta's collection}. eos_token_id: default the model config's.
    Returns {'n', 'accuracy' (unmatched count as wrong), 'unmatched', 'predicted' {label name | '(none)': count},
    'predictions' [N] (NO_LABEL = unmatched), 'generations' [N] (decoded text), 'unmatched_examples' (the first
    `show_unmatched` generations that matched no word), 'max_new_tokens'}."""
    from ftlab.models.configs import T5Config
    from ftlab.models.generate import generate, generate_seq2seq

    if not examples:
        raise ValueError("no examples to evaluate")
    config = model.config
    seq2seq = isinstance(config, T5Config)
    want_head = "seq2seq_lm" if seq2seq else "causal_lm"
    if getattr(model, "head", None) != want_head:
        raise ValueError(f"generation needs a model built with head={want_head!r}, got {getattr(model, 'head', None)!r}")
    words = word_labels(verbalizer, label_names)
    stops = stop_strings(template)
    slot = next(s for s in parse_template(template) if s.kind == "mask")
    if max_new_tokens is None:
        space = slot.space and not seq2seq
        max_new_tokens = 1 + max(len(word_tokens(tokenizer, w, space)) for _, w in parse_verbalizer(verbalizer,
                                                                                                     label_names))
    if seq2seq:
        lead, trail = special_tokens(tokenizer)
        slot_ids = list(tokenizer((" " if slot.space else "") + slot_text, add_special_tokens=False)["input_ids"]) \
            if slot_text else []
        prompts = fill_ids(examples, tokenizer, template, max_length, lead, trail, slot_ids)
    else:
        prompts = fill_ids(examples, tokenizer, template, max_length, start_tokens(tokenizer), [], None)
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos_set = set() if eos is None else {int(e) for e in np.atleast_1d(eos)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params, delta = variables["params"], variables.get("delta")

    tokens: list[np.ndarray] = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        rows = chunk + [chunk[0]] * (batch_size - len(chunk))  # fixed batch shape: one compilation
        width = -(-max(len(r) for r in rows) // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((batch_size, width), pad, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j, r in enumerate(rows):
            if seq2seq:  # right-padded encoder rows
                ids[j, : len(r)], mask[j, : len(r)] = r, 1
            else:  # left-padded prompts for the decoder's continuation
                ids[j, width - len(r):], mask[j, width - len(r):] = r, 1
        if seq2seq:
            out = generate_seq2seq(model, params, ids, mask, max_new_tokens, eos_token_id=eos, delta=delta)
        else:
            out = generate(model, params, ids, mask, max_new_tokens, eos_token_id=eos, pad_token_id=pad, delta=delta)
        tokens.extend(out[: len(chunk)])

    generations, predictions = [], []
    for row in tokens:
        row = [int(t) for t in row]
        cut = next((k for k, t in enumerate(row) if t in eos_set), len(row))
        text = tokenizer.decode(row[:cut], skip_special_tokens=True)
        generations.append(text)
        predictions.append(read_label(text, words, stops))
    labels = [e.get("label") for e in examples]
    if any(y is None for y in labels):
        raise ValueError("generate_and_map scores labelled examples; an example has no label")
    right = sum(int(p == y) for p, y in zip(predictions, labels, strict=True))
    unmatched = [g for g, p in zip(generations, predictions, strict=True) if p == NO_LABEL]
    predicted = {name: predictions.count(c) for c, name in enumerate(label_names)}
    predicted["(none)"] = len(unmatched)
    return {"n": len(examples), "accuracy": right / len(examples), "unmatched": len(unmatched),
            "predicted": predicted, "predictions": predictions, "generations": generations,
            "unmatched_examples": unmatched[:show_unmatched], "max_new_tokens": max_new_tokens}
