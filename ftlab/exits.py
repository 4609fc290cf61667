"""Early exit: a classifier after every layer, the routines that train them, the policies that decide where an
example stops, and inference that really stops computing there.

Model: `build_model(config, head='early_exit')` (BERT family) returns {'logits': [B, L, C], 'lte': [B, L]}:
exit i (0-based, after layer i+1) is DeeBERT's off-ramp (pool -> dense -> tanh -> dropout -> classifier, params
head/early_exit/exits_{i}/...) and 'lte' the logit of BERxiT's learned exit predictor, one module shared by all
layers (head/early_exit/lte). Set `config.exit.routine` to train it with `ftlab.train.loop`.

Training routines (`exit.routine`; L_i = the task loss of exit i, i = 1..n):
  'weighted'     PABEE (Zhou et al. 2020, "BERT Loses Patience"): Σ i·L_i / Σ i, every step.
  'two_stage'    DeeBERT (Xin et al. 2020): the first `stage1_fraction` of the steps train the backbone with
                 L_n only; then backbone and last exit are frozen (their updates are zeroed, so Adam's
                 momentum cannot move them either) and the other exits train on mean_{i<n} L_i.
  'alternating'  BERxiT (Xin et al. 2021, "BERxiT: Early Exiting for BERT with Better Fine-Tuning and Extension
                 to Regression"): even steps L_n, odd steps the weighted average Σ i·L_i / Σ i.
With `lte` (default on) the learned exit predictor g_i = σ(lte_i) is trained with BERxiT's loss, the mean
squared error against u_i = 1[exit i is right] (classification) or u_i = 1 − tanh(|ŷ_i − y|) (regression),
times `lte_weight`; its input is detached, so it does not move the backbone.

Exit policies (`Policy`; the last layer always exits):
  'entropy'   DeeBERT: exit at the first layer whose prediction entropy is below `threshold` (classification).
  'patience'  PABEE: exit once the prediction has stayed the same for `threshold` consecutive layers
              (regression: changed by less than `tol`).
  'learned'   BERxiT: exit at the first layer with σ(lte) ≥ `threshold` (classification and regression).
  'static'    every example stops at layer `threshold` (layer removal without retraining).
`simulate` applies a policy to all exits' outputs computed at once (for sweeping thresholds); `ExitRunner`
runs the model layer by layer and stops: one example at a time (`run_one`), or a batch whose finished rows are
dropped after every layer (`run_batched`). Both give `simulate`'s decisions (a test checks it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftlab import tree

ROUTINES = ("none", "weighted", "two_stage", "alternating")
POLICIES = ("entropy", "patience", "learned", "static")
DEFAULTS: dict[str, Any] = {"routine": "none", "lte": True, "lte_weight": 1.0, "stage1_fraction": 0.5}
EXIT_PATH = "head/early_exit/"


def check(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = {**DEFAULTS, **dict(cfg)}
    unknown = set(out) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"exit: unknown config keys {sorted(unknown)} (valid: {sorted(DEFAULTS)})")
    if out["routine"] not in ROUTINES:
        raise ValueError(f"exit.routine must be one of {ROUTINES}, got {out['routine']!r}")
    if not 0.0 < out["stage1_fraction"] < 1.0:
        raise ValueError(f"exit.stage1_fraction must be in (0, 1), got {out['stage1_fraction']}")
    return out


# ------------------------------------------------------------------------------------------------ training
def exit_losses(kind: str, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [B, L, C] -> (loss of each exit [L], per-example-per-exit loss [B, L], example weights [B])."""
    w = batch.get("example_mask")
    w = jnp.ones(logits.shape[0], jnp.float32) if w is None else w.astype(jnp.float32)
    if kind == "classification":
        labels = batch["labels"].astype(jnp.int32)
        per = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None, None], axis=-1)[..., 0]
    elif kind == "regression":
        per = jnp.square(logits[..., 0] - batch["labels"].astype(jnp.float32)[:, None])
    else:
        raise ValueError(f"early exit supports classification and regression tasks, not {kind!r}")
    denom = jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum(per * w[:, None], axis=0) / denom, per, w


def lte_targets(kind: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """BERxiT's u_i: 1[exit i right] (classification) or 1 − tanh(|ŷ_i − y|) (regression). [B, L]."""
    logits = jax.lax.stop_gradient(logits)
    if kind == "classification":
        return (jnp.argmax(logits, -1) == labels[:, None].astype(jnp.int32)).astype(jnp.float32)
    return 1.0 - jnp.tanh(jnp.abs(logits[..., 0] - labels[:, None].astype(jnp.float32)))


def make_loss(cfg: Mapping[str, Any], kind: str, total_steps: int) -> Callable:
    """loss(outputs, batch, step) -> (loss, {'loss_sum', 'weight'}) for the routine of `cfg` (see module doc)."""
    cfg = check(cfg)
    routine = cfg["routine"]
    stage2_start = int(round(cfg["stage1_fraction"] * total_steps))

    def loss(out: dict, batch: dict, step: jax.Array) -> tuple[jax.Array, dict]:
        logits = out["logits"]
        n = logits.shape[1]
        per_exit, _, w = exit_losses(kind, logits, batch)
        idx = jnp.arange(1, n + 1, dtype=jnp.float32)
        weighted = jnp.sum(idx * per_exit) / jnp.sum(idx)
        last = per_exit[-1]
        ramps = jnp.mean(per_exit[:-1]) if n > 1 else last
        if routine == "weighted":
            value = weighted
        elif routine == "two_stage":
            value = jnp.where(step < stage2_start, last, ramps)
        elif routine == "alternating":
            value = jnp.where(step % 2 == 0, last, weighted)
        else:
            raise ValueError(f"exit.routine {routine!r} has no loss")
        if cfg["lte"]:
            g = jax.nn.sigmoid(out["lte"])
            u = lte_targets(kind, logits, batch["labels"])
            mse = jnp.sum(jnp.mean(jnp.square(g - u), axis=1) * w) / jnp.maximum(jnp.sum(w), 1.0)
            value = value + cfg["lte_weight"] * mse
        weight = jnp.sum(w)
        return value, {"loss_sum": value * weight, "weight": weight}

    return loss


def freeze_in_stage2(tx: optax.GradientTransformation, train_params: Any, cfg: Mapping[str, Any],
                     total_steps: int) -> optax.GradientTransformation:
    """`tx` whose updates of everything but the exits before the last (and the learned-exit module) are zero
    from step round(stage1_fraction · total_steps) on: DeeBERT's second stage with the backbone and the final
    classifier frozen. Other routines: `tx` unchanged."""
    cfg = check(cfg)
    if cfg["routine"] != "two_stage":
        return tx
    start = int(round(cfg["stage1_fraction"] * total_steps))
    flat = tree.flatten(train_params)
    exits = sorted({int(p[len(EXIT_PATH) + len("exits_"):].split("/")[0]) for p in flat
                    if p.startswith(EXIT_PATH + "exits_")})
    last = f"{EXIT_PATH}exits_{exits[-1]}/" if exits else None
    frozen = tree.unflatten({p: not (p.startswith(EXIT_PATH) and not (last and p.startswith(last)))
                             for p in flat})

    def init(params):
        return {"inner": tx.init(params), "count": jnp.zeros([], jnp.int32)}

    def update(updates, state, params=None):
        updates, inner = tx.update(updates, state["inner"], params)
        stage2 = state["count"] >= start
        updates = jax.tree_util.tree_map(lambda u, f: jnp.where(stage2 & f, jnp.zeros_like(u), u), updates, frozen)
        return updates, {"inner": inner, "count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


# ------------------------------------------------------------------------------------------------ policies
def entropy(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of softmax(logits) over the last axis."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)


class Policy:
    """An exit rule over rows; `step(state, layer, logits [n, C], lte [n]) -> (exit [n] bool, state)`.
    `layer` is 1-based; at the last layer every row exits."""

    def __init__(self, name: str, threshold: float, kind: str, num_layers: int, tol: float = 0.05):
        if name not in POLICIES:
            raise ValueError(f"unknown exit policy {name!r}; choose from {POLICIES}")
        if name == "entropy" and kind != "classification":
            raise ValueError("the entropy policy needs class probabilities; use 'patience' or 'learned' for "
                             f"{kind} tasks")
        if name == "patience" and (threshold < 1 or threshold != int(threshold)):
            raise ValueError(f"patience must be a positive integer, got {threshold}")
        self.name, self.threshold, self.kind, self.num_layers, self.tol = name, threshold, kind, num_layers, tol

    def __repr__(self) -> str:
        return f"{self.name}={self.threshold:g}"

    def init(self, n: int) -> dict[str, np.ndarray]:
        return {"prev": np.full(n, np.nan), "count": np.zeros(n, np.int64)}

    def prediction(self, logits: np.ndarray) -> np.ndarray:
        return logits[:, 0] if self.kind == "regression" else logits.argmax(-1)

    def step(self, state: dict, layer: int, logits: np.ndarray, lte: np.ndarray) -> tuple[np.ndarray, dict]:
        pred = self.prediction(logits).astype(np.float64)
        if self.name == "entropy":
            done = entropy(logits) < self.threshold
        elif self.name == "patience":
            same = np.abs(pred - state["prev"]) < self.tol if self.kind == "regression" else pred == state["prev"]
            count = np.where(same, state["count"] + 1, 0)
            state = {"prev": pred, "count": count}
            done = count >= self.threshold
        elif self.name == "learned":
            done = 1.0 / (1.0 + np.exp(-lte)) >= self.threshold
        else:
            done = np.full(len(pred), layer >= self.threshold)
        if layer >= self.num_layers:
            done = np.ones(len(pred), bool)
        return done, state

    @staticmethod
    def select(state: dict, keep: np.ndarray) -> dict:
        return {k: v[keep] for k, v in state.items()}


def simulate(policy: Policy, logits: np.ndarray, lte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All exits' outputs (logits [N, L, C], lte [N, L]) -> (prediction [N], exit layer [N], 1-based)."""
    n, num_layers = logits.shape[:2]
    state = policy.init(n)
    exit_layer = np.zeros(n, np.int64)
    for i in range(num_layers):
        done, state = policy.step(state, i + 1, logits[:, i], lte[:, i])
        exit_layer = np.where((exit_layer == 0) & done, i + 1, exit_layer)
    pred = policy.prediction(logits[np.arange(n), exit_layer - 1])
    return pred, exit_layer


# ------------------------------------------------------------------------------------------------ inference
def _sub(variables: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The variables of the submodule at `path` in every collection that has it."""
    out = {}
    for col, t in variables.items():
        node = t
        for part in path.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            out[col] = node
    return out


class ExitRunner:
    """Layer-by-layer inference of an early-exit BERT that stops where the policy says.

    `variables` = the model's variables after the δ (`delta_mod.apply(θ₀, δ)`). Each layer and its exit run as
    one jitted call (the same compiled program for every layer: same shapes, other weights), so an example
    that exits at layer k costs the embeddings plus k layer calls. `full` is the plain baseline: embeddings, all
    layers and the last exit in a single jitted program, as a deployment without early exit would run it."""

    def __init__(self, model, variables: Mapping[str, Any]):
        from ftlab.models.bert import BertEmbeddings, BertLayer
        from ftlab.models.heads import ExitHead, LearnedExit
        from ftlab.models.layers import padding_mask

        c = model.config
        self.num_layers = c.num_hidden_layers
        emb, layer = BertEmbeddings(c), BertLayer(c)
        exit_head, lte = ExitHead(c, model.num_labels, model.pooling), LearnedExit(c)
        self.emb_vars = _sub(variables, "backbone/embeddings")
        self.layer_vars = [_sub(variables, f"backbone/encoder/layer/{i}") for i in range(self.num_layers)]
        self.exit_vars = [_sub(variables, f"{EXIT_PATH}exits_{i}") for i in range(self.num_layers)]
        self.lte_vars = _sub(variables, f"{EXIT_PATH}lte")

        def embed(ev, ids, tt):
            return emb.apply(ev, ids, tt)[0]

        def block(lv, xv, tv, x, am):
            x = layer.apply(lv, x, padding_mask(am))
            logits, pooled = exit_head.apply(xv, x, am)
            return x, logits.astype(jnp.float32), lte.apply(tv, pooled).astype(jnp.float32)

        def full(ev, lvs, xv, ids, tt, am):
            x = embed(ev, ids, tt)
            for lv in lvs:
                x = layer.apply(lv, x, padding_mask(am))
            return exit_head.apply(xv, x, am)[0].astype(jnp.float32)

        self._embed, self._block, self._full = jax.jit(embed), jax.jit(block), jax.jit(full)

    def all_exits(self, ids, tt, am) -> tuple[np.ndarray, np.ndarray]:
        """Every exit's output for a batch: (logits [B, L, C], lte [B, L]), layer by layer."""
        x = self._embed(self.emb_vars, ids, tt)
        logits, gates = [], []
        for i in range(self.num_layers):
            x, lg, g = self._block(self.layer_vars[i], self.exit_vars[i], self.lte_vars, x, am)
            logits.append(lg)
            gates.append(g)
        return np.stack(jax.device_get(logits), 1), np.stack(jax.device_get(gates), 1)

    def full(self, ids, tt, am) -> np.ndarray:
        """Baseline: the last exit's logits [B, C] from one jitted call through every layer."""
        return np.asarray(self._full(self.emb_vars, self.layer_vars, self.exit_vars[-1], ids, tt, am))

    def run_one(self, policy: Policy, ids, tt, am) -> tuple[Any, int]:
        """One example ([1, T] arrays) -> (prediction, exit layer): stops computing at the exit layer."""
        x = self._embed(self.emb_vars, ids, tt)
        state = policy.init(1)
        for i in range(self.num_layers):
            x, lg, g = self._block(self.layer_vars[i], self.exit_vars[i], self.lte_vars, x, am)
            lg = np.asarray(lg)
            done, state = policy.step(state, i + 1, lg, np.asarray(g))
            if done[0]:
                return policy.prediction(lg)[0], i + 1
        raise AssertionError("unreachable: the last layer always exits")

    def run_batched(self, policy: Policy, ids, tt, am) -> tuple[np.ndarray, np.ndarray]:
        """A batch ([B, T]) -> (predictions [B], exit layers [B]). After every layer the rows that exited are
        dropped; the rest are padded up to a power of two (padding rows are copies, their results unused) so
        at most log2(B) + 1 row counts are compiled."""
        b = ids.shape[0]
        x = self._embed(self.emb_vars, ids, tt)
        am = np.asarray(am)
        rows = np.arange(b)  # original row of each live row
        state = policy.init(b)
        preds: list = [None] * b
        exits = np.zeros(b, np.int64)
        for i in range(self.num_layers):
            n = len(rows)
            x, lg, g = self._block(self.layer_vars[i], self.exit_vars[i], self.lte_vars, x, am)
            lg, g = np.asarray(lg)[:n], np.asarray(g)[:n]
            done, state = policy.step(state, i + 1, lg, g)
            p = policy.prediction(lg)
            for r in np.nonzero(done)[0]:
                preds[rows[r]], exits[rows[r]] = p[r], i + 1
            keep = ~done
            if not keep.any():
                break
            rows, state = rows[keep], policy.select(state, keep)
            idx = np.nonzero(keep)[0]
            bucket = 1 << math.ceil(math.log2(len(idx)))
            idx = np.concatenate([idx, np.full(bucket - len(idx), idx[0])])
            x, am = x[idx], am[idx]
        return np.asarray(preds), exits


def timed(fn: Callable, *args) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t
