"""Templates and verbalizers as strings: parsing, filling an example, tokenising with field-only truncation.

Template format (one line of text with slots in braces; `{{` / `}}` are literal braces):

    "{sentence} It was {mask}."                          SST-2 (LM-BFF's `*cls**sent_0*_It_was*mask*.*sep+*`)
    "{mask}: {sentence}"                                 TREC
    "{sentence1|nopunct}? {mask}, {sentence2|lower}"     MRPC (LM-BFF's `*sent-_0*?*mask*,*+sentl_1*`)

Slots: `{mask}` (exactly one: where the label word goes) and the example's text fields, `{sentence}` /
`{sentence1}` / `{text_a}` (the example's `text_a`) and `{sentence2}` / `{text_b}` (`text_b`). Modifiers after
`|`: `nopunct` drops one trailing punctuation character (LM-BFF's `sent-`), `lower` lower-cases the first
character (LM-BFF's `sentl`), `upper` upper-cases it. `{demos}` reads LM-BFF demonstrations added by
`ftlab.prompts.demos.with_demonstrations`.

Whitespace: a space written before a slot belongs to the slot. For byte-level BPE tokenizers (GPT-2, Llama /
SmolLM2) the slot's text is tokenised with that leading space (`" great"` -> `Ġgreat`), so label words get the
same token they have inside running text; WordPiece (BERT) ignores it. Literal text keeps its own leading
space (`" It was"` after a sentence).

Verbalizer format: label -> word, as a dict (`{"0": "terrible", "1": "great"}`) or a string
`"0=terrible|1=great"`. A label may have several words (`{"1": ["great", "good"]}` or `"1=great/good"`);
its score is the mean of its words' scores (PET). A word may tokenise into several tokens (multi-token label
words); the scorers handle that (see `ftlab.prompts.encode`). Label keys are the task's `label_names`.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

FIELDS = {"sentence": "text_a", "sentence1": "text_a", "text_a": "text_a", "sentence2": "text_b", "text_b": "text_b",
          "demos": "demos"}
MODIFIERS = ("nopunct", "lower", "upper")


class TemplateError(ValueError):
    """A template or verbalizer string that cannot be used (names the string and the offending part)."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """One part of a parsed template. kind: 'text' (literal `text`), 'field' (`field` in text_a | text_b,
    `mods`), 'mask'. `space`: the slot is preceded by a space (moved out of the literal before it)."""

    kind: str
    text: str = ""
    field: str = ""
    mods: tuple[str, ...] = ()
    space: bool = False


_SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def parse_template(template: str) -> tuple[Segment, ...]:
    """`template` -> segments; `TemplateError` for unknown fields/modifiers, stray braces, not one `{mask}`."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateError(f"template must be a non-empty string, got {template!r}")
    raw: list[Segment] = []
    literal = []
    pos = 0
    for m in _SLOT.finditer(template):
        literal.append(template[pos:m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            literal.append(tok[0])
            continue
        if m.group(1) is None:
            raise TemplateError(f"template {template!r}: unmatched {tok!r} at character {m.start()} "
                                "(write '{{' or '}}' for a literal brace)")
        if "".join(literal):
            raw.append(Segment("text", "".join(literal)))
        literal = []
        name, *mods = [p.strip() for p in m.group(1).split("|")]
        if name == "mask":
            if mods:
                raise TemplateError(f"template {template!r}: {{mask}} takes no modifiers, got {mods}")
            raw.append(Segment("mask"))
            continue
        if name not in FIELDS:
            raise TemplateError(f"template {template!r}: unknown field {{{name}}}; fields are "
                                f"{sorted(FIELDS)} and mask")
        bad = [x for x in mods if x not in MODIFIERS]
        if bad:
            raise TemplateError(f"template {template!r}: unknown modifier(s) {bad} on {{{name}}}; "
                                f"modifiers are {list(MODIFIERS)}")
        raw.append(Segment("field", field=FIELDS[name], mods=tuple(mods)))
    literal.append(template[pos:])
    if "".join(literal):
        raw.append(Segment("text", "".join(literal)))
    if sum(s.kind == "mask" for s in raw) != 1:
        raise TemplateError(f"template {template!r}: needs exactly one {{mask}}, "
                            f"found {sum(s.kind == 'mask' for s in raw)}")
    # Move the whitespace before a slot into the slot (see the module docstring).
    out: list[Segment] = []
    for s in raw:
        if s.kind != "text" and out and out[-1].kind == "text" and out[-1].text[-1:].isspace():
            lit = out.pop().text.rstrip()
            if lit:
                out.append(Segment("text", lit))
            s = dataclasses.replace(s, space=True)
        out.append(s)
    return tuple(out)


def template_fields(template: str) -> tuple[str, ...]:
    """Example fields a template reads, in order of first use (e.g. ('text_a', 'text_b'))."""
    seen: list[str] = []
    for s in parse_template(template):
        if s.kind == "field" and s.field not in seen:
            seen.append(s.field)
    return tuple(seen)


def apply_mods(text: str, mods: Sequence[str]) -> str:
    for m in mods:
        if m == "nopunct":
            text = text.rstrip()
            if text and text[-1] in string.punctuation:
                text = text[:-1].rstrip()
        elif m == "lower":
            text = text[:1].lower() + text[1:]
        elif m == "upper":
            text = text[:1].upper() + text[1:]
    return text


def field_text(segment: Segment, example: Mapping[str, Any], template: str) -> str:
    """The text of a field segment for `example` (modifiers applied, no leading space)."""
    value = example.get(segment.field)
    if value is None:
        where = example.get("source", "example")
        raise TemplateError(f"{where}: template {template!r} reads {segment.field!r}, which this example "
                            f"lacks (a single-sentence task has no text_b)")
    return apply_mods(str(value).strip(), segment.mods)


def fill(template: str, example: Mapping[str, Any], word: str | None = None, mask: str = "___") -> str:
    """The template as plain text for `example`, with `word` (or `mask`) in the mask slot: for reading and
    for in-context demonstrations."""
    parts = []
    for s in parse_template(template):
        text = s.text if s.kind == "text" else field_text(s, example, template) if s.kind == "field" else (
            word if word is not None else mask)
        parts.append((" " if s.space else "") + text)
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ verbalizers


def parse_verbalizer(spec: str | Mapping[str, Any], label_names: Sequence[str],
                     where: str = "verbalizer") -> tuple[tuple[int, str], ...]:
    """Verbalizer `spec` -> choices ((label index, word), ...) in label order, every label at least once.

    `TemplateError` naming `where` for a label outside `label_names`, a missing label or an empty word."""
    if isinstance(spec, str):
        items: dict[str, Any] = {}
        for part in [p for p in spec.split("|") if p.strip()]:
            label, eq, words = part.partition("=")
            if not eq:
                raise TemplateError(f"{where}: {part!r} is not 'label=word' (spec {spec!r})")
            items[label.strip()] = [w.strip() for w in words.split("/")]
    elif isinstance(spec, Mapping):
        items = {str(k): ([v] if isinstance(v, str) else list(v)) for k, v in spec.items()}
    else:
        raise TemplateError(f"{where}: expected a dict or a 'label=word|...' string, got {type(spec).__name__}")
    unknown = [k for k in items if k not in label_names]
    if unknown:
        raise TemplateError(f"{where}: label(s) {unknown} not in the task's labels {list(label_names)}")
    missing = [k for k in label_names if k not in items]
    if missing:
        raise TemplateError(f"{where}: no word for label(s) {missing} (labels {list(label_names)})")
    choices = []
    for i, name in enumerate(label_names):
        for w in items[name]:
            if not isinstance(w, str) or not w.strip():
                raise TemplateError(f"{where}: label {name!r} has an empty word")
            choices.append((i, w.strip()))
    return tuple(choices)


def verbalizer_string(choices: Sequence[tuple[int, str]], label_names: Sequence[str]) -> str:
    """Inverse of `parse_verbalizer` for a string spec (for logs and results)."""
    by_label: dict[int, list[str]] = {}
    for i, w in choices:
        by_label.setdefault(i, []).append(w)
    return "|".join(f"{label_names[i]}={'/'.join(ws)}" for i, ws in sorted(by_label.items()))
