"""Prompt templates, verbalizers and demonstrations (strings -> token ids; no JAX).

    template.py  the template / verbalizer string formats, parsing, filling, errors
    patterns.py  published patterns per task (LM-BFF's manual templates, PET's patterns)
    encode.py    examples -> prompt rows + label-word targets for the cloze and causal scorers, in-context prefixes
    seq2seq.py   examples -> encoder rows + decoder label-word rows for an encoder–decoder (T5, text-to-text)

The JAX side (scores from model logits, the prompt-based loss) is `ftlab/train/prompting.py`.
"""

from ftlab.prompts.encode import PromptEncoded, demonstrations, encode_prompts
from ftlab.prompts.patterns import PATTERNS, Pattern, get_pattern
from ftlab.prompts.seq2seq import Seq2SeqEncoded, encode_seq2seq
from ftlab.prompts.template import TemplateError, fill, parse_template, parse_verbalizer

__all__ = ["PATTERNS", "Pattern", "PromptEncoded", "Seq2SeqEncoded", "TemplateError", "demonstrations",
           "encode_prompts", "encode_seq2seq", "fill", "get_pattern", "parse_template", "parse_verbalizer"]
