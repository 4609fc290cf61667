"""Deltas: every fine-tuning method as θ = apply(θ₀, δ), one module per method.

The contract each `ftlab/deltas/<method>.py` implements (see docs/methods.md):

    DEFAULTS: dict                                      # config keys and defaults; unknown keys are an error
    init(rng, base_params, config) -> delta             # pure; works under jax.eval_shape
    apply(base_params, delta) -> variables              # pure, jit-able, differentiable in trainable leaves
    trainable(delta) -> bool tree                       # which leaves of delta are optimised
    to_disk(delta) -> dict[str, np.ndarray]             # compact stored form; its bytes = reported size
    from_disk(arrays, base_params, config) -> delta     # inverse of to_disk
    num_trainable(base_params, config) -> int           # the method's formula (tests compare)

Optional, per module: STOCHASTIC / SCHEDULED (extra arguments of apply in training, see ftlab.train.step),
`penalty(delta[, step, total_steps])` (added to the loss), `stats(base_params, delta) -> dict` (written to
results.json as `delta_stats`), STORED_FORM_DIFFERS (from_disk(to_disk(δ)) is another δ with the same apply).

`variables` is what the Flax model is applied with: `{'params': θ}` for parameter-tree deltas, plus a
`'delta'` collection for module deltas (read by the model at named sites). Deltas compose by a short loop
(`apply_all`). Methods are looked up by module name (`get('bitfit')`), not by a registry.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from ftlab import tree
from ftlab.config import closest


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(method: str) -> ModuleType:
    """The module implementing `method` (e.g. 'full', 'frozen', 'subset', 'bitfit')."""
    names = available()
    if method not in names:
        close = difflib.get_close_matches(method, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown delta method '{method}'{hint} (available: {', '.join(names)})")
    return importlib.import_module(f"ftlab.deltas.{method}")


def check_config(module: ModuleType, config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in; an unknown key raises with the closest valid key."""
    out = dict(module.DEFAULTS)
    for k, v in config.items():
        if k == "method":
            continue
        if k not in module.DEFAULTS:
            close = closest(k, list(module.DEFAULTS))
            hint = f"; did you mean '{close}'?" if close else ""
            raise ValueError(
                f"delta '{module.__name__.rsplit('.', 1)[-1]}': unknown config key '{k}'{hint} "
                f"(valid: {', '.join(sorted(module.DEFAULTS))})"
            )
        out[k] = v
    return out


def override_params(base_params: Mapping[str, Any], partial: Mapping[str, Any]) -> dict[str, Any]:
    """θ₀ with the leaves present in `partial` replaced; every path of `partial` must exist in θ₀."""
    flat = tree.flatten(base_params)
    for p, x in tree.flatten(partial).items():
        if p not in flat:
            raise KeyError(f"delta leaf {p!r} has no counterpart in the base parameters")
        flat[p] = x
    return tree.unflatten(flat)


def apply_all(base_params: Mapping[str, Any], deltas: Sequence[tuple[ModuleType, Any]]) -> dict[str, Any]:
    """Compose deltas left to right: each sees the params produced by the previous ones.

    Non-`params` collections (e.g. the module deltas' `delta` collection) are merged; two deltas writing
    the same leaf of such a collection is an error.
    """
    variables: dict[str, Any] = {"params": base_params}
    for module, delta in deltas:
        out = module.apply(variables["params"], delta)
        for col, value in out.items():
            if col == "params":
                variables["params"] = value
            elif col in variables:
                variables[col] = tree.merge(variables[col], value)
            else:
                variables[col] = value
    return variables
