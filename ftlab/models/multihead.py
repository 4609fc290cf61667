"""`MultiTaskModel`: one shared backbone and one head per named task (multi-task training, ftlab.train.multitask).

Parameter tree:

    backbone/...            exactly `TaskModel`'s backbone paths, so θ₀ loads from the same converted
                            checkpoint and every delta's path regexes (LoRA targets, BitFit biases, adapters in
                            the `delta` collection, ...) apply unchanged
    head/<name>/...         one head per task, each one of TaskModel's head kinds with TaskModel's names below
                            it (e.g. head/sst2/classifier/kernel, head/mlm/predictions/transform/dense/kernel).
                            Every delta's `train_head` rule (`head/.*`) therefore trains all heads.

`heads` is a tuple of (name, head kind, num_labels); kinds: sequence_classification (regression: 1 output),
token_classification, masked_lm, causal_lm. Names are [A-Za-z0-9_]+ (they are path components).

The static field `active` selects what a call computes (only the backbone and those heads run):
    None          every head: a dict name -> output (what `init` needs, so all heads get parameters)
    'sst2'        that head's output alone, exactly as a TaskModel with that head returns it; so
                  `model.select('sst2')` can be passed wherever a TaskModel is expected (e.g.
                  ftlab.train.step.make_eval_step)
    ('a', 'b')    a dict of those heads' outputs on the same inputs

`positions` [B, M] (as TaskModel's): the active per-token heads (masked_lm, causal_lm, token_classification) run
at those input positions only and return [B, M, ...] (the masked LM's chosen slots, so the vocabulary projection
of an LM source costs M/T of the full one); a sequence head cannot be active in such a call.

`named_head(params, name)` moves a single-task tree's head (head/...) onto one named head (head/<name>/...);
`single_head(params, name)` is the inverse (backbone + that head as a TaskModel tree).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ftlab import tree
from ftlab.models.configs import BertConfig, GPT2Config, LlamaConfig, ModelConfig, family
from ftlab.models.heads import POOLINGS, Head

Array = jax.Array
HEAD_KINDS = ("sequence_classification", "token_classification", "masked_lm", "causal_lm")
NAME_RX = re.compile(r"[A-Za-z0-9_]+")


def check_heads(config: ModelConfig, heads: Sequence[tuple[str, str, int]]) -> None:
    """Raise ValueError naming the offending head: bad or repeated name, unknown kind, kind the family lacks."""
    if not heads:
        raise ValueError("a multi-task model needs at least one head")
    fam = family(config)
    seen = set()
    for name, kind, num_labels in heads:
        if not isinstance(name, str) or not NAME_RX.fullmatch(name):
            raise ValueError(f"head name {name!r}: use letters, digits and '_' (it is a parameter path component)")
        if name in seen:
            raise ValueError(f"head name {name!r} appears twice")
        seen.add(name)
        if kind not in HEAD_KINDS:
            raise ValueError(f"head {name!r}: kind {kind!r} not in {HEAD_KINDS}")
        if kind == "masked_lm" and fam != "bert":
            raise ValueError(f"head {name!r}: masked_lm needs the bert family, got {fam}")
        if kind == "causal_lm" and fam == "bert":
            raise ValueError(f"head {name!r}: causal_lm needs a decoder (llama or gpt2), got bert")
        if int(num_labels) < 1:
            raise ValueError(f"head {name!r}: num_labels={num_labels} must be >= 1")


class MultiHead(nn.Module):
    """The `head` container: a `Head` per task, named by the task. Runs the heads in `active` only."""

    config: ModelConfig
    heads: tuple[tuple[str, str, int], ...]
    pooling: str = "default"

    @nn.compact
    def __call__(self, out: dict[str, Any], attention_mask: Array, deterministic: bool,
                 active: tuple[str, ...]) -> dict[str, Array]:
        return {name: Head(self.config, kind, num_labels, self.pooling, name=name)(out, attention_mask, deterministic)
                for name, kind, num_labels in self.heads if name in active}


class MultiTaskModel(nn.Module):
    """Shared backbone + named heads (see the module docstring). Call as TaskModel (encoders and decoders; no
    KV cache): input_ids [B, T], attention_mask [B, T], token_type_ids [B, T] (BERT family), deterministic,
    positions [B, M] (per-token heads only)."""

    config: ModelConfig
    heads: tuple[tuple[str, str, int], ...]
    pooling: str = "default"
    active: str | tuple[str, ...] | None = None

    def select(self, active: str | Sequence[str] | None) -> MultiTaskModel:
        """The same model (same parameters) computing only the head(s) `active` (see the module docstring)."""
        names = [h[0] for h in self.heads]
        wanted = [active] if isinstance(active, str) else list(active or [])
        for a in wanted:
            if a not in names:
                raise ValueError(f"no head {a!r} in this model (heads: {names})")
        return self.clone(active=active if active is None or isinstance(active, str) else tuple(active))

    def _active(self) -> tuple[str, ...]:
        if self.active is None:
            return tuple(h[0] for h in self.heads)
        return (self.active,) if isinstance(self.active, str) else tuple(self.active)

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 deterministic: bool = True, positions: Array | None = None) -> Array | dict[str, Array]:
        check_heads(self.config, self.heads)
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {POOLINGS}")
        active = self._active()
        kinds = {name: kind for name, kind, _ in self.heads}
        unknown = [a for a in active if a not in kinds]
        if unknown:
            raise ValueError(f"no head {unknown[0]!r} in this model (heads: {list(kinds)})")
        if positions is not None and any(kinds[a] == "sequence_classification" for a in active):
            raise ValueError(f"positions= needs per-token heads; active heads: {[(a, kinds[a]) for a in active]}")
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        c = self.config
        if isinstance(c, BertConfig):
            # The same module TaskModel builds (name 'backbone'); the pooler only where an active head reads it.
            from ftlab.models.bert import BertModel

            needs_pooler = any(kinds[a] == "sequence_classification" for a in active) and (
                self.pooling == "pooler" or (self.pooling == "default" and c.model_type == "bert"))
            out = BertModel(c, with_pooler=needs_pooler, name="backbone")(
                input_ids, attention_mask, token_type_ids, deterministic)
        elif isinstance(c, LlamaConfig):
            from ftlab.models.llama import LlamaModel

            out, _ = LlamaModel(c, name="backbone")(input_ids, attention_mask, deterministic)
        elif isinstance(c, GPT2Config):
            from ftlab.models.gpt2 import GPT2Model

            out, _ = GPT2Model(c, name="backbone")(input_ids, attention_mask, deterministic)
        else:
            raise TypeError(f"not an ftlab model config: {type(c).__name__}")
        num_prompt = out.get("num_prompt", 0)
        q_mask = out["mask"] if num_prompt else attention_mask  # a soft prompt's positions count for pooling
        if positions is not None:  # per-token heads at [B, M] positions only (the masked LM's chosen slots)
            at = jnp.asarray(positions, jnp.int32) + num_prompt
            out = {**out, "hidden": jnp.take_along_axis(out["hidden"], at[..., None], axis=1)}
        results = MultiHead(c, self.heads, self.pooling, name="head")(out, q_mask, deterministic, active)
        for name in results:
            results[name] = results[name].astype(jnp.float32)
            if num_prompt and positions is None and kinds[name] != "sequence_classification":
                results[name] = results[name][:, num_prompt:]  # per-token outputs are for the input tokens only
        if isinstance(self.active, str):
            return results[self.active]
        return results


def build_multitask_model(config: ModelConfig, heads: Sequence[tuple[str, str, int]],
                          pooling: str = "default") -> MultiTaskModel:
    """A MultiTaskModel with every head active; `model.select(name)` for one head."""
    heads = tuple((str(n), str(k), int(c)) for n, k, c in heads)
    check_heads(config, heads)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
    return MultiTaskModel(config, heads, pooling)


def named_head(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A single-task tree's head/... moved to head/<name>/... (backbone and other leaves unchanged); e.g. a
    checkpoint's trained classifier as the initial value of one task's head."""
    if not NAME_RX.fullmatch(name):
        raise ValueError(f"head name {name!r}: use letters, digits and '_'")
    flat = tree.flatten(params)
    if not any(p.startswith("head/") for p in flat):
        raise ValueError("named_head: the tree has no head/... leaves")
    return tree.unflatten({(f"head/{name}/{p[5:]}" if p.startswith("head/") else p): x for p, x in flat.items()})


def single_head(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A multi-task tree reduced to a TaskModel tree: backbone/... and head/<name>/... renamed head/...; the
    other heads dropped (e.g. to export or evaluate one task, or start a single-task stage from it)."""
    flat = tree.flatten(params)
    prefix = f"head/{name}/"
    if not any(p.startswith(prefix) for p in flat):
        heads = sorted({p.split("/")[1] for p in flat if p.startswith("head/")})
        raise ValueError(f"single_head: no head {name!r} (heads: {heads})")
    return tree.unflatten({("head/" + p[len(prefix):] if p.startswith(prefix) else p): x for p, x in flat.items()
                           if not p.startswith("head/") or p.startswith(prefix)})
