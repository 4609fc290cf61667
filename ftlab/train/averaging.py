"""Weight averaging for fine-tuning runs: an EMA of δ, the average of the last k eval snapshots, snapshot ensembles.

This module owns the pure pieces; the loop (ftlab/train/loop.py) calls them at a few marked places and the
step (ftlab/train/step.py) calls `ema_update`. Only δ's *trainable* leaves (`state['train']`) are averaged:
the fixed leaves never change during a run, so every average uses the run's own.

1. EMA of δ (Polyak & Juditsky 1992 averaging in its exponential form; e.g. Izmailov et al. 2018 discuss it
   next to SWA). With decay d and n = the state's step before update n+1 (0 for the first update):

       ema_0 = δ_0                       (the initial trainable leaves, so no bias correction is needed)
       d_n   = d                         (train.ema_warmup=False)
             = min(d, (1 + n)/(10 + n))  (train.ema_warmup=True: TF's ExponentialMovingAverage(num_updates))
       ema_{n+1} = d_n · ema_n + (1 − d_n) · δ_{n+1}

   δ_{n+1} is δ after update n+1. The EMA lives in the donated train state (`state['ema']`, the structure
   of `state['train']`), so Orbax checkpoints it and a resumed run continues it exactly; the update is
   array arithmetic only (no Python control flow on traced values), so the step stays vmappable. A step
   skipped for a non-finite loss (train.on_nonfinite=skip) leaves the EMA unchanged, though n still counts it.
   Every evaluation reports both δ (kind 'eval' in metrics.jsonl) and the EMA (kind 'eval_ema').
   `train.ema_eval` picks the weights that drive best-δ selection, early stopping, `results['metrics']`,
   `results['best_metrics']` and the exported δ: 'raw' (δ itself, the default) or 'ema'. An EMA δ is saved
   like any δ, so `ftlab eval` / `ftlab export` work on it unchanged.

2. Last-k averaging ("checkpoint averaging", as in Vaswani et al. 2017 and Popel & Bojar 2018): at each
   evaluation the trainable leaves of δ are written to `workdir/snapshots/last_k/<step>.safetensors`
   (atomically: a temporary file renamed into place) and only the newest k are kept. At the end of
   training δ̄ = (1/k)·Σ_{i=1..k} δ_(i) over the last k snapshots (fewer if fewer evals ran; the steps
   used are reported) is evaluated, saved as `workdir/delta_last_k/`, and reported in results.json.
   Snapshots newer than the checkpoint a run resumes from are deleted (they are redone identically), so a
   killed and resumed run averages the same snapshots.

3. Snapshot ensembles (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free"): with
   optim.schedule='cyclic_cosine' and optim.cycles=M the learning rate is
       α(t) = α0/2 · (cos(π · mod(t − 1, ⌈T/M⌉) / ⌈T/M⌉) + 1),   t = 1..T  (ftlab.optim.cyclic_cosine_schedule)
   and δ's trainable leaves are snapshotted at each cycle's end (after updates ⌈T/M⌉, 2⌈T/M⌉, ..., T) into
   `workdir/snapshots/cycles/`. The ensemble predicts the mean of the snapshots' class probabilities
   (classification: argmax of the mean; tagging: per token) or the mean of their predicted values
   (regression); its loss is the NLL of the mean probability (squared error of the mean value). The dev
   metrics of every snapshot and of the ensemble are reported in results.json. All M snapshots are held on
   the device while the ensemble is evaluated (M copies of the trainable leaves).

Config keys (`config.train` unless noted; an unknown or inconsistent value is a ConfigError naming the key):
  ema_decay       d in [0, 1); 0 = no EMA (typical: 0.999 for thousands of steps, 0.99 for hundreds)
  ema_warmup      True: d_n = min(d, (1+n)/(10+n)) (the EMA follows δ closely early on)
  ema_eval        'raw' | 'ema': the weights that are selected, early-stopped on and exported ('ema' needs
                  ema_decay > 0)
  average_last_k  k >= 0: average the last k eval snapshots of δ at the end of training; 0 = off
  optim.schedule / optim.cycles  'cyclic_cosine' with M cycles turns snapshot ensembles on

Multi-host runs: process 0 writes the snapshots; every process reads them at the end (the workdir is
shared; the final checkpoint, which every process joins, comes after the last snapshot is written).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.config import ConfigError
from ftlab.train import losses

EMA_EVAL = ("raw", "ema")


# ------------------------------------------------------------------------------------------------ config
def check_config(train_cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the key for an out-of-range or inconsistent averaging setting."""
    decay = train_cfg.get("ema_decay", 0.0)
    warmup = train_cfg.get("ema_warmup", False)
    which = train_cfg.get("ema_eval", "raw")
    k = train_cfg.get("average_last_k", 0)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ConfigError(f"train.ema_decay={decay!r} must be a number in [0, 1) (0 = no EMA)")
    if not isinstance(warmup, bool):
        raise ConfigError(f"train.ema_warmup={warmup!r} must be true or false")
    if warmup and not decay:
        raise ConfigError("train.ema_warmup=True needs an EMA: set train.ema_decay > 0")
    if which not in EMA_EVAL:
        raise ConfigError(f"train.ema_eval={which!r} must be one of {', '.join(EMA_EVAL)}")
    if which == "ema" and not decay:
        raise ConfigError("train.ema_eval='ema' needs an EMA: set train.ema_decay > 0")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"train.average_last_k={k!r} must be an integer >= 0 (0 = off)")


def snapshot_ensemble_on(optim_cfg: Mapping[str, Any]) -> bool:
    return optim_cfg.get("schedule") == "cyclic_cosine"


def active_keys(cfg: Mapping[str, Any]) -> list[str]:
    """The averaging settings a config turns on, as 'key=value' (for loops that do not support them)."""
    tc, oc = cfg.get("train", {}), cfg.get("optim", {})
    out = [f"train.{k}={tc[k]!r}" for k in ("ema_decay", "average_last_k") if tc.get(k)]
    if snapshot_ensemble_on(oc):
        out.append("optim.schedule='cyclic_cosine' (snapshot ensembles)")
    return out


# --------------------------------------------------------------------------------------------------- EMA
def init_ema(train: Any) -> Any:
    """ema_0 = δ_0, as distinct buffers (the state is donated: an array may appear in it only once)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), train)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """d_n for the update that follows step n (a traced int32 scalar, or [S] under vmap)."""
    d = jnp.asarray(decay, jnp.float32)
    if warmup:  # a Python bool from the config, not a traced value
        n = jnp.asarray(step, jnp.float32)
        d = jnp.minimum(d, (1.0 + n) / (10.0 + n))
    return d


def ema_update(ema: Any, train: Any, step: jax.Array, decay: float, warmup: bool = False) -> Any:
    """ema_{n+1} = d_n·ema_n + (1 − d_n)·δ_{n+1}; `train` = δ_{n+1} (after the update), `step` = n."""
    d = ema_decay_at(step, decay, warmup)
    return jax.tree_util.tree_map(lambda e, x: (d * e + (1.0 - d) * x).astype(e.dtype), ema, train)


def eval_state(state: Mapping[str, Any], weights: str) -> dict[str, Any]:
    """{'train', 'fixed'} of the raw δ ('raw') or of its EMA ('ema'), as `loop.evaluate` reads them."""
    return {"train": state["ema"] if weights == "ema" else state["train"], "fixed": state["fixed"]}


def update_best(best: Mapping[str, Any] | None, step: int, metrics: Mapping[str, float],
                main_metric: str) -> dict[str, Any]:
    """{'score', 'step', 'metrics'} of the best eval so far (lower perplexity/loss, else higher, is better)."""
    from ftlab.tasks.metrics import improved

    score = metrics[main_metric]
    if best is None or improved(main_metric, score, best.get("score")):
        return {"score": score, "step": step, "metrics": dict(metrics)}
    return dict(best)


# ------------------------------------------------------------------------------------- snapshots on disk
_SNAPSHOT = re.compile(r"^(\d+)\.safetensors$")


def snapshot_dir(workdir: str, kind: str) -> str:
    """workdir/snapshots/<kind>: 'last_k' (eval snapshots) or 'cycles' (snapshot-ensemble members)."""
    return os.path.join(workdir, "snapshots", kind)


def save_snapshot(directory: str, step: int, train: Any, keep: int | None = None) -> str:
    """Write δ's trainable leaves at `step` to directory/<step>.safetensors atomically (temporary file, fsync,
    rename); with `keep`, delete all but the newest `keep` snapshots afterwards. Returns the path."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    arrays = {p: np.ascontiguousarray(np.asarray(x)) for p, x in tree.flatten(jax.device_get(train)).items()}
    path = os.path.join(directory, f"{step:08d}.safetensors")
    tmp = os.path.join(directory, f".{step:08d}.safetensors.tmp-{os.getpid()}")
    save_file(arrays, tmp, metadata={"step": str(step)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep is not None:
        for _, old in list_snapshots(directory)[:-keep]:
            os.remove(old)
    return path


def list_snapshots(directory: str) -> list[tuple[int, str]]:
    """[(step, path)] of the complete snapshots in `directory`, oldest first (temporaries ignored)."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), os.path.join(directory, name))
             for name in os.listdir(directory) if (m := _SNAPSHOT.match(name))]
    return sorted(found)


def load_snapshot(path: str) -> dict[str, Any]:
    """The trainable-leaf tree stored at `path` (numpy arrays)."""
    from safetensors.numpy import load_file

    return tree.unflatten(load_file(path))


def discard_snapshots(directory: str, after_step: int | None) -> None:
    """Delete the snapshots newer than `after_step` (a resumed run redoes them), all of them for None (a
    fresh run), and any temporary file a killed run left behind."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        m = _SNAPSHOT.match(name)
        if ".tmp-" in name or (m and (after_step is None or int(m.group(1)) > after_step)):
            os.remove(os.path.join(directory, name))


def mean_tree(trees: Sequence[Any]) -> Any:
    """Leaf-wise mean (1/k)·Σ δ_(i) of k trees of the same structure (float32 accumulation)."""
    if not trees:
        raise ValueError("mean_tree: no trees to average")
    return jax.tree_util.tree_map(
        lambda *xs: (sum(np.asarray(x, np.float32) for x in xs) / len(xs)).astype(np.asarray(xs[0]).dtype),
        *trees)


# ------------------------------------------------------------------------------------ snapshot ensembles
def cycle_end_steps(total_steps: int, cycles: int) -> list[int]:
    """Steps after which a cyclic-cosine cycle ends: C, 2C, ..., T with C = ⌈T/M⌉ (the last may be shorter)."""
    from ftlab.optim import cycle_length

    length = cycle_length(total_steps, cycles)
    return sorted({min(i * length, total_steps) for i in range(1, cycles + 1)})


def scores(kind: str, logits: jax.Array) -> jax.Array:
    """What an ensemble averages: softmax probabilities [B, C] / [B, T, C], or predicted values [B]."""
    if kind == "regression":
        return logits[:, 0].astype(jnp.float32)
    if kind in ("classification", "tagging"):
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    raise ValueError(f"snapshot ensembles support classification, regression and tagging, not {kind!r}")


def ensemble_outputs(kind: str, member_scores: jax.Array, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The ensemble's eval outputs from its members' `scores` stacked as [M, B, ...]:
    {'pred', 'loss_sum', 'weight', 'scores'}, with the weights of `losses.compute` (padding rows and
    label -100 weigh 0). Classification/tagging: p̄ = mean of the probabilities, pred = argmax p̄,
    loss = −log p̄[label]; regression: v̄ = mean of the values, pred = v̄, loss = (v̄ − label)²."""
    mean = jnp.mean(member_scores, axis=0)
    ex_w = batch.get("example_mask")
    if ex_w is None:
        ex_w = jnp.ones(mean.shape[0], jnp.float32)
    ex_w = jnp.asarray(ex_w, jnp.float32)
    if kind == "regression":
        pred = mean
        nll = jnp.square(mean - jnp.asarray(batch["labels"], jnp.float32))
        w = ex_w
    elif kind in ("classification", "tagging"):
        pred = jnp.argmax(mean, axis=-1).astype(jnp.int32)
        labels = jnp.asarray(batch["labels"], jnp.int32)
        valid = labels != losses.IGNORE
        p = jnp.take_along_axis(mean, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
        nll = -jnp.log(jnp.maximum(p, jnp.finfo(jnp.float32).tiny))
        w = ex_w if kind == "classification" else valid.astype(jnp.float32) * ex_w[:, None]
    else:
        raise ValueError(f"snapshot ensembles support classification, regression and tagging, not {kind!r}")
    return {"pred": pred, "loss_sum": jnp.sum(nll * w), "weight": jnp.sum(w), "scores": mean}


def make_ensemble_eval_step(score_step: Callable, members: Sequence[Any], kind: str) -> Callable:
    """An eval step over the ensemble of `members` (trainable-leaf trees), usable wherever the loop's eval
    step is: step(train, fixed, base, batch) -> `ensemble_outputs`; `train` is ignored. `score_step` is
    `make_eval_step(..., with_scores=True)`."""
    combine = jax.jit(ensemble_outputs, static_argnums=0)

    def ensemble_step(train, fixed, base, batch):
        del train
        member_scores = jnp.stack([score_step(m, fixed, base, batch)["scores"] for m in members])
        labels = {k: batch[k] for k in ("labels", "example_mask") if k in batch}
        return combine(kind, member_scores, labels)

    return ensemble_step
