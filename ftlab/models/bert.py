"""BERT-family encoder (BERT, RoBERTa, MiniLM) in Flax linen, parameter paths mirroring Hugging Face.

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings/LayerNorm
    encoder/layer/{i}/attention/self/{query,key,value}, encoder/layer/{i}/attention/output/{dense,LayerNorm}
    encoder/layer/{i}/intermediate/dense, encoder/layer/{i}/output/{dense,LayerNorm}
    pooler/dense                                   (only when config.add_pooling_layer or a head needs it)

Post-LN transformer. Attention lives in `BertSelfAttention`, the feed-forward block in `BertIntermediate` +
`BertOutput`; those are the named sites where module deltas are read from the `delta` collection.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ftlab.models.configs import BertConfig
from ftlab.models.layers import (
    Dense,
    Embed,
    LayerNorm,
    activation,
    compute_dtype,
    dot_product_attention,
    padding_mask,
)

Array = jax.Array


def roberta_position_ids(input_ids: Array, pad_token_id: int) -> Array:
    """HF `create_position_ids_from_input_ids`: real tokens count up from pad_token_id + 1, pads get pad_token_id."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + pad_token_id


class BertEmbeddings(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array | None) -> tuple[Array, Array]:
        """input_ids, token_type_ids: [B, T] -> (embeddings [B, T, D], word embedding table [V, D])."""
        c = self.config
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        words = Embed(c.vocab_size, c.hidden_size, dt, init, name="word_embeddings")
        if c.model_type == "roberta":
            pos_ids = roberta_position_ids(input_ids, c.pad_token_id)
        else:
            pos_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = words(input_ids)
        x = x + Embed(c.max_position_embeddings, c.hidden_size, dt, init, name="position_embeddings")(pos_ids)
        x = x + Embed(c.type_vocab_size, c.hidden_size, dt, init, name="token_type_embeddings")(
            token_type_ids
        )
        x = LayerNorm(c.layer_norm_eps, dt, name="LayerNorm")(x)
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=self.deterministic)
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
        q = Dense(c.hidden_size, True, dt, init, name="query")(x).reshape(b, t, h, dh)
        k = Dense(c.hidden_size, True, dt, init, name="key")(x).reshape(b, t, h, dh)
        v = Dense(c.hidden_size, True, dt, init, name="value")(x).reshape(b, t, h, dh)
        rate = c.attention_probs_dropout_prob
        rng = self.make_rng("dropout") if (not self.deterministic and rate > 0) else None
        out = dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=rng)
        return out.reshape(b, t, c.hidden_size)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual); HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, residual: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        x = Dense(c.hidden_size, True, dt, nn.initializers.normal(c.initializer_range), name="dense")(x)
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=self.deterministic)
        return LayerNorm(c.layer_norm_eps, dt, name="LayerNorm")(x + residual)


class BertAttention(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        ctx = BertSelfAttention(self.config, self.deterministic, name="self")(x, mask)
        return BertResidualOutput(self.config, self.deterministic, name="output")(ctx, x)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        x = Dense(c.intermediate_size, True, compute_dtype(c.dtype), init, name="dense")(x)
        return activation(c.hidden_act)(x)


class BertLayer(nn.Module):
    """One post-LN block. x: [B, T, D] -> [B, T, D]."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        x = BertAttention(self.config, self.deterministic, name="attention")(x, mask)
        hidden = BertIntermediate(self.config, name="intermediate")(x)
        return BertResidualOutput(self.config, self.deterministic, name="output")(hidden, x)


class BertLayerStack(nn.Module):
    """The `encoder/layer` container: children named "0".."L-1" so paths read encoder/layer/3/..."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        layer_cls = nn.remat(BertLayer) if self.config.remat else BertLayer
        for i in range(self.config.num_hidden_layers):
            x = layer_cls(self.config, self.deterministic, name=str(i))(x, mask)
        return x


class BertEncoder(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        return BertLayerStack(self.config, self.deterministic, name="layer")(x, mask)


class BertPooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        """hidden: [B, T, D] -> tanh(dense(hidden[:, 0])): [B, D]."""
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        return jnp.tanh(Dense(c.hidden_size, True, compute_dtype(c.dtype), init, name="dense")(hidden[:, 0]))


class BertModel(nn.Module):
    """The backbone. Returns {'hidden': [B, T, D], 'pooled': [B, D] | None, 'embedding': [V, D]}."""

    config: BertConfig
    with_pooler: bool = False

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
        x, table = BertEmbeddings(c, deterministic, name="embeddings")(input_ids, token_type_ids)
        x = BertEncoder(c, deterministic, name="encoder")(x, padding_mask(attention_mask))
        pooled = None
        if c.add_pooling_layer or self.with_pooler:
            pooled = BertPooler(c, name="pooler")(x)
        return {"hidden": x, "pooled": pooled, "embedding": table}
