"""BERT-family encoder (BERT, RoBERTa, MiniLM) in Flax linen, parameter paths mirroring Hugging Face.

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings/LayerNorm
    encoder/layer/{i}/attention/self/{query,key,value}, encoder/layer/{i}/attention/output/{dense,LayerNorm}
    encoder/layer/{i}/intermediate/dense, encoder/layer/{i}/output/{dense,LayerNorm}
    pooler/dense                                   (only when config.add_pooling_layer or a head needs it)

Post-LN transformer. Attention lives in `BertSelfAttention`, the feed-forward block in `BertIntermediate` +
`BertOutput`; those are the named sites where module deltas are read from the `delta` collection:

    every Dense                           lora_a/lora_b/lora_scale/lora_dropout, ia3_in/ia3_out (layers.Dense)
    embeddings/word_embeddings            lora_a/lora_b (layers.Embed)
    embeddings/prompt [P, D]              soft prompt prepended to the word embeddings (prompt tuning)
    embeddings/input_noise [B, T, D]      added to the T tokens' word embeddings, before the prompt, positions,
                                          token types and LayerNorm (ftlab.train.regularizers' perturbation)
    encoder/layer/{i}/attention/self/prefix_key, prefix_value [P, D]   prefix tuning's extra keys/values
    encoder/layer/{i}/{attention/output,output}/adapter           Houlsby: dense -> dropout -> adapters ->
                                                                   LayerNorm(. + residual)
    encoder/layer/{i}/{attention/output,output}/adapter_after_ln  Pfeiffer (AdapterHub): h = LayerNorm(dense +
                                                                   residual) -> each adapter reads
                                                                   LayerNorm(. + residual) and adds to dense
With a prompt the sequence is P + T long (positions 0..P+T-1, token type 0 for the prompt, as PEFT feeds
`inputs_embeds`); with a prefix the real tokens' positions start at P (HF's `past_key_values_length`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ftlab.models.configs import BertConfig
from ftlab.models.layers import (
    Dense,
    Dropout,
    Embed,
    LayerNorm,
    activation,
    adapters,
    compute_dtype,
    constrain_rows,
    delta_leaf,
    dot_product_attention,
    input_noise,
    padding_mask,
    remat_layer,
    with_prefix,
)

Array = jax.Array


def roberta_position_ids(input_ids: Array, pad_token_id: int, past: int = 0) -> Array:
    """HF `create_position_ids_from_input_ids`: real tokens count up from pad_token_id + 1 (+ past key/value
    length), pads get pad_token_id."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return (jnp.cumsum(real, axis=1) + past) * real + pad_token_id


class BertEmbeddings(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array | None, past: int = 0) -> tuple[Array, Array]:
        """input_ids, token_type_ids: [B, T] -> (embeddings [B, P+T, D], word embedding table [V, D]).

        P = soft-prompt length (0 without a prompt); `past` = prefix length (shifts positions as in HF)."""
        c = self.config
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        words = Embed(c.vocab_size, c.hidden_size, dt, init, name="word_embeddings")
        b, t = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = input_noise(self, words(input_ids))
        if self.has_variable("delta", "prompt"):
            prompt = self.get_variable("delta", "prompt").astype(dt)  # [P, D]
            p = prompt.shape[0]
            x = jnp.concatenate([jnp.broadcast_to(prompt[None], (b, p, prompt.shape[1])), x], axis=1)
            token_type_ids = jnp.concatenate(
                [jnp.zeros((b, p), token_type_ids.dtype), token_type_ids], axis=1
            )
            t = t + p
            # HF given inputs_embeds: positions are sequential (RoBERTa: from pad_token_id + 1, no pad rule).
            start = c.pad_token_id + 1 if c.model_type == "roberta" else 0
            pos_ids = jnp.broadcast_to(jnp.arange(t) + start + past, (b, t))
        elif c.model_type == "roberta":
            pos_ids = roberta_position_ids(input_ids, c.pad_token_id, past)
        else:
            pos_ids = jnp.broadcast_to(jnp.arange(t) + past, (b, t))
        x = x + Embed(c.max_position_embeddings, c.hidden_size, dt, init, name="position_embeddings")(pos_ids)
        x = x + Embed(c.type_vocab_size, c.hidden_size, dt, init, name="token_type_embeddings")(
            token_type_ids
        )
        x = LayerNorm(c.layer_norm_eps, dt, name="LayerNorm")(x)
        x = Dropout(c.hidden_dropout_prob)(x, deterministic=self.deterministic)
        return x, words.embedding


class BertSelfAttention(nn.Module):
    """Multi-head self-attention. x: [B, T, D], mask: bool [B, 1, 1|T, T] -> context [B, T, D]."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        h, dh = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        init = nn.initializers.normal(c.initializer_range)
        b, t, _ = x.shape
        det = self.deterministic
        q = Dense(c.hidden_size, True, dt, init, name="query", deterministic=det)(x).reshape(b, t, h, dh)
        k = Dense(c.hidden_size, True, dt, init, name="key", deterministic=det)(x).reshape(b, t, h, dh)
        v = Dense(c.hidden_size, True, dt, init, name="value", deterministic=self.deterministic)(x)
        v = v.reshape(b, t, h, dh)
        if self.has_variable("delta", "prefix_key"):
            prefix = (self.get_variable("delta", "prefix_key"), self.get_variable("delta", "prefix_value"))
            k, v, mask = with_prefix(k, v, mask, *prefix)
        rate = c.attention_probs_dropout_prob
        rng = self.make_rng("dropout") if (not self.deterministic and rate > 0) else None
        out = dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=rng, impl=c.attention)
        return out.reshape(b, t, c.hidden_size)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual); HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, residual: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        x = Dense(c.hidden_size, True, dt, init, name="dense", deterministic=self.deterministic)(x)
        x = Dropout(c.hidden_dropout_prob)(x, deterministic=self.deterministic)
        x = adapters(self, x, "adapter")  # Houlsby: before the residual + LayerNorm
        norm = LayerNorm(c.layer_norm_eps, dt, name="LayerNorm")
        if self.has_variable("delta", "adapter_after_ln"):
            # Pfeiffer (AdapterHub's SeqBnConfig): each adapter reads the block output LN(x + residual) and adds
            # to the sublayer output x before that LayerNorm, which then runs again:
            # LN(x + up(f(down(LN(x + residual)))) + residual), the unmodified block when up = 0.
            x = adapters(self, x, "adapter_after_ln", read=lambda s: norm(s + residual))
        return norm(x + residual)


class BertAttention(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        ctx = BertSelfAttention(self.config, self.deterministic, name="self")(x, mask)
        return BertResidualOutput(self.config, self.deterministic, name="output")(ctx, x)


class BertIntermediate(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        dt = compute_dtype(c.dtype)
        x = Dense(c.intermediate_size, True, dt, init, name="dense", deterministic=self.deterministic)(x)
        return activation(c.hidden_act)(x)


class BertLayer(nn.Module):
    """One post-LN block. x: [B, T, D] -> [B, T, D]."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        x = BertAttention(self.config, self.deterministic, name="attention")(x, mask)
        hidden = BertIntermediate(self.config, self.deterministic, name="intermediate")(x)
        return BertResidualOutput(self.config, self.deterministic, name="output")(hidden, x)


class BertLayerStack(nn.Module):
    """The `encoder/layer` container: children named "0".."L-1" so paths read encoder/layer/3/...

    Returns the last layer's output, or with `all_hidden` the list of every layer's output (early exit)."""

    config: BertConfig
    deterministic: bool = True
    all_hidden: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array | list[Array]:
        layer_cls = remat_layer(BertLayer, self.config.remat)
        outs = []
        for i in range(self.config.num_hidden_layers):
            x = constrain_rows(layer_cls(self.config, self.deterministic, name=str(i))(x, mask))
            outs.append(x)
        return outs if self.all_hidden else x


class BertEncoder(nn.Module):
    config: BertConfig
    deterministic: bool = True
    all_hidden: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array | list[Array]:
        return BertLayerStack(self.config, self.deterministic, self.all_hidden, name="layer")(x, mask)


class BertPooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        """hidden: [B, T, D] -> tanh(dense(hidden[:, 0])): [B, D]."""
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        return jnp.tanh(Dense(c.hidden_size, True, compute_dtype(c.dtype), init, name="dense")(hidden[:, 0]))


class BertModel(nn.Module):
    """The backbone. Returns {'hidden': [B, P+T, D], 'pooled': [B, D] | None, 'embedding': [V, D],
    'mask': [B, P+T], 'num_prompt': P} (P = soft-prompt length, 0 without prompt tuning), and with
    `all_hidden` also 'all_hidden': every layer's output (a list of L [B, P+T, D] arrays; early exit)."""

    config: BertConfig
    with_pooler: bool = False
    all_hidden: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> dict[str, Any]:
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        prefix = delta_leaf(self, "encoder/layer/0/attention/self/prefix_key")
        past = 0 if prefix is None else prefix.shape[0]
        x, table = BertEmbeddings(c, deterministic, name="embeddings")(input_ids, token_type_ids, past)
        num_prompt = x.shape[1] - input_ids.shape[1]
        if num_prompt:
            ones = jnp.ones((input_ids.shape[0], num_prompt), attention_mask.dtype)
            attention_mask = jnp.concatenate([ones, attention_mask], axis=1)
        layers = BertEncoder(c, deterministic, self.all_hidden, name="encoder")(x, padding_mask(attention_mask))
        all_hidden = layers if self.all_hidden else None
        x = layers[-1] if self.all_hidden else layers
        pooled = None
        if c.add_pooling_layer or self.with_pooler:
            pooled = BertPooler(c, name="pooler")(x)
        return {
            "hidden": x,
            "pooled": pooled,
            "embedding": table,
            "mask": attention_mask,
            "num_prompt": num_prompt,
            **({"all_hidden": all_hidden} if self.all_hidden else {}),
        }
