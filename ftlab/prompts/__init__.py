"""Prompt templates, verbalizers and demonstrations (strings -> token ids; no JAX).

    template.py  the template / verbalizer string formats, parsing, filling, errors
    patterns.py  published patterns per task (LM-BFF's manual templates, PET's patterns)
    encode.py    examples -> prompt rows + label-word targets for the cloze and causal scorers, in-context prefixes

The JAX side (scores from model logits, the prompt-based loss) is `ftlab/train/prompting.py`.
"""

from ftlab.prompts.encode import PromptEncoded, demonstrations, encode_prompts
from ftlab.prompts.patterns import PATTERNS, Pattern, get_pattern
from ftlab.prompts.template import TemplateError, fill, parse_template, parse_verbalizer

__all__ = ["PATTERNS", "Pattern", "PromptEncoded", "TemplateError", "demonstrations", "encode_prompts", "fill",
           "get_pattern", "parse_template", "parse_verbalizer"]
