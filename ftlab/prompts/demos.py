"""LM-BFF demonstrations (Gao et al. 2021, §6): one training example per class, written with the template and
its label word, appended to each input (NumPy only; the sentence embeddings come from the caller).

    sampling 'random'   each class's demonstration drawn uniformly from that class's training examples
    sampling 'similar'  drawn uniformly from the top `top_fraction` (LM-BFF: 50%) of that class's examples by
                        cosine similarity of sentence embeddings to the input (LM-BFF used SBERT; ftlab MiniLM,
                        `ftlab.train.prompting.embed_sentences`)

An input never gets itself as a demonstration. Classes appear in a random order. `with_demonstrations`
returns copies of the examples with a `demos` text field, one copy per sampled demonstration set; the template
reads it as `{demos}` (`demo_template` puts it after the prompt for masked LMs, as LM-BFF does, and before it
for causal LMs, so the label word is scored after the demonstrations). With several sets per input, encode
with `encode_prompts(..., variants=n)`: the sets become extra rows of the same example and the label score is
the mean over them (LM-BFF's ensemble over demonstration sets at inference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftlab.prompts.template import fill, parse_verbalizer

SAMPLINGS = ("random", "similar")


def demo_template(template: str, scorer: str) -> str:
    """`template` with the `{demos}` field: after it (cloze) or before it (causal)."""
    return f"{template} {{demos}}" if scorer == "cloze" else f"{{demos}} {template}"


def choose(
    query_emb: np.ndarray | None,
    pool_labels: Sequence[int],
    pool_emb: np.ndarray | None,
    num_labels: int,
    rng: np.random.Generator,
    sampling: str,
    exclude: int | None = None,
    top_fraction: float = 0.5,
) -> list[int]:
    """Pool indices of one demonstration per class (classes in random order). Embeddings: [D] / [N, D],
    L2-normalised, only for 'similar'."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown demonstration sampling {sampling!r}; choose from {SAMPLINGS}")
    labels = np.asarray(pool_labels)
    out = []
    for c in rng.permutation(num_labels):
        cand = np.flatnonzero(labels == c)
        if exclude is not None:
            cand = cand[cand != exclude]
        if not len(cand):
            raise ValueError(f"no demonstration available for class {c} (pool of {len(labels)} examples)")
        if sampling == "similar":
            sims = pool_emb[cand] @ query_emb
            keep = max(1, int(round(top_fraction * len(cand))))
            cand = cand[np.argsort(-sims, kind="stable")[:keep]]
        out.append(int(rng.choice(cand)))
    return out


def with_demonstrations(
    examples: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    template: str,
    verbalizer: str | Mapping[str, Any],
    label_names: Sequence[str],
    seed: int,
    sampling: str = "random",
    num_sets: int = 1,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    pool_is_examples: bool = False,
) -> list[dict[str, Any]]:
    """`num_sets` copies of each example (consecutive) with a `demos` field: one demonstration per class from
    `pool`, each `fill(template, demo, its label's first word)`, joined by spaces. `embeddings`: (examples [N, D],
    pool [M, D]) for 'similar'. `pool_is_examples`: the examples are the pool itself (training), so example i
    never gets pool[i]. Deterministic in `seed`."""
    choices = parse_verbalizer(verbalizer, label_names)
    word: dict[int, str] = {}
    for c, w in choices:
        word.setdefault(c, w)
    if sampling == "similar" and embeddings is None:
        raise ValueError("sampling 'similar' needs sentence embeddings of the examples and the pool")
    rng = np.random.default_rng(seed)
    pool_labels = [p["label"] for p in pool]
    out = []
    for i, e in enumerate(examples):
        for _ in range(num_sets):
            picks = choose(None if embeddings is None else embeddings[0][i], pool_labels,
                           None if embeddings is None else embeddings[1], len(label_names), rng, sampling,
                           exclude=i if pool_is_examples else None)
            demos = " ".join(fill(template, pool[j], word[pool[j]["label"]]) for j in picks)
            out.append({**e, "demos": demos})
    return out
