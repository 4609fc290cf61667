"""Task losses over model outputs. Shapes: B batch, T tokens, C classes, V vocabulary.

Every loss is a weighted mean with weights from `batch['example_mask']` (padding rows of a padded final
batch weigh 0) and, for token-level tasks, from labels != -100 (HF's ignore index).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IGNORE = -100


def next_token_labels(labels: jax.Array) -> jax.Array:
    """Causal LM: position t predicts token t+1 from the prefix up to t: shift the labels, not the logits."""
    return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)


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
        if kind == "causal_lm":
            labels = next_token_labels(labels)
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


# ------------------------------------------------------------------ causal-LM loss fused with the tied LM head
#
# A decoder's LM loss over N tokens and a V-word vocabulary goes through [N, V] logits: for SmolLM2 at batch 8 ×
# 256 (V = 49,152) that is 403 MB in float32, and autodiff keeps it, its exponentials and its cotangent alive
# together at the turn from the forward to the backward pass. `fused_lm_nll_sum` never holds more than one
# [chunk, V] block: the forward pass walks the tokens in chunks and, for each, takes the log-sum-exp, the label's
# logit and, already, the loss's gradient with respect to the chunk's hidden states ((softmax − onehot)·w @ table)
# and, when the table is trained, its share of the table's gradient. The output is a scalar, so the backward
# pass only scales those by the incoming cotangent: no product is recomputed and the FLOPs are those of plain
# autodiff (forward product, dx product, and the table's product only when the table is perturbed).
LM_CHUNK = 256


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def fused_lm_nll_sum(hidden: jax.Array, table: jax.Array, labels: jax.Array, weights: jax.Array,
                     chunk: int = LM_CHUNK) -> jax.Array:
    """Σ_n weights[n] · −log softmax(hidden[n] @ tableᵀ)[labels[n]] (float32 scalar) in token chunks.

    hidden [N, D] (compute dtype), table [V, D] (the tied embedding), labels [N] int (any value where weight 0),
    weights [N] float32. Gradients flow to hidden and table."""
    return _fused_lm(hidden, table, labels, weights, chunk, grad_table=False)[0]


def _fused_lm(hidden, table, labels, weights, chunk, grad_table):
    n, d = hidden.shape
    pad = (-n) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
        labels = jnp.pad(labels, (0, pad))
        weights = jnp.pad(weights, (0, pad))
    steps = (n + pad) // chunk
    tab = table.astype(hidden.dtype)
    vocab = jnp.arange(table.shape[0], dtype=jnp.int32)

    def body(carry, xs):
        total, dtab = carry
        h, y, w = xs
        logits = jax.lax.dot_general(h, tab, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        g = (jnp.exp(logits - lse[:, None]) - (vocab[None, :] == y[:, None])) * w[:, None]  # dloss/dlogits
        g = g.astype(hidden.dtype)
        dh = jnp.dot(g, tab, preferred_element_type=jnp.float32).astype(hidden.dtype)
        if grad_table:
            dtab = dtab + jax.lax.dot_general(g, h, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return (total + jnp.sum(w * (lse - picked)), dtab), dh

    xs = (hidden.reshape(steps, chunk, d), labels.reshape(steps, chunk), weights.reshape(steps, chunk))
    dtab0 = jnp.zeros(table.shape, jnp.float32) if grad_table else None
    (total, dtab), dh = jax.lax.scan(body, (jnp.zeros((), jnp.float32), dtab0), xs)
    return total, dh.reshape(n + pad, d)[:n], dtab


def _fused_lm_fwd(hidden, table, labels, weights, chunk):
    grad_table = table.perturbed
    total, dh, dtab = _fused_lm(hidden.value, table.value, labels.value, weights.value, chunk, grad_table)
    return total, (dh, None if dtab is None else dtab.astype(table.value.dtype))


def _fused_lm_bwd(chunk, res, ct):
    dh, dtab = res
    ct = jnp.asarray(ct, jnp.float32)
    dtab = None if dtab is None else (ct * dtab.astype(jnp.float32)).astype(dtab.dtype)
    return (ct * dh.astype(jnp.float32)).astype(dh.dtype), dtab, None, None


fused_lm_nll_sum.defvjp(_fused_lm_fwd, _fused_lm_bwd, symbolic_zeros=True)


def causal_lm_fused(hidden: jax.Array, table: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """`compute('causal_lm', hidden @ tableᵀ, batch)` without the [B, T, V] logits (see above)."""
    ex_w = batch.get("example_mask")
    if ex_w is None:
        ex_w = jnp.ones(hidden.shape[0], jnp.float32)
    labels = next_token_labels(batch["labels"].astype(jnp.int32))
    valid = labels != IGNORE
    w = valid.astype(jnp.float32) * ex_w[:, None]
    b, t, d = hidden.shape
    loss_sum = fused_lm_nll_sum(hidden.reshape(b * t, d), table, jnp.where(valid, labels, 0).reshape(-1),
                                w.reshape(-1))
    weight = jnp.sum(w)
    return loss_sum / jnp.maximum(weight, 1.0), {"loss_sum": loss_sum, "weight": weight}
