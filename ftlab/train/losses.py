"""Task losses over model outputs. Shapes: B batch, T tokens, C classes, V vocabulary.

Every loss is a weighted mean with weights from `batch['example_mask']` (padding rows of a padded final
batch weigh 0) and, for token-level tasks, from labels != -100 (HF's ignore index).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -100


def compute(kind: str, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """(scalar loss, {'loss_sum', 'weight'}) for kind in classification | regression | tagging | causal_lm."""
    ex_w = batch.get("example_mask")
    if ex_w is None:
        ex_w = jnp.ones(logits.shape[0], jnp.float32)
    logits = logits.astype(jnp.float32)
    if kind == "classification":  # logits [B,C], labels [B]
        labels = batch["labels"].astype(jnp.int32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
        w = ex_w
    elif kind == "regression":  # logits [B,1], labels [B]
        nll = jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32))
        w = ex_w
    elif kind in ("tagging", "causal_lm", "masked_lm"):  # logits [B,T,C], labels [B,T]
        labels = batch["labels"].astype(jnp.int32)
        if kind == "causal_lm":  # predict token t+1 from the prefix up to t: shift the labels, not the logits
            labels = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)
        valid = labels != IGNORE
        safe = jnp.where(valid, labels, 0)
        # logsumexp − the label's logit: no [B, T, V] log-softmax (or sliced logits) is materialised, which
        # with SmolLM2's 49,152-word vocabulary is 48 MB per 256 tokens
        picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
        nll = jax.nn.logsumexp(logits, axis=-1) - picked
        w = valid.astype(jnp.float32) * ex_w[:, None]
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    loss_sum = jnp.sum(nll * w)
    weight = jnp.sum(w)
    return loss_sum / jnp.maximum(weight, 1.0), {"loss_sum": loss_sum, "weight": weight}


def predictions(kind: str, logits: jax.Array) -> jax.Array:
    """Class index [B] / value [B] / tag indices [B,T]."""
    if kind == "regression":
        return logits[:, 0].astype(jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
