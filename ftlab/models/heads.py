"""Task heads and `TaskModel`: backbone (params under 'backbone') + head (params under 'head').

Head parameter names follow Hugging Face so checkpoint conversion stays a table:

    family  sequence_classification              token_classification   masked_lm / causal_lm
    bert    head/classifier (on backbone pooler)  head/classifier        head/predictions/{transform/dense,
    roberta head/dense, head/out_proj             head/classifier          transform/LayerNorm, bias} (decoder
                                                                           tied to word_embeddings)
    llama   head/score (no bias)                  head/score             head/lm_head (absent when tied)
    gpt2    head/score (no bias)                  head/classifier        tied to wte

Pooling (sequence classification): 'default' (BERT: pooler; RoBERTa: CLS token into its dense/out_proj head;
decoders: last real token), 'pooler', 'cls', 'mean' (over real tokens), 'last' (last real token; works for
left and right padding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ftlab.models.configs import BertConfig, GPT2Config, LlamaConfig, ModelConfig, family
from ftlab.models.layers import Dense, Dropout, LayerNorm, activation, compute_dtype

Array = jax.Array
HEADS = (None, "sequence_classification", "token_classification", "masked_lm", "causal_lm", "early_exit")
POOLINGS = ("default", "pooler", "cls", "mean", "last")


def pool(hidden: Array, attention_mask: Array, how: str) -> Array:
    """hidden: [B, T, D], attention_mask: [B, T] -> [B, D] by 'cls' | 'mean' | 'last'."""
    if how == "cls":
        return hidden[:, 0]
    m = attention_mask.astype(hidden.dtype)
    if how == "mean":
        return (hidden * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1)
    if how == "last":
        t = hidden.shape[1]
        last = t - 1 - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=1)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling {how!r}; choose from {POOLINGS}")


def _dropout_rate(c: ModelConfig) -> float:
    if c.classifier_dropout is not None:
        return c.classifier_dropout
    return c.hidden_dropout_prob if isinstance(c, BertConfig) else 0.1


class LMTransform(nn.Module):
    """dense -> act -> LayerNorm: BERT `cls.predictions.transform` / RoBERTa `lm_head.{dense,layer_norm}`."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        act = "gelu" if c.model_type == "roberta" else c.hidden_act
        x = Dense(c.hidden_size, True, dt, nn.initializers.normal(c.initializer_range), name="dense")(x)
        return LayerNorm(c.layer_norm_eps, dt, name="LayerNorm")(activation(act)(x))


class LMPredictionHead(nn.Module):
    """BERT `cls.predictions`: transform -> tied decoder + bias. hidden [B, T, D], table [V, D] -> [B, T, V]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, table: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        x = LMTransform(c, name="transform")(hidden)
        bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), jnp.float32)
        return jnp.dot(x, table.astype(dt).T) + bias.astype(dt)


class ExitHead(nn.Module):
    """One early exit (DeeBERT's off-ramp): pool -> dense -> tanh -> dropout -> classifier.
    hidden [B, T, D], mask [B, T] -> (logits [B, C], pooled [B, D]). Pooling 'default' is 'mean'."""

    config: ModelConfig
    num_labels: int = 2
    pooling: str = "default"

    @nn.compact
    def __call__(self, hidden: Array, attention_mask: Array, deterministic: bool = True) -> tuple[Array, Array]:
        c = self.config
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        how = "mean" if self.pooling in ("default", "pooler") else self.pooling
        pooled = pool(hidden, attention_mask, how)
        x = jnp.tanh(Dense(c.hidden_size, True, dt, init, name="dense")(pooled))
        x = Dropout(_dropout_rate(c))(x, deterministic=deterministic)
        return Dense(self.num_labels, True, dt, init, name="classifier")(x), pooled


class LearnedExit(nn.Module):
    """BERxiT's learning-to-exit module, shared by all layers: σ(w·pooled + b), the predicted chance that this
    exit's output is right. Fed stop_gradient(pooled): its loss trains it without moving the backbone.
    pooled [B, D] -> logit [B]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, pooled: Array) -> Array:
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        return Dense(1, True, compute_dtype(c.dtype), init, name="dense")(jax.lax.stop_gradient(pooled))[:, 0]


class EarlyExitHeads(nn.Module):
    """An exit after every layer (params head/exits/{i}/{dense,classifier}, i = 0..L-1) and the shared
    learned-exit module (head/lte/dense). all_hidden: L × [B, T, D] ->
    {'logits': [B, L, C], 'lte': [B, L] (logits of σ)}."""

    config: ModelConfig
    num_labels: int = 2
    pooling: str = "default"

    @nn.compact
    def __call__(self, all_hidden: list, attention_mask: Array, deterministic: bool) -> dict[str, Array]:
        lte = LearnedExit(self.config, name="lte")
        logits, gates = [], []
        for i, h in enumerate(all_hidden):
            lg, pooled = ExitHead(self.config, self.num_labels, self.pooling, name=f"exits_{i}")(
                h, attention_mask, deterministic)
            logits.append(lg)
            gates.append(lte(pooled))
        return {"logits": jnp.stack(logits, 1).astype(jnp.float32), "lte": jnp.stack(gates, 1).astype(jnp.float32)}


class Head(nn.Module):
    """All heads in one place; `name='head'`. Inputs come from the backbone's output dict."""

    config: ModelConfig
    head: str
    num_labels: int = 2
    pooling: str = "default"

    @nn.compact
    def __call__(self, out: dict[str, Any], attention_mask: Array, deterministic: bool) -> Array:
        c, fam = self.config, family(self.config)
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        hidden = out["hidden"]
        drop = Dropout(_dropout_rate(c))
        if self.head == "sequence_classification":
            how = self.pooling
            if fam == "bert" and c.model_type == "roberta":
                x = (
                    out["pooled"]
                    if how == "pooler"
                    else pool(hidden, attention_mask, "cls" if how == "default" else how)
                )
                x = drop(x, deterministic=deterministic)
                x = jnp.tanh(Dense(c.hidden_size, True, dt, init, name="dense")(x))
                x = drop(x, deterministic=deterministic)
                return Dense(self.num_labels, True, dt, init, name="out_proj")(x)
            if fam == "bert":
                x = out["pooled"] if how in ("default", "pooler") else pool(hidden, attention_mask, how)
                x = drop(x, deterministic=deterministic)
                return Dense(self.num_labels, True, dt, init, name="classifier")(x)
            # Decoders: HF applies `score` to every position and picks the last non-pad one; same numbers.
            if how == "pooler":
                raise ValueError(f"pooling 'pooler' needs a BERT pooler; {fam} has none")
            x = pool(hidden, attention_mask, "last" if how == "default" else how)
            return Dense(self.num_labels, False, dt, init, name="score")(x)
        if self.head == "token_classification":
            x = drop(hidden, deterministic=deterministic)
            name = "score" if fam == "llama" else "classifier"
            return Dense(self.num_labels, True, dt, init, name=name)(x)
        if self.head == "masked_lm":
            if fam != "bert":
                raise ValueError(f"masked_lm head needs an encoder (bert family), got {fam}")
            return LMPredictionHead(c, name="predictions")(hidden, out["embedding"])
        if self.head == "early_exit":
            if fam != "bert":
                raise ValueError(f"early_exit head is built for encoders (bert family), got {fam}")
            return EarlyExitHeads(c, self.num_labels, self.pooling, name="early_exit")(
                out["all_hidden"], attention_mask, deterministic)
        if self.head == "causal_lm":
            if fam == "bert":
                raise ValueError("causal_lm head needs a decoder (llama or gpt2 family), got bert")
            if c.tie_word_embeddings:
                return jnp.dot(hidden.astype(dt), out["embedding"].astype(dt).T)
            return Dense(c.vocab_size, False, dt, init, name="lm_head")(hidden)
        raise ValueError(f"unknown head {self.head!r}; choose from {HEADS}")


class TaskModel(nn.Module):
    """backbone + optional head. See `ftlab.models.build_model` for the call signature.

    Decoders also accept `position_ids` [B, T], `cache` (per-layer k/v, see `generate.init_cache`) and
    `cache_index` (slot of the first query); with a cache the call returns (output, new_cache).
    Module deltas are read from the `delta` collection (see the model files); with a soft prompt of length P
    the backbone runs on P + T positions, sequence heads pool over them (BERT's pooler sees the first prompt
    vector, as with PEFT) and per-token outputs are returned for the T input tokens only.
    `positions` [B, M] (per-token heads): the head runs at those input positions only and returns [B, M, ...]
    (the masked LM's chosen slots: its vocabulary projection then costs M/T of the full one).
    """

    config: ModelConfig
    head: str | None = None
    num_labels: int = 2
    pooling: str = "default"

    def _backbone(self) -> nn.Module:
        c = self.config
        if isinstance(c, BertConfig):
            from ftlab.models.bert import BertModel

            needs_pooler = self.head == "sequence_classification" and (
                self.pooling == "pooler" or (self.pooling == "default" and c.model_type == "bert")
            )
            return BertModel(c, with_pooler=needs_pooler, all_hidden=self.head == "early_exit", name="backbone")
        if isinstance(c, LlamaConfig):
            from ftlab.models.llama import LlamaModel

            return LlamaModel(c, name="backbone")
        if isinstance(c, GPT2Config):
            from ftlab.models.gpt2 import GPT2Model

            return GPT2Model(c, name="backbone")
        raise TypeError(f"not an ftlab model config: {type(c).__name__}")

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
        position_ids: Array | None = None,
        cache: dict | None = None,
        cache_index: Array | int | None = None,
        positions: Array | None = None,
        lm_head_inputs: bool = False,
    ) -> Any:
        """`lm_head_inputs`: with a tied causal-LM head and no cache or positions, return {'hidden' [B, T, D],
        'table' [V, D]} instead of the logits, for `ftlab.train.losses.causal_lm_fused` (no [B, T, V] array);
        other heads ignore it."""
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose from {HEADS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {POOLINGS}")
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        backbone = self._backbone()
        if isinstance(self.config, BertConfig):
            if cache is not None:
                raise ValueError("KV cache is for decoders only")
            out = backbone(input_ids, attention_mask, token_type_ids, deterministic)
            new_cache = None
        else:
            out, new_cache = backbone(
                input_ids, attention_mask, deterministic, position_ids, cache, cache_index
            )
        num_prompt = out.get("num_prompt", 0)
        if (lm_head_inputs and self.head == "causal_lm" and cache is None and positions is None
                and getattr(self.config, "tie_word_embeddings", False)):
            hidden = out["hidden"][:, num_prompt:] if num_prompt else out["hidden"]
            return {"hidden": hidden.astype(compute_dtype(self.config.dtype)), "table": out["embedding"]}
        if self.head is None:
            result = out["hidden"].astype(jnp.float32)
        else:
            # Only the query block's mask matters for pooling; with a cache `attention_mask` spans all slots.
            # A soft prompt (prompt tuning) extends the query block: its positions count for pooling.
            q_mask = attention_mask if cache is None else jnp.ones(input_ids.shape, jnp.int32)
            if num_prompt:
                q_mask = out["mask"]
            if positions is not None:  # per-token heads at [B, M] positions only (masked LM's chosen slots)
                if self.head not in ("masked_lm", "causal_lm", "token_classification"):
                    raise ValueError(f"positions= needs a per-token head, not {self.head!r}")
                at = jnp.asarray(positions, jnp.int32) + num_prompt
                out = {**out, "hidden": jnp.take_along_axis(out["hidden"], at[..., None], axis=1)}
            result = Head(self.config, self.head, self.num_labels, self.pooling, name="head")(
                out, q_mask, deterministic
            )
            if not isinstance(result, dict):  # early exit returns {'logits', 'lte'}, already float32
                result = result.astype(jnp.float32)
        if num_prompt and positions is None and self.head not in ("sequence_classification", "early_exit"):
            result = result[:, num_prompt:]  # per-token outputs are for the input tokens only
        return result if cache is None else (result, new_cache)
