"""The pure train and eval steps.

State (a dict, donated to the step so its buffers are reused in place):
  step      int32 scalar
  train     trainable leaves of δ (the only thing differentiated and given optimizer state)
  fixed     non-trainable leaves of δ (e.g. a fixed sparse mask, a Fastfood seed)
  opt_state optax state over `train`
  rng       base PRNG key; the step's key is fold_in(rng, step), so a resumed run draws the same numbers
  ema       (only with train.ema_decay > 0) the exponential moving average of `train`, same structure
            (ftlab.train.averaging)
θ₀ (`base`) is a separate, never-donated argument: it is read, never written, and never differentiated,
so frozen weights cost no weight-gradient compute.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ftlab import tree
from ftlab.models.heads import TaskModel
from ftlab.models.layers import rows_sharded_over
from ftlab.train import averaging, losses

# Batch keys holding row indices into the batch's own rows (prompt batches, ftlab.prompts): choice_row indexes
# the rows the logits come from (decoder rows of a seq2seq batch, else input rows), encoder_rows the encoder rows.
ROW_INDEX_KEYS = {"choice_row": ("decoder_input_ids", "input_ids"), "encoder_rows": ("input_ids",)}


def model_inputs(batch: dict) -> dict:
    kw = {"attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch:
        kw["token_type_ids"] = batch["token_type_ids"]
    if "positions" in batch:  # the masked LM's chosen slots (ftlab.train.lm)
        kw["positions"] = batch["positions"]
    for k in ("decoder_input_ids", "decoder_attention_mask", "encoder_rows"):  # a seq2seq (T5) prompt batch
        if k in batch:
            kw[k] = batch[k]
    return kw


def microbatch_rows(micro: dict) -> dict:
    """Microbatches [A, b, ...] of a batch whose row-index keys (ROW_INDEX_KEYS) count from the start of each
    microbatch. Example e's rows are contiguous (e·R .. e·R+R−1) and a microbatch holds whole examples, so the
    global index i becomes i mod (the microbatch's rows of the indexed array)."""
    out = dict(micro)
    for key, targets in ROW_INDEX_KEYS.items():
        if key in micro:
            rows = micro[next(t for t in targets if t in micro)].shape[1]
            out[key] = micro[key] % rows
    return out


def apply_delta(delta_mod: ModuleType, base: Any, delta: Any, rng: jax.Array | None = None,
                step: jax.Array | None = None, total_steps: int | None = None) -> dict:
    """variables = delta_mod.apply(θ₀, δ) in training, with the extras a delta declares:
    STOCHASTIC (diff pruning's gates): rng=key, train=True; SCHEDULED (pruning's sparsity schedule):
    step=current step, total_steps=the run's length. Evaluation calls apply(θ₀, δ) alone."""
    kw: dict[str, Any] = {}
    if getattr(delta_mod, "STOCHASTIC", False) and rng is not None:
        kw.update(rng=rng, train=True)
    if getattr(delta_mod, "SCHEDULED", False) and step is not None:
        kw.update(step=step, total_steps=total_steps)
    return delta_mod.apply(base, delta, **kw)


def delta_penalty(delta_mod: ModuleType, total_steps: int | None = None) -> Callable | None:
    """The delta's loss term as penalty(δ, step) (diff pruning's expected L0, soft movement's λ_t·Σσ(S)), or
    None. A SCHEDULED delta's penalty also sees the step and the run's length."""
    penalty = getattr(delta_mod, "penalty", None)
    if penalty is None:
        return None
    if getattr(delta_mod, "SCHEDULED", False):
        return lambda delta, step: penalty(delta, step, total_steps)
    return lambda delta, step: penalty(delta)


def make_loss_fn(model: nn.Module, delta_mod: ModuleType, kind: str, total_steps: int | None = None,
                 loss: Callable | None = None, transform: Callable | None = None) -> Callable:
    """loss_fn(train, fixed, base, batch, rng, step) -> (loss, aux).

    `loss(logits, batch, step) -> (loss, aux)` replaces `losses.compute(kind, ...)` (e.g. early exit's
    combination of the exits' losses, which may depend on the step).
    `transform(batch, rng) -> batch` rewrites the batch first, with its own key split from the step's
    (the masked LM draws its masks there: ftlab.train.lm.make_mlm_transform)."""
    penalty = delta_penalty(delta_mod, total_steps)
    stochastic = getattr(delta_mod, "STOCHASTIC", False)
    # A tied causal-LM head hands the loss its hidden states and table instead of [B, T, V] logits.
    fused_lm = {"lm_head_inputs": True} if (loss is None and kind == "causal_lm" and isinstance(model, TaskModel)
                                              and model.head == "causal_lm") else {}
    if loss is None:
        loss = lambda logits, batch, step: losses.compute(kind, logits, batch)  # noqa: E731

    def loss_fn(train, fixed, base, batch, rng, step=None):
        delta = tree.merge(train, fixed) if fixed else train
        delta_rng = None
        if stochastic:  # a stochastic delta samples with its own key in training
            rng, delta_rng = jax.random.split(rng)
        if transform is not None:
            rng, t_rng = jax.random.split(rng)
            batch = transform(batch, t_rng)
        variables = apply_delta(delta_mod, base, delta, delta_rng, step, total_steps)
        logits = model.apply(variables, batch["input_ids"], deterministic=False, rngs={"dropout": rng},
                             **model_inputs(batch), **fused_lm)
        if isinstance(logits, dict) and "table" in logits:
            value, aux = losses.causal_lm_fused(logits["hidden"], logits["table"], batch)
        else:
            value, aux = loss(logits, batch, step)
        if penalty is not None:  # e.g. diff pruning's expected-L0 term
            reg = penalty(delta, step)
            aux["penalty"] = reg
            value = value + reg
        return value, aux

    return loss_fn


def accumulated_value_and_grad(loss_fn: Callable, accum_steps: int, penalty: Callable | None = None) -> Callable:
    """value_and_grad of `loss_fn` over a batch split into `accum_steps` equal microbatches (a `lax.scan`, so
    only one microbatch's activations are live at a time), equal to the whole batch's up to rounding.

    Exact for padded and token-level losses: each microbatch contributes its loss *sum* and its weight (real
    examples or tokens), and the sums are divided by the batch's total weight once. A delta's penalty (diff
    pruning's L0 term) does not depend on the data and is added once. Microbatch i draws its dropout from
    fold_in(rng, i). A prompt batch (R rows per example in some keys) is split by examples, its row indices made
    local to each microbatch (`microbatch_rows`)."""

    def sum_loss(train, fixed, base, batch, rng, step):
        _, aux = loss_fn(train, fixed, base, batch, rng, step)
        return aux["loss_sum"], aux

    def value_and_grad(train, fixed, base, batch, rng, step=None):
        # examples: the fewest rows of any key (a prompt batch has R rows per example in input_ids, one in labels)
        b = min(x.shape[0] for x in jax.tree_util.tree_leaves(batch))
        if b % accum_steps:
            raise ValueError(f"batch of {b} rows does not split into grad_accum={accum_steps} equal microbatches")
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)
        micro = microbatch_rows(micro)  # a prompt batch's row indices, local to each microbatch

        def body(carry, xs):
            grads, loss_sum, weight = carry
            mb, i = xs
            (ls, aux), g = jax.value_and_grad(sum_loss, has_aux=True)(train, fixed, base, mb,
                                                                      jax.random.fold_in(rng, i), step)
            return (jax.tree_util.tree_map(jnp.add, grads, g), loss_sum + ls, weight + aux["weight"]), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, train)
        (grads, loss_sum, weight), _ = jax.lax.scan(
            body, (zeros, jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32)), (micro, jnp.arange(accum_steps)))
        weight = jnp.maximum(weight, 1.0)
        loss = loss_sum / weight
        grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
        aux = {"loss_sum": loss_sum, "weight": weight}
        if penalty is not None:  # data-independent (diff pruning's L0 term): value and gradient once, from δ alone
            reg, pen_grads = jax.value_and_grad(lambda t: penalty(tree.merge(t, fixed) if fixed else t, step))(train)
            aux["penalty"] = reg
            loss = loss + reg
            grads = jax.tree_util.tree_map(jnp.add, grads, pen_grads)
        return (loss, aux), grads

    return value_and_grad


def make_train_step(model: nn.Module, delta_mod: ModuleType, tx: optax.GradientTransformation, kind: str,
                    on_nonfinite: str = "stop", shardings: dict | None = None, accum_steps: int = 1,
                    total_steps: int | None = None, loss: Callable | None = None, ema_decay: float = 0.0,
                    ema_warmup: bool = False, reg: dict | None = None, jit: bool = True,
                    transform: Callable | None = None) -> Callable:
    """jit(step)(state, base, batch) -> (state, metrics); `state` is donated.

    `reg`: the config's `reg` section (ftlab.train.regularizers: R3F/R4F, SMART, FreeLB) replaces the plain
    value_and_grad and adjusts δ / state['reg'] after the update; metrics then also hold 'reg'.
    `jit=False` returns the plain function (for `jax.vmap` over seeds, ftlab.train.sweep; no shardings).

    `accum_steps` > 1: gradient accumulation over that many equal microbatches of the batch (one optimizer
    update per step; see `accumulated_value_and_grad`).

    `shardings` ({'state', 'base', 'batch'} from `ftlab.parallel.train_shardings`) fixes the step's input and
    output layouts: the new state comes back laid out as the old one (so step two reuses the compilation and
    donation reuses the buffers) and the metrics replicated (readable on every host).

    `total_steps` reaches SCHEDULED deltas (pruning's sparsity schedule); `loss`, `transform` as for
    `make_loss_fn`.

    `ema_decay` > 0: the step also updates `state['ema']` (`averaging.ema_update`, with `ema_warmup`); a
    skipped non-finite step leaves it unchanged (array ops only: the plain function stays vmappable)."""
    loss_fn = make_loss_fn(model, delta_mod, kind, total_steps, loss, transform)
    regularizer = None
    if reg is not None and reg.get("method", "none") != "none":
        from ftlab.train import regularizers

        if transform is not None:
            raise ValueError("the embedding-perturbation regularisers do not support LM objectives (reg.method)")
        regularizers.check_training(reg, accum_steps)
        regularizer = regularizers.build(reg, model, delta_mod, kind, total_steps, loss)
        value_and_grad = regularizer["value_and_grad"]
    elif accum_steps == 1:
        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    else:
        value_and_grad = accumulated_value_and_grad(loss_fn, accum_steps, delta_penalty(delta_mod, total_steps))

    def train_step(state: dict, base: Any, batch: dict) -> tuple[dict, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        args = (state["train"], state["fixed"], base, batch, rng, state["step"])
        if regularizer is None:
            (loss, aux), grads = value_and_grad(*args)
        else:  # SMART's EMA teacher travels in state['reg']
            (loss, aux), grads = value_and_grad(*args, state.get("reg"))
        gnorm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["train"])
        new_train = optax.apply_updates(state["train"], updates)
        new_state = {**state, "step": state["step"] + 1, "opt_state": opt_state}
        if regularizer is not None:  # R4F's normalised head, SMART's EMA update
            new_train, reg_state = regularizer["after_update"](new_train, state.get("reg"))
            if "reg" in state:
                new_state["reg"] = reg_state
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        if on_nonfinite == "skip":  # keep the previous δ and optimizer state for this step
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
            new_train, new_state["opt_state"] = keep(new_train, state["train"]), keep(opt_state, state["opt_state"])
            if "reg" in state:
                new_state["reg"] = keep(new_state["reg"], state["reg"])
        new_state["train"] = new_train
        if ema_decay:  # weight averaging (ftlab.train.averaging): array ops only, so the step stays vmappable
            ema = averaging.ema_update(state["ema"], new_train, state["step"], ema_decay, ema_warmup)
            if on_nonfinite == "skip":
                ema = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), ema, state["ema"])
            new_state["ema"] = ema
        metrics = {"loss": loss, "grad_norm": gnorm, "finite": finite}
        for k in ("penalty", "reg"):
            if k in aux:
                metrics[k] = aux[k]
        return new_state, metrics

    if not jit:
        if shardings is not None:
            raise ValueError("make_train_step(jit=False) takes no shardings")
        return train_step
    if shardings is None:
        return jax.jit(train_step, donate_argnums=(0,))
    mesh = shardings["batch"].mesh
    everywhere = NamedSharding(mesh, PartitionSpec())

    def train_step_on_mesh(state: dict, base: Any, batch: dict) -> tuple[dict, dict]:
        with rows_sharded_over(mesh):  # the model constrains activations at block boundaries (constrain_rows)
            return train_step(state, base, batch)

    return jax.jit(train_step_on_mesh, in_shardings=(shardings["state"], shardings["base"], shardings["batch"]),
                   out_shardings=(shardings["state"], everywhere), donate_argnums=(0,))


def make_eval_step(model: nn.Module, delta_mod: ModuleType, kind: str, shardings: dict | None = None,
                   jit: bool = True, scores: Callable | None = None, with_scores: bool = False,
                   transform: Callable | None = None) -> Callable:
    """jit(eval)(train, fixed, base, batch) -> {'pred', 'loss_sum', 'weight'} (`jit=False`: the plain function).

    `shardings` as for `make_train_step`; the outputs are then replicated (every host reads all rows).
    `scores(logits, batch) -> [B, C]` turns the model's outputs into class scores first (prompt-based models:
    label-word scores from LM logits, `ftlab.train.prompting.make_scores`).
    `with_scores`: the outputs also hold 'scores', what a snapshot ensemble averages (`averaging.ensemble_outputs`):
    class probabilities [B, C] (classification) / [B, T, C] (tagging), predicted values [B] (regression).
    `transform(batch, None)` rewrites each batch first (the masked LM's fixed evaluation masks)."""

    def eval_step(train, fixed, base, batch):
        if transform is not None:
            batch = transform(batch, None)
        delta = tree.merge(train, fixed) if fixed else train
        variables = delta_mod.apply(base, delta)
        logits = model.apply(variables, batch["input_ids"], deterministic=True, **model_inputs(batch))
        if isinstance(logits, dict):  # early exit: the metrics are the last exit's (the full model's)
            logits = logits["logits"][:, -1]
        if scores is not None:
            logits = scores(logits, batch)
        _, aux = losses.compute(kind, logits, batch)
        out = {"pred": losses.predictions(kind, logits), **aux}
        if with_scores:
            out["scores"] = averaging.scores(kind, logits)
        return out

    if not jit:
        return eval_step
    if shardings is None:
        return jax.jit(eval_step)
    s = shardings["state"]
    return jax.jit(eval_step, in_shardings=(s["train"], s["fixed"], shardings["base"], shardings["batch"]),
                   out_shardings=NamedSharding(shardings["batch"].mesh, PartitionSpec()))
