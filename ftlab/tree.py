"""Parameter-tree utilities: "a/b/c" paths, regex rules with full coverage, split and merge by mask.

Every selection in ftlab (trainable leaves, optimizer groups, sharding, delta targets) is a list of
`(regex, value)` rules matched against "/"-joined parameter paths with `re.fullmatch`; the first rule that
matches wins and a path that no rule matches is an error. Trees are plain nested dicts of arrays (what Flax
linen's `init` returns); these functions never look inside leaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

Tree = Any
Rules = Sequence[tuple[str, Any]]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}, in sorted key order (deterministic across runs and hosts)."""
    out: dict[str, Any] = {}
    for key in sorted(tree.keys()):
        value = tree[key]
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": leaf} -> nested dict. Raises if a path is both a leaf and a prefix of another path."""
    root: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"path {path!r}: {part!r} is a leaf and also has children")
            node = child
        if parts[-1] in node:
            raise ValueError(f"duplicate path {path!r}")
        node[parts[-1]] = leaf
    return root


def map_with_path(fn: Callable[[str, Any], Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    """Apply fn(path, leaf) to every leaf; returns a tree of the same structure."""
    return unflatten({p: fn(p, x) for p, x in flatten(tree).items()})


def match_rules(
    paths: Iterable[str], rules: Rules, what: str = "rules", allow_unmatched: bool = False
) -> dict[str, Any]:
    """{path: value of the first rule whose regex fullmatches path}.

    Raises ValueError naming every unmatched path (unless allow_unmatched, then they are left out), and
    every rule that matched nothing, so a typo in a regex is never silently ignored.
    """
    compiled = []
    for i, (pattern, value) in enumerate(rules):
        try:
            compiled.append((re.compile(pattern), value, pattern))
        except re.error as e:
            raise ValueError(f"{what}: rule {i} has an invalid regex {pattern!r}: {e}") from None
    out: dict[str, Any] = {}
    used = [False] * len(compiled)
    unmatched = []
    for path in paths:
        for i, (rx, value, _) in enumerate(compiled):
            if rx.fullmatch(path):
                out[path] = value
                used[i] = True
                break
        else:
            unmatched.append(path)
    if unmatched and not allow_unmatched:
        shown = "\n  ".join(unmatched[:20]) + ("\n  ..." if len(unmatched) > 20 else "")
        raise ValueError(
            f"{what}: {len(unmatched)} parameter path(s) matched no rule (add a catch-all such as "
            f"('.*', ...) if that is intended):\n  {shown}"
        )
    unused = [c[2] for c, u in zip(compiled, used) if not u]
    if unused:
        raise ValueError(f"{what}: rule(s) {unused} matched no parameter path")
    return out


def select(tree: Mapping[str, Any], rules: Rules, what: str = "rules") -> dict[str, Any]:
    """Tree of the same structure whose leaves are the value of the first matching rule."""
    return unflatten(match_rules(list(flatten(tree)), rules, what))


def mask(tree: Mapping[str, Any], pattern: str | Sequence[str]) -> dict[str, bool]:
    """Bool tree: True where the path fullmatches `pattern` (one regex or any of several)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    rxs = [re.compile(p) for p in patterns]
    return map_with_path(lambda p, _: any(r.fullmatch(p) for r in rxs), tree)


def split(tree: Mapping[str, Any], bool_tree: Mapping[str, Any]) -> tuple[dict, dict]:
    """(leaves where mask is True, leaves where mask is False), each a (possibly partial) nested dict."""
    flat, m = flatten(tree), flatten(bool_tree)
    if set(flat) != set(m):
        raise ValueError(f"mask and tree differ in paths: {sorted(set(flat) ^ set(m))[:10]}")
    return (
        unflatten({p: x for p, x in flat.items() if m[p]}),
        unflatten({p: x for p, x in flat.items() if not m[p]}),
    )


def merge(*trees: Mapping[str, Any]) -> dict[str, Any]:
    """Union of partial trees; a path present in two trees is an error."""
    flat: dict[str, Any] = {}
    for t in trees:
        for p, x in flatten(t).items():
            if p in flat:
                raise ValueError(f"merge: path {p!r} present in more than one tree")
            flat[p] = x
    return unflatten(flat)


def count(tree: Any) -> int:
    """Number of scalar entries in all leaves."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def nbytes(tree: Any) -> int:
    """Bytes of all leaves at their dtype."""
    return int(sum(np.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def summary_table(tree: Mapping[str, Any], rules: Rules | None = None, depth: int = 3) -> str:
    """A plain-text table of parameter counts grouped by the first `depth` path components."""
    groups: dict[str, int] = {}
    for p, x in flatten(tree).items():
        key = "/".join(p.split("/")[:depth])
        groups[key] = groups.get(key, 0) + int(np.prod(np.shape(x)))
    width = max((len(k) for k in groups), default=10)
    lines = [f"{'path':<{width}}  {'params':>12}"]
    lines += [f"{k:<{width}}  {v:>12,}" for k, v in groups.items()]
    return "\n".join(lines)
