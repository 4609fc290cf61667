"""Counterfactual data augmentation (CDA): swap gendered words and first names from a word-pair list.

Paper: Lu et al. 2018, "Gender Bias in Neural Natural Language Processing" (arXiv:1807.11714): add to the
training set a copy of every example with its gendered words swapped (he <-> she, king <-> queen, ...), so that
a model sees each context with both genders; the word lists follow Zhao et al. 2018 (WinoBias, NAACL) and the
first names Hall Maudslay et al. 2019 (EMNLP, the "names intervention"). The shipped list is
`ftlab/assets/cda/gender_pairs.tsv`; its header gives the file format.

    swaps = load_pairs()                           # the shipped list (or load_pairs("my_pairs.tsv"))
    swap_text("He thanked HER mother.", swaps)     # -> ("She thanked HIS father.", 3)
    train, n = augment(train, "add", swaps)        # n examples held a listed word; each got a swapped copy

Rules of `swap_text`:
- A word is a maximal run of letters (Unicode), so punctuation, digits, apostrophes and hyphens delimit words:
  "he's" swaps "he", "father-in-law" swaps "father", "spider-man" becomes "spider-woman". Everything between
  words is copied unchanged; a word not in the list is untouched (matching is case-insensitive).
- Case follows the original word: he -> she, He -> She, HE -> SHE (other mixed case: first letter's case).
- One left-to-right pass, each word looked up once in the original text: "he and she" -> "she and he", never
  he -> she -> he.
- her/his: "her" is a possessive determiner ("her film" -> "his film") or an object pronoun ("told her that"
  -> "told him that"); "his" is a possessive determiner ("his film" -> "her film") or an independent pronoun
  ("the film is his ." -> "hers"). Without a parser the next word decides: if there is none, or only
  punctuation follows, or the next word is a function word (`OBJECT_CONTEXT`: determiners, prepositions,
  conjunctions, pronouns, auxiliaries, a few adverbs) the word is read as object/independent (her -> him,
  his -> hers), otherwise as possessive (her -> his, his -> her). This errs in cases like "gave her flowers"
  (-> "gave his flowers") or "made her cry"; Lu et al. resolved the same ambiguity with a POS tagger.
- Sentence pairs (`text_a`, `text_b`) are swapped with the same table, so both sides stay consistent; tagging
  examples swap each token in place (same number of tokens, tags unchanged).

Known limits of word-list CDA (as in the papers): names of people, characters and titles are swapped like any
word ("the blair witch project" -> "the blair wizard project"), and a gender-neutral use of a listed word is
swapped too.

`augment(examples, mode, swaps)`: mode 'add' (two-sided CDA, Lu et al.) keeps every example and puts a swapped
copy right after each one that holds a listed word (source `path:line#cda`); 'replace' (one-sided, like
Hall Maudslay et al.'s substitution with probability 1) puts the swapped copy in place of the original.
Config keys (ftlab.train.loop, train split only): task.augment none | cda, task.augment_mode add | replace,
task.augment_pairs '' (the shipped list) | a path.

Probe set (`build_probe` / `format_probe` / `read_probe`): sentences holding a listed word, each with its
swapped counterpart, as a TSV; the committed `ftlab/assets/cda/sst2_dev_probe.tsv` is written by
scripts/make_cda_probe.py from the shipped SST-2 dev split and read by scripts/counterfactual.py, which reports
how often a run's prediction flips between the two sides. This module uses no JAX.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from ftlab.data.errors import DataError

PAIRS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "cda",
                          "gender_pairs.tsv")
AUGMENT = ("none", "cda")
MODES = ("add", "replace")
DIRECTIONS = ("both", ">", "<")

# her/his: (partner before a noun phrase, partner otherwise). A word may have two partners in one direction only
# if it is one of these and its partners are exactly these two.
CONTEXT_PARTNERS = {"her": ("his", "him"), "his": ("her", "hers")}

# Next words after which her/his is read as an object / independent pronoun, not a possessive determiner.
OBJECT_CONTEXT = frozenset("""
    a an the this that these those some any every each another
    my your his her its our their me him us them you i he she it we they who whom whose what which where when
    why how himself herself itself themselves myself yourself ourselves
    to in on at by for from with into onto about as like of over under through off out up down away back
    around after before behind beyond without within across against along among toward towards upon than
    via since until till during except
    and or but nor so yet because if while though although whether then
    is are was were be been being am has have had do does did will would can could should shall may might must
    's 're 'll 'd not n't too again alone anymore here there now today tonight tomorrow yesterday instead once
    twice anyway well
""".split())

_WORD = re.compile(r"[^\W\d_]+")  # a maximal run of letters


@dataclasses.dataclass(frozen=True)
class Swaps:
    """A loaded pair list: `table` maps a lower-case word to its partner; `context` holds her/his (see above)."""

    table: dict[str, str]
    context: dict[str, tuple[str, str]]
    source: str

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.table or word.lower() in self.context


def load_pairs(path: str | None = None) -> Swaps:
    """The pair list at `path` (None or '': the shipped `PAIRS_FILE`); `DataError` naming `file:line` if malformed."""
    path = path or PAIRS_FILE
    if not os.path.isfile(path):
        raise DataError(f"{path}: word-pair file not found")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    to: dict[str, dict[str, tuple[str, int]]] = {}   # word -> {partner: line}
    side: dict[str, tuple[str, int]] = {}             # word -> ('male' | 'female', line)
    for i, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].rstrip("\r").strip(" ")
        if not line.strip():
            continue
        where = f"{path}:{i}"
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise DataError(f"{where}: expected 'male<TAB>female[<TAB>direction]', got {len(fields)} "
                            f"tab-separated field(s): {raw!r}")
        male, female = fields[0].strip(), fields[1].strip()
        direction = fields[2].strip() if len(fields) == 3 else "both"
        if direction not in DIRECTIONS:
            raise DataError(f"{where}: direction {direction!r} is not one of {list(DIRECTIONS)}")
        for w in (male, female):
            if not _WORD.fullmatch(w):
                raise DataError(f"{where}: {w!r} is not a single word of letters")
            if w != w.lower():
                raise DataError(f"{where}: {w!r} must be lower case (matching ignores case)")
        if male == female:
            raise DataError(f"{where}: {male!r} is paired with itself")
        for w, s in ((male, "male"), (female, "female")):
            if w in side and side[w][0] != s:
                raise DataError(f"{where}: {w!r} is listed as {s} here but as {side[w][0]} on line {side[w][1]}")
            side.setdefault(w, (s, i))
        pairs = ([(male, female)] if direction in ("both", ">") else []) + (
            [(female, male)] if direction in ("both", "<") else [])
        for src, dst in pairs:
            have = to.setdefault(src, {})
            if dst in have:
                raise DataError(f"{where}: {src!r} -> {dst!r} is already on line {have[dst]}")
            if have and src not in CONTEXT_PARTNERS:
                old, n = next(iter(have.items()))
                raise DataError(f"{where}: {src!r} already has the partner {old!r} (line {n}); a word has one "
                                f"partner in each direction (mark the extra line '>' or '<'), except "
                                f"{sorted(CONTEXT_PARTNERS)} whose partner depends on the next word")
            have[dst] = i
    table, context = {}, {}
    for src, partners in to.items():
        if len(partners) == 1:
            table[src] = next(iter(partners))
        elif set(partners) == set(CONTEXT_PARTNERS[src]) and len(partners) == 2:
            context[src] = CONTEXT_PARTNERS[src]
        else:
            raise DataError(f"{path}:{max(partners.values())}: {src!r} has the partners {sorted(partners)}; "
                            f"two partners are allowed only as {list(CONTEXT_PARTNERS[src])}")
    return Swaps(table, context, path)


def _match_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def _next_word_is_object_context(text: str, end: int) -> bool:
    rest = text[end:].lstrip()
    if not rest:
        return True
    m = _WORD.match(rest)
    if m is None:  # punctuation (or a digit) follows; "'s"/"n't" style clitics count as function words
        clitic = re.match(r"['’][^\W\d_]+", rest)
        return clitic is None or clitic.group(0).replace("’", "'").lower() in OBJECT_CONTEXT
    return m.group(0).lower() in OBJECT_CONTEXT


def swap_text(text: str, swaps: Swaps) -> tuple[str, int]:
    """`text` with every listed word replaced by its partner (rules in the module docstring), and the count."""
    out, done = swap_words(text, swaps)
    return out, len(done)


def swap_words(text: str, swaps: Swaps) -> tuple[str, list[tuple[str, str]]]:
    """As `swap_text`, with the (original, replacement) words in order instead of their count."""
    done: list[tuple[str, str]] = []

    def sub(m: re.Match) -> str:
        word = m.group(0)
        low = word.lower()
        if low in swaps.context:
            possessive, other = swaps.context[low]
            new = other if _next_word_is_object_context(text, m.end()) else possessive
        elif low in swaps.table:
            new = swaps.table[low]
        else:
            return word
        new = _match_case(new, word)
        done.append((word, new))
        return new

    return _WORD.sub(sub, text), done


def swap_example(example: dict[str, Any], swaps: Swaps) -> tuple[dict[str, Any], int]:
    """A copy of an example dict with its text fields swapped consistently, and the number of words swapped.

    Classification/regression examples: `text_a` and `text_b` (None stays None). Tagging: each of `tokens`."""
    out = dict(example)
    n = 0
    if "tokens" in example:
        tokens = list(example["tokens"])
        if any(not t or re.search(r"\s", t) for t in tokens):
            raise DataError(f"{example.get('source', '?')}: a token is empty or holds whitespace; cannot swap "
                            "tokens in place")
        swapped, n = swap_text(" ".join(tokens), swaps)  # joined, so her/his see the next token
        out["tokens"] = swapped.split(" ")
        if len(out["tokens"]) != len(tokens):  # pragma: no cover - swaps are word-for-word
            raise AssertionError("token count changed")
        return out, n
    for key in ("text_a", "text_b"):
        if example.get(key) is not None:
            out[key], k = swap_text(example[key], swaps)
            n += k
    return out, n


def augment(examples: list[dict[str, Any]], mode: str, swaps: Swaps) -> tuple[list[dict[str, Any]], int]:
    """CDA over a list of examples: (augmented list, number of examples that held a listed word).

    mode 'add': every original, each followed by its swapped copy if it held a listed word (source + '#cda');
    'replace': the swapped copy instead of the original. Order is otherwise kept."""
    if mode not in MODES:
        raise ValueError(f"augment mode {mode!r} is not one of {list(MODES)}")
    out, changed = [], 0
    for ex in examples:
        new, n = swap_example(ex, swaps)
        if n == 0:
            out.append(ex)
            continue
        changed += 1
        new["source"] = f"{ex.get('source', '')}#cda"
        out.extend([ex, new] if mode == "add" else [new])
    return out, changed


def check_config(task_cfg: Any) -> tuple[str, str, str]:
    """(augment, mode, pairs) of a config's `task` section; `ConfigError` on a value that is not valid.

    Missing keys (configs saved before CDA existed) read as off."""
    from ftlab.config import ConfigError

    augment_, mode = task_cfg.get("augment", "none"), task_cfg.get("augment_mode", "add")
    pairs = task_cfg.get("augment_pairs", "")
    if augment_ not in AUGMENT:
        raise ConfigError(f"task.augment={augment_!r} is not one of {list(AUGMENT)}")
    if mode not in MODES:
        raise ConfigError(f"task.augment_mode={mode!r} is not one of {list(MODES)}")
    if augment_ == "none" and (mode != "add" or pairs):
        raise ConfigError("task.augment_mode / task.augment_pairs are set but task.augment is 'none' "
                          "(set task.augment=cda)")
    if pairs and not os.path.isfile(pairs):
        raise ConfigError(f"task.augment_pairs={pairs!r}: file not found")
    return augment_, mode, pairs


# ---------------------------------------------------------------------------------------------- probe set
PROBE_FILE = os.path.join(os.path.dirname(PAIRS_FILE), "sst2_dev_probe.tsv")
PROBE_COLUMNS = ("id", "source", "label", "swaps", "text", "swapped")


def build_probe(examples: list[dict[str, Any]], swaps: Swaps, root: str = "") -> list[dict[str, Any]]:
    """Probe pairs: every single-text example holding a listed word, with its swapped counterpart, in order.

    Rows {'id', 'source' (with `root` + '/' stripped), 'label', 'swaps' ('old>new' words, space-separated),
    'text', 'swapped'}."""
    rows = []
    prefix = root.rstrip("/") + "/" if root else ""
    for ex in examples:
        if ex.get("text_b") is not None or "tokens" in ex:
            raise ValueError(f"{ex.get('source')}: probe pairs are built from single-text examples")
        swapped, done = swap_words(ex["text_a"], swaps)
        if not done:
            continue
        source = ex["source"][len(prefix):] if prefix and ex["source"].startswith(prefix) else ex["source"]
        rows.append({"id": len(rows), "source": source, "label": ex["label"],
                     "swaps": " ".join(f"{a}>{b}" for a, b in done), "text": ex["text_a"], "swapped": swapped})
    return rows


def format_probe(rows: list[dict[str, Any]]) -> str:
    """The probe TSV's text (header + one row per pair; texts hold no tabs or newlines)."""
    lines = ["\t".join(PROBE_COLUMNS)]
    for r in rows:
        fields = [str(r[c]) for c in PROBE_COLUMNS]
        if any(("\t" in f or "\n" in f) for f in fields):
            raise ValueError(f"{r['source']}: a field holds a tab or newline")
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def read_probe(path: str | None = None) -> list[dict[str, Any]]:
    """The probe pairs of a TSV written by `format_probe` (None: the shipped `PROBE_FILE`)."""
    from ftlab.data import readers

    path = path or PROBE_FILE
    header, rows = readers.read_tsv(path, header=True)
    if tuple(header) != PROBE_COLUMNS:
        raise DataError(f"{path}:1: header {header}, expected {list(PROBE_COLUMNS)}")
    out = []
    for line, f in rows:
        r = dict(zip(PROBE_COLUMNS, f))
        try:
            r["id"], r["label"] = int(r["id"]), int(r["label"])
        except ValueError:
            raise DataError(f"{path}:{line}: id and label must be integers, got {f[0]!r}, {f[2]!r}") from None
        if r["text"] == r["swapped"]:
            raise DataError(f"{path}:{line}: the swapped text equals the original")
        out.append(r)
    return out
