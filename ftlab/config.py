"""Experiment configs: one Python file per experiment, `:variant` arguments, `--config.key=value` overrides.

A config file defines `get_config(variant: str | None) -> Config` (big_vision style). A `Config` is a nested
dict with attribute access whose set of keys is fixed once built: reading or overriding a key that does not
exist raises with the closest valid key, and an override's value is parsed to the type of the default.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A config file, key or override value that is not valid."""


class Config(dict):
    """Nested dict with attribute access. `Config(a=1, b=Config(c=2))`; `cfg.b.c`; `cfg['b']['c']`."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        for k, v in dict(*args, **kwargs).items():
            self[k] = Config(v) if isinstance(v, Mapping) and not isinstance(v, Config) else v

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise ConfigError(_unknown_key_message(key, self, "")) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = Config(value) if isinstance(value, Mapping) and not isinstance(value, Config) else value

    def get_path(self, dotted: str) -> Any:
        node: Any = self
        seen = []
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(_unknown_key_message(part, node if isinstance(node, Mapping) else {}, ".".join(seen)))
            node = node[part]
            seen.append(part)
        return node

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self, default=_json_default))


def _json_default(x: Any) -> Any:
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def all_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        path = f"{prefix}.{k}" if prefix else k
        out.append(path)
        if isinstance(v, Mapping):
            out.extend(all_keys(v, path))
    return out


def _unknown_key_message(key: str, node: Mapping[str, Any], where: str) -> str:
    full = f"{where}.{key}" if where else key
    close = closest(key, [str(k) for k in node.keys()])
    hint = f"; did you mean '{(where + '.') if where else ''}{close}'?" if close else ""
    valid = ", ".join(sorted(str(k) for k in node.keys()))
    return f"unknown config key '{full}'{hint} (valid keys here: {valid})"


def closest(key: str, valid: list[str]) -> str | None:
    """The valid key a user most likely meant: initials ('learning_rate' -> 'lr'), else the nearest spelling."""
    initials = "".join(w[0] for w in key.split("_") if w)
    for k in valid:
        if len(initials) > 1 and k == initials:
            return k
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return close[0] if close else None


def load(spec: str) -> Config:
    """Load `path/to/file.py[:variant]` and return its `get_config(variant)`."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    mod_name = "ftlab_config_" + hashlib.md5(os.path.abspath(path).encode()).hexdigest()[:8]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(variant) function")
    cfg = module.get_config(variant or None)
    if not isinstance(cfg, Config):
        cfg = Config(cfg)
    return cfg


def parse_value(text: str, default: Any, key: str) -> Any:
    """Parse an override string to the type of the key's default value."""
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"--config.{key}={text!r}: expected {expected} (the default is {default!r})")

    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise fail("a boolean (true/false)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise fail("an integer") from None
            if f.is_integer():
                return int(f)
            raise fail("an integer") from None
    if isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise fail("a number") from None
        if not math.isfinite(value):  # nan/inf would otherwise slip through as a learning rate or a weight
            raise fail("a finite number")
        return value
    if isinstance(default, str):
        return text
    if isinstance(default, (list, tuple)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = [t.strip() for t in text.split(",")] if text.strip() else []
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return type(default)(value)
    if isinstance(default, Mapping):
        raise ConfigError(f"--config.{key}: is a group of keys, set one of its keys instead: "
                          f"{', '.join(f'{key}.{k}' for k in default)}")
    # default is None: Python literal if it parses, else the raw string.
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _delta_defaults(group: Mapping[str, Any]) -> dict[str, Any]:
    from ftlab import deltas  # late import: config is below deltas in the package map

    return dict(deltas.get(group["method"]).DEFAULTS)


# Groups whose valid keys depend on another key: `delta` takes the keys of its method's DEFAULTS.
OPEN_GROUPS = {"delta": _delta_defaults}


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply `key.sub=value` strings (the part after `--config.`); unknown keys raise with the closest key.

    Keys of the `delta` group are checked against the DEFAULTS of the delta method in force at that point
    (so `--config.delta.method=topk --config.delta.k=2` works, `--config.delta.kk=2` names `k`).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        parent_path, _, leaf = key.rpartition(".")
        parent = cfg.get_path(parent_path) if parent_path else cfg
        if not isinstance(parent, Mapping):
            raise ConfigError(f"override {item!r}: '{parent_path}' is not a group of keys")
        if leaf not in parent and parent_path in OPEN_GROUPS and leaf != "method":
            try:
                defaults = OPEN_GROUPS[parent_path](parent)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if leaf not in defaults:
                raise ConfigError(_unknown_key_message(leaf, defaults, parent_path))
            parent[leaf] = parse_value(value, defaults[leaf], key)
            continue
        if leaf not in parent:
            raise ConfigError(_unknown_key_message(leaf, parent, parent_path))
        if parent_path in OPEN_GROUPS and leaf == "method":  # a new method: drop the old method's keys
            for k in [k for k in parent if k != "method"]:
                del parent[k]
        parent[leaf] = parse_value(value, parent[leaf], key)
    return cfg


def parse_cli_overrides(argv: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split argv into (config overrides without the `--config.` prefix, remaining args)."""
    overrides, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--config."):
            body = a[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(args):
                    raise ConfigError(f"{a}: missing value")
                body = f"{body}={args[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def fingerprint(cfg: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """Stable hash of the config (minus keys that may change across a resume, such as total steps)."""
    d = json.loads(json.dumps(cfg, default=_json_default, sort_keys=True))
    for dotted in ignore:
        node = d
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.get(p, {})
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
