"""Published patterns (template + verbalizer) per task, as plain strings.

`PATTERNS[task]` is a list; `get_pattern("sst2:0")` (or `get_pattern("0", task="sst2")`) picks one. Pattern 0
of each task is LM-BFF's manual template and label words (Gao et al. 2021, Table 1 / their
`run_experiment.sh`), rewritten in ftlab's template format (`ftlab.prompts.template`): `*cls*`/`*sep+*` are
the tokenizer's own special tokens, `_` is a space, `*sent-_0*` is `{sentence1|nopunct}`, `*+sentl_1*` is
` {sentence2|lower}`. Further patterns follow PET's sentiment patterns (Schick & Schütze 2021a, Yelp/Amazon:
"It was ___.", "Just ___!", "All in all, it was ___.") or are marked `source='ftlab'`.

Verbalizer keys are the task's `label_names` (`ftlab.tasks`): SST-2/CoLA/CR/MPQA "0"/"1", SST-5 "0".."4"
(very negative .. very positive), MR "neg"/"pos", TREC the coarse classes, MRPC "0"/"1" (1 = paraphrase).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Pattern:
    template: str
    verbalizer: dict[str, str]
    source: str  # where the template and the words come from


_BIN = {"0": "terrible", "1": "great"}
_SST5 = {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}
_MR = {"neg": "terrible", "pos": "great"}


def _sentiment(words: dict[str, str]) -> list[Pattern]:
    return [
        Pattern("{sentence} It was {mask}.", words, "LM-BFF manual"),
        Pattern("It was {mask}. {sentence}", words, "PET (Yelp pattern 0)"),
        Pattern("Just {mask}! {sentence}", words, "PET (Yelp pattern 1)"),
        Pattern("{sentence} All in all, it was {mask}.", words, "PET (Yelp pattern 2)"),
    ]


PATTERNS: dict[str, list[Pattern]] = {
    "sst2": _sentiment(_BIN),
    "sst5": _sentiment(_SST5),
    "mr": _sentiment(_MR),
    "cr": _sentiment(_BIN),
    "mpqa": _sentiment(_BIN),  # the staged MPQA variant: 0 = negative (assumed as in LM-BFF; not verified)
    "trec": [
        Pattern("{mask}: {sentence}", {"ABBR": "Expression", "DESC": "Description", "ENTY": "Entity",
                                        "HUM": "Human", "LOC": "Location", "NUM": "Number"}, "LM-BFF manual"),
        # The label before the question suits a masked LM; a causal LM reads the question first here.
        Pattern("{sentence} Answer type: {mask}.", {"ABBR": "Expression", "DESC": "Description",
                                                    "ENTY": "Entity", "HUM": "Human", "LOC": "Location",
                                                    "NUM": "Number"}, "ftlab"),
    ],
    "mrpc": [
        Pattern("{sentence1|nopunct}? {mask}, {sentence2|lower}", {"0": "No", "1": "Yes"}, "LM-BFF manual"),
        Pattern("{sentence1} {mask}, {sentence2}", {"0": "No", "1": "Yes"}, "ftlab"),
    ],
    "cola": [Pattern("{sentence} This is {mask}.", {"0": "incorrect", "1": "correct"}, "LM-BFF manual")],
}


def get_pattern(spec: str, task: str | None = None) -> Pattern:
    """`spec` is "<task>:<index>" or "<index>" (with `task`)."""
    name, sep, idx = spec.rpartition(":")
    if not sep:
        name, idx = task or "", spec
    if name not in PATTERNS:
        raise KeyError(f"no patterns for task {name!r} (pattern spec {spec!r}); tasks with patterns: "
                       f"{sorted(PATTERNS)}")
    try:
        return PATTERNS[name][int(idx)]
    except (ValueError, IndexError):
        raise KeyError(f"pattern {spec!r}: task {name!r} has patterns 0..{len(PATTERNS[name]) - 1}") from None
