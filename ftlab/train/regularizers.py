"""Fine-tuning regularisers that perturb the input word embeddings, as wrappers of the train step's loss and
gradient: R3F / R4F, SMART and FreeLB (config section `reg`, `reg.method`). (Mixout, a regulariser of the
weights, is a delta: ftlab.deltas.mixout.)

What this module owns: the config check (`check_config`), the extra train state (`init_state`: SMART's EMA
teacher, `state['reg']`), and `build(...)` -> {'value_and_grad', 'after_update'}, which ftlab.train.step's
`make_train_step(..., reg=cfg.reg)` calls in place of its plain value_and_grad, and after the optimizer update.

The perturbation site: delta leaf `input_noise` [B, T, D] (BERT: backbone/embeddings/input_noise, Llama /
GPT-2: backbone/input_noise; see ftlab.models.layers.input_noise), added to the word embeddings of the T real
tokens before positions, token types and LayerNorm, as the reference implementations perturb
`word_embeddings(input_ids)`. It is merged into the variables δ produces (`with_noise`), so it composes with
module deltas (LoRA, adapters, ...) and with a soft prompt (the P prompt vectors are not perturbed). Every
perturbation is zero on padding tokens (attention_mask = 0); those positions reach no loss anyway.

Divergence ℓ_s(a, b) between two outputs of the model (`divergence`): classification / tagging / LM, the
symmetric KL  KL(p‖q) + KL(q‖p) = Σ_c (p_c − q_c)(log p_c − log q_c)  of the softmaxes of logits a, b per
example (per token for tagging / LM), summed over classes and averaged with the task loss's weights
(example_mask, labels != -100); regression, the squared difference (a − b)² of the two outputs (the papers'
choice for regression, e.g. SMART's squared loss for STS-B).

Methods (θ: the trainable leaves of δ; f(x): the model's output on embeddings x; L: the task loss):

  r3f     Aghajanyan et al. 2021, "Better Fine-Tuning by Reducing Representational Collapse":
          L(θ) + λ·ℓ_s(f(x), f(x + z)),  z ~ N(0, σ²I) (noise='normal') or U(−σ, σ) ('uniform'); paper σ=1e-5,
          λ=1.
  r4f     R3F with the classification head's output projection spectrally normalised, W / σ_max(W) (regex
          `head_kernels`; fairseq's R4F normalises `out_proj`, the head's last Dense). σ_max is computed
          exactly, as jnp.linalg.norm(W, 2) (an SVD of a [D, C] or [D, D] matrix — cheap next to the model),
          and differentiated through, instead of torch's one-power-iteration estimate with a persistent u: the
          result is exact at every step and needs no extra state. The forward uses W/σ_max(W); after each
          update the stored kernel is replaced by W/σ_max(W) (the function is scale invariant, so this
          changes nothing the model computes) so that evaluation, checkpoints and the exported δ hold the
          normalised head.
  smart   Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning ... through Principled Regularized
          Optimization", Algorithm 1 with S = 1:
            ν ~ N(0, σ²I);  K times: g = ∇_ν ℓ_s(f(x), f(x + ν)) (θ and f(x) held fixed),
                                     ν ← Π_ε(ν + η·g/‖g‖)   (norm per example over [T, D]; 'linf': g/max|g| and
                                     Π = clip to [−ε, ε], the paper's; 'l2': g/‖g‖_F and Π = scale into
                                     the Frobenius ball of radius ε)
            loss = L(θ) + λ_s·ℓ_s(f(x; θ), f(x + ν; θ)) + μ·ℓ_s(f(x; θ), f(x; θ̃))
          with ν held constant in the gradient, and θ̃ the "momentum" (EMA) teacher, θ̃ ← β·θ̃ + (1 − β)·θ
          after every update (θ̃ = θ at the start), carried as state['reg']['ema']. mu = 0 drops the
          proximal term and the EMA state. Paper: σ = ε = 1e-5, η = 1e-3, K = 1, λ_s ∈ {1, 3, 5}, μ = 1,
          β = 0.99.
  freelb  Zhu et al. 2020, "FreeLB: Enhanced Adversarial Training for Natural Language Understanding":
          δ_0 = U(−1, 1)·ε0/√(L_b·D) on the L_b real tokens of example b (ε0 = init_mag), then for k = 1..K:
          g_θ += ∇_θ L(x + δ_{k−1}) / K,  g_δ = ∇_δ L(x + δ_{k−1}),  δ_k = Π_ε(δ_{k−1} + α·g_δ/‖g_δ‖_F)
          (Frobenius norm per example; ε = 0: no projection). The parameter gradient is the average of the
          K gradients (computed as one lax.scan), the reported loss the average of the K losses. All K
          forwards share one dropout mask (the paper's §3.2 on dropout in ascent steps).

Randomness: all from the step's key (fold_in(rng, step)); the clean forward uses the key the plain step
uses for dropout, so with λ = 0 R3F's loss equals the plain step's. With `shared_dropout=False` (default,
as the fairseq / mt-dnn references run: every forward in training mode draws its own mask) each extra
forward draws an independent dropout mask; `shared_dropout=True` reuses the clean forward's mask, so the
divergence measures the input perturbation (or the parameter drift) alone. Everything is traceable and
vmappable (no Python control flow on traced values).

Config keys (`reg.*`; a key that does not apply to the method must stay at its default):
  method          none | r3f | r4f | smart | freelb
  lam             λ (R3F/R4F) / λ_s (SMART): weight of the perturbation divergence
  noise           R3F/R4F noise: normal | uniform
  sigma           σ: R3F/R4F noise scale; SMART's initial noise std
  steps           K ascent steps (SMART, FreeLB); None = the method's default (SMART 1, FreeLB 2)
  step_size       η (SMART) / α (FreeLB); None = SMART 1e-3, FreeLB 1e-1
  eps             ε projection radius (SMART > 0; FreeLB ≥ 0, 0 = none); None = SMART 1e-5, FreeLB 0
  norm            SMART's ascent norm: linf (the paper) | l2
  mu              SMART's proximal weight μ (0 = no proximal term, no EMA state)
  beta            SMART's EMA rate β of the teacher θ̃
  init_mag        FreeLB's ε0 of the initial perturbation
  head_kernels    R4F: regex of the spectrally normalised trainable leaves
  shared_dropout  reuse the clean forward's dropout mask in the extra forwards (R3F/R4F/SMART)
The FreeLB defaults are starting points in the range of the paper's GLUE settings, not per-task values.
Gradient accumulation (train.grad_accum > 1) is not supported with a regulariser (a ConfigError says so).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftlab import tree
from ftlab.config import ConfigError, closest
from ftlab.train import losses
from ftlab.train import step as step_lib

METHODS = ("none", "r3f", "r4f", "smart", "freelb")

DEFAULTS: dict[str, Any] = {
    "method": "none",
    "lam": 1.0,
    "noise": "normal",
    "sigma": 1e-5,
    "steps": None,
    "step_size": None,
    "eps": None,
    "norm": "linf",
    "mu": 1.0,
    "beta": 0.99,
    "init_mag": 1e-1,
    "head_kernels": r"head/(?:classifier|out_proj|score)/kernel",
    "shared_dropout": False,
}

# Keys each method reads ('method' always); any other key must stay at its default.
USES = {
    "none": (),
    "r3f": ("lam", "noise", "sigma", "shared_dropout"),
    "r4f": ("lam", "noise", "sigma", "shared_dropout", "head_kernels"),
    "smart": ("lam", "sigma", "steps", "step_size", "eps", "norm", "mu", "beta", "shared_dropout"),
    "freelb": ("steps", "step_size", "eps", "init_mag"),
}
METHOD_DEFAULTS = {"smart": {"steps": 1, "step_size": 1e-3, "eps": 1e-5},
                   "freelb": {"steps": 2, "step_size": 1e-1, "eps": 0.0}}


def check_config(reg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `reg` section with defaults (and the method's defaults for None keys) filled in; a ConfigError names
    an unknown method or key, a key set that the method does not use, or an out-of-range value."""
    reg = dict(reg or {})
    for k in reg:
        if k not in DEFAULTS:
            hint = closest(k, list(DEFAULTS))
            raise ConfigError(f"unknown config key 'reg.{k}'" + (f"; did you mean 'reg.{hint}'?" if hint else "")
                              + f" (valid: {', '.join(DEFAULTS)})")
    cfg = {**DEFAULTS, **reg}
    method = cfg["method"]
    if method not in METHODS:
        hint = closest(str(method), list(METHODS))
        raise ConfigError(f"reg.method={method!r} is not a regulariser; choose from {', '.join(METHODS)}"
                          + (f" (did you mean {hint!r}?)" if hint else ""))
    for k, v in cfg.items():
        if k != "method" and k not in USES[method] and v != DEFAULTS[k]:
            users = [m for m in METHODS if k in USES[m]]
            raise ConfigError(f"reg.{k}={v!r} has no effect with reg.method={method!r} (it is read by "
                              f"{', '.join(users)}); leave it at its default {DEFAULTS[k]!r}")
    for k, v in METHOD_DEFAULTS.get(method, {}).items():
        if cfg[k] is None:
            cfg[k] = v

    def need(key, ok, what):
        if not ok:
            raise ConfigError(f"reg.{key}={cfg[key]!r} with reg.method={method!r}: must be {what}")

    if method != "none":
        need("lam", cfg["lam"] >= 0, ">= 0")
        need("sigma", cfg["sigma"] >= 0, ">= 0")
        need("noise", cfg["noise"] in ("normal", "uniform"), "'normal' or 'uniform'")
        need("norm", cfg["norm"] in ("linf", "l2"), "'linf' or 'l2'")
        need("init_mag", cfg["init_mag"] >= 0, ">= 0")
        need("mu", cfg["mu"] >= 0, ">= 0")
        need("beta", 0 <= cfg["beta"] < 1, "in [0, 1)")
        need("shared_dropout", isinstance(cfg["shared_dropout"], bool), "true or false")
    if method in ("smart", "freelb"):
        need("steps", isinstance(cfg["steps"], int) and cfg["steps"] >= 1, "an integer >= 1")
        need("step_size", cfg["step_size"] > 0, "> 0")
        need("eps", cfg["eps"] > 0 if method == "smart" else cfg["eps"] >= 0,
             "> 0" if method == "smart" else ">= 0 (0 = no projection)")
    if method == "r4f":
        try:
            re.compile(cfg["head_kernels"])
        except re.error as e:
            raise ConfigError(f"reg.head_kernels={cfg['head_kernels']!r} is not a regex: {e}") from None
    return cfg


def check_training(reg: Mapping[str, Any], accum_steps: int = 1, exit_routine: str = "none") -> dict[str, Any]:
    """`check_config` plus what the regularisers cannot be combined with (named by their keys)."""
    cfg = check_config(reg)
    if cfg["method"] != "none" and accum_steps != 1:
        raise ConfigError(f"reg.method={cfg['method']!r} does not support train.grad_accum={accum_steps} > 1 "
                          "(the perturbation is per example, but the step here is written for whole batches); "
                          "set train.grad_accum=1 or reg.method=none")
    if cfg["method"] != "none" and exit_routine != "none":
        raise ConfigError(f"reg.method={cfg['method']!r} cannot be combined with exit.routine={exit_routine!r} "
                          "(the regularisers compare one output per example)")
    return cfg


def init_state(reg: Mapping[str, Any], train: Any) -> dict[str, Any]:
    """Extra train state, `state['reg']`: {'ema': a copy of δ's trainable leaves} for SMART with mu > 0 (θ̃ = θ
    at the start), else {} (no entry). Also checks R4F's `head_kernels` against the trainable leaves."""
    cfg = check_config(reg)
    if cfg["method"] == "r4f":
        spectral_paths(train, cfg["head_kernels"])
    if cfg["method"] == "smart" and cfg["mu"] > 0:
        return {"ema": jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), train)}  # donated: own buffers
    return {}


# ------------------------------------------------------------------------------------------------ pieces


def noise_site(base_params: Mapping[str, Any]) -> str:
    """Path of the `input_noise` delta leaf for this model family."""
    from ftlab.deltas import _module

    return "backbone/embeddings/input_noise" if _module.family(base_params) == "bert" else "backbone/input_noise"


def embedding_width(base_params: Mapping[str, Any]) -> int:
    from ftlab.deltas import prompt

    return int(prompt.word_embeddings(base_params).shape[-1])


def with_noise(variables: Mapping[str, Any], site: str, noise: jax.Array) -> dict[str, Any]:
    """`variables` with delta leaf `site` = noise [B, T, D] merged into the δ-produced `delta` collection (an
    error if a δ already writes that leaf)."""
    extra = tree.unflatten({site: noise})
    delta = variables.get("delta")
    return {**variables, "delta": tree.merge(delta, extra) if delta else extra}


def symmetric_kl(a: jax.Array, b: jax.Array) -> jax.Array:
    """KL(p‖q) + KL(q‖p) for p = softmax(a), q = softmax(b) over the last axis: [..., C] -> [...]."""
    la, lb = jax.nn.log_softmax(a.astype(jnp.float32)), jax.nn.log_softmax(b.astype(jnp.float32))
    return jnp.sum((jnp.exp(la) - jnp.exp(lb)) * (la - lb), axis=-1)


def divergence(kind: str, a: jax.Array, b: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
    """ℓ_s(a, b): the weighted mean over examples (tokens) of symmetric_kl(a, b), or for regression of
    (a − b)². a, b: [B, C] (classification, regression C = 1) or [B, T, C] (tagging, LM); weights as the
    task loss's (losses.compute)."""
    ex_w = batch.get("example_mask")
    if ex_w is None:
        ex_w = jnp.ones(a.shape[0], jnp.float32)
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    if kind == "regression":
        d, w = jnp.square(a[:, 0] - b[:, 0]), ex_w
    elif kind == "classification":
        d, w = symmetric_kl(a, b), ex_w
    elif kind in ("tagging", "causal_lm", "masked_lm"):
        labels = batch["labels"]
        if kind == "causal_lm":  # the positions the loss scores: t predicts t + 1
            a, b, labels = a[:, :-1], b[:, :-1], labels[:, 1:]
        d = symmetric_kl(a, b)
        w = (labels != losses.IGNORE).astype(jnp.float32) * ex_w[:, None]
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return jnp.sum(d * w) / jnp.maximum(jnp.sum(w), 1.0)


def token_mask(batch: Mapping[str, Any]) -> jax.Array:
    """[B, T, 1] float: 1 on real tokens (attention_mask), 0 on padding."""
    return batch["attention_mask"].astype(jnp.float32)[..., None]


def sample_noise(key: jax.Array, shape: tuple[int, ...], sigma: float, kind: str = "normal") -> jax.Array:
    """R3F's z: σ·N(0, 1) ('normal') or U(−σ, σ) ('uniform'), float32 of `shape`."""
    if kind == "normal":
        return sigma * jax.random.normal(key, shape, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32, -sigma, sigma)


def _per_example(fn: Callable, x: jax.Array) -> jax.Array:
    """fn over each example's [T, D] block, kept as [B, 1, 1] for broadcasting."""
    return fn(x.reshape(x.shape[0], -1), axis=1)[:, None, None]


def normalize(g: jax.Array, norm: str) -> jax.Array:
    """g / ‖g_b‖ per example b ('linf': max |g|, 'l2': Frobenius); an all-zero g_b stays 0. g: [B, T, D]."""
    n = _per_example(jnp.max, jnp.abs(g)) if norm == "linf" else jnp.sqrt(_per_example(jnp.sum, jnp.square(g)))
    return g / jnp.where(n > 0, n, 1.0)


def project(x: jax.Array, eps: float, norm: str) -> jax.Array:
    """Π onto {‖x_b‖ <= ε} per example: 'linf' clips to [−ε, ε], 'l2' rescales x_b by min(1, ε/‖x_b‖_F)."""
    if norm == "linf":
        return jnp.clip(x, -eps, eps)
    n = jnp.sqrt(_per_example(jnp.sum, jnp.square(x)))
    return x * jnp.minimum(1.0, eps / jnp.where(n > 0, n, 1.0))


def spectral_paths(train: Mapping[str, Any], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    paths = [p for p, x in tree.flatten(train).items() if rx.fullmatch(p) and jnp.ndim(x) == 2]
    if not paths:
        raise ConfigError(f"reg.head_kernels={pattern!r} matches no trainable 2-d leaf of δ (R4F normalises the "
                          f"head's kernels; is the head trained? trainable leaves e.g. {sorted(tree.flatten(train))[:4]})")
    return paths


def spectral_normalize(train: Mapping[str, Any], paths: list[str]) -> dict[str, Any]:
    """δ's trainable leaves with each kernel W at `paths` replaced by W / σ_max(W) (exact, via SVD)."""
    flat = tree.flatten(train)
    for p in paths:
        flat[p] = flat[p] / jnp.linalg.norm(flat[p].astype(jnp.float32), 2).astype(flat[p].dtype)
    return tree.unflatten(flat)


def freelb_init(key: jax.Array, batch: Mapping[str, Any], d: int, init_mag: float) -> jax.Array:
    """δ_0 = U(−1, 1) ⊙ mask · ε0 / √(L_b·D), L_b = real tokens of example b: [B, T, D]."""
    mask = token_mask(batch)
    b, t = batch["input_ids"].shape
    lengths = jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1.0)
    u = jax.random.uniform(key, (b, t, d), jnp.float32, -1.0, 1.0) * mask
    return u * (init_mag / jnp.sqrt(lengths * d))[:, None, None]


# ------------------------------------------------------------------------------------------------- build


def build(reg: Mapping[str, Any], model: nn.Module, delta_mod: ModuleType, kind: str,
          total_steps: int | None = None, loss: Callable | None = None) -> dict[str, Callable]:
    """{'value_and_grad': f(train, fixed, base, batch, rng, step, reg_state) -> ((loss, aux), grads),
        'after_update': g(new_train, reg_state) -> (new_train, new_reg_state)} for the `reg` config.

    `loss(logits, batch, step) -> (loss, aux)` is the task loss (default `losses.compute(kind, ...)`); aux
    gains 'reg' (the divergence term before weighting; FreeLB: absent) and, for SMART with μ > 0, 'prox'."""
    cfg = check_config(reg)
    method = cfg["method"]
    if method == "none":
        raise ValueError("regularizers.build: reg.method is 'none' (the plain step needs no wrapper)")
    penalty = step_lib.delta_penalty(delta_mod, total_steps)
    stochastic = getattr(delta_mod, "STOCHASTIC", False)
    task_loss = loss or (lambda logits, batch, step: losses.compute(kind, logits, batch))

    def forward(variables, batch, key):
        return model.apply(variables, batch["input_ids"], deterministic=False, rngs={"dropout": key},
                           **step_lib.model_inputs(batch))

    def variables_of(train, fixed, base, delta_rng, step):
        delta = tree.merge(train, fixed) if fixed else train
        return step_lib.apply_delta(delta_mod, base, delta, delta_rng, step, total_steps)

    def split_rng(rng):
        # The same split as the plain loss_fn: the clean forward's dropout key is the plain step's.
        if stochastic:
            rng, delta_rng = jax.random.split(rng)
            return rng, delta_rng
        return rng, None

    def add_penalty(value, aux, train, fixed, step):
        if penalty is not None:
            reg_value = penalty(tree.merge(train, fixed) if fixed else train, step)
            aux["penalty"] = reg_value
            value = value + reg_value
        return value, aux

    def extra_key(rng, i):  # dropout key of extra forward i (the clean one's when shared_dropout)
        return rng if cfg["shared_dropout"] else jax.random.fold_in(rng, 100 + i)

    # ------------------------------------------------------------------------------ R3F / R4F / SMART
    def perturbation_loss(train, fixed, base, batch, rng, step=None, reg_state=None):
        site, d = noise_site(base), embedding_width(base)
        b, t = batch["input_ids"].shape
        mask = token_mask(batch)
        rng, delta_rng = split_rng(rng)
        if method == "r4f":
            train = spectral_normalize(train, spectral_paths(train, cfg["head_kernels"]))
        variables = variables_of(train, fixed, base, delta_rng, step)
        clean = forward(variables, batch, rng)
        value, aux = task_loss(clean, batch, step)
        if method in ("r3f", "r4f"):
            noise = sample_noise(jax.random.fold_in(rng, 1), (b, t, d), cfg["sigma"], cfg["noise"]) * mask
        else:
            noise = adversarial_noise(variables, clean, batch, rng, site, d)
        perturbed = forward(with_noise(variables, site, noise), batch, extra_key(rng, 0))
        div = divergence(kind, clean, perturbed, batch)
        aux["reg"] = div
        value = value + cfg["lam"] * div
        if method == "smart" and cfg["mu"] > 0:
            teacher_vars = variables_of(reg_state["ema"], fixed, base, delta_rng, step)
            teacher = jax.lax.stop_gradient(forward(teacher_vars, batch, extra_key(rng, 1)))
            prox = divergence(kind, clean, teacher, batch)
            aux["prox"] = prox
            value = value + cfg["mu"] * prox
        return add_penalty(value, aux, train, fixed, step)

    def adversarial_noise(variables, clean, batch, rng, site, d):
        """SMART's ν after K normalised ascent steps from N(0, σ²), held constant for θ: [B, T, D]."""
        b, t = batch["input_ids"].shape
        mask = token_mask(batch)
        v_fixed, target = jax.lax.stop_gradient(variables), jax.lax.stop_gradient(clean)
        nu = cfg["sigma"] * jax.random.normal(jax.random.fold_in(rng, 1), (b, t, d), jnp.float32) * mask

        def ascent(m, nu):
            key = rng if cfg["shared_dropout"] else jax.random.fold_in(jax.random.fold_in(rng, 2), m)
            g = jax.grad(lambda n: divergence(kind, target, forward(with_noise(v_fixed, site, n), batch, key),
                                              batch))(nu)
            return project(nu + cfg["step_size"] * normalize(g, cfg["norm"]), cfg["eps"], cfg["norm"]) * mask

        return jax.lax.stop_gradient(jax.lax.fori_loop(0, cfg["steps"], ascent, nu))

    # ------------------------------------------------------------------------------------------ FreeLB
    def freelb_value_and_grad(train, fixed, base, batch, rng, step=None, reg_state=None):
        site, d = noise_site(base), embedding_width(base)
        mask = token_mask(batch)
        rng, delta_rng = split_rng(rng)
        k = cfg["steps"]

        def objective(train, noise):
            variables = variables_of(train, fixed, base, delta_rng, step)
            return task_loss(forward(with_noise(variables, site, noise), batch, rng), batch, step)

        def body(carry, _):
            grads, loss_sum, noise = carry
            (value, _aux), (g, g_noise) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(train, noise)
            noise = noise + cfg["step_size"] * normalize(g_noise, "l2")
            if cfg["eps"] > 0:
                noise = project(noise, cfg["eps"], "l2")
            return (jax.tree_util.tree_map(jnp.add, grads, g), loss_sum + value, noise * mask), None

        noise0 = freelb_init(jax.random.fold_in(rng, 1), batch, d, cfg["init_mag"])
        zeros = jax.tree_util.tree_map(jnp.zeros_like, train)
        (grads, loss_sum, _), _ = jax.lax.scan(body, (zeros, jnp.zeros([], jnp.float32), noise0), None, length=k)
        grads = jax.tree_util.tree_map(lambda g: g / k, grads)
        value, aux = loss_sum / k, {}
        if penalty is not None:  # data-independent: value and gradient once
            reg_value, pen_grads = jax.value_and_grad(
                lambda t: penalty(tree.merge(t, fixed) if fixed else t, step))(train)
            aux["penalty"] = reg_value
            value = value + reg_value
            grads = jax.tree_util.tree_map(jnp.add, grads, pen_grads)
        return (value, aux), grads

    # ----------------------------------------------------------------------------------- after update
    def after_update(new_train, reg_state):
        if method == "r4f":  # store the normalised head (what the forward used); see the module docstring
            new_train = spectral_normalize(new_train, spectral_paths(new_train, cfg["head_kernels"]))
        if method == "smart" and cfg["mu"] > 0:
            beta = cfg["beta"]
            ema = jax.tree_util.tree_map(lambda e, x: beta * e + (1.0 - beta) * x, reg_state["ema"], new_train)
            reg_state = {**reg_state, "ema": ema}
        return new_train, reg_state

    if method == "freelb":
        value_and_grad = freelb_value_and_grad
    else:
        value_and_grad = jax.value_and_grad(perturbation_loss, has_aux=True)
    return {"value_and_grad": value_and_grad, "after_update": after_update}
