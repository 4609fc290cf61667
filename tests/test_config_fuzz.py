"""Hypothesis fuzz of the `--config.key=value` override parser: any override string either applies with the
default's type or raises `ConfigError` naming the override — never another exception, never a silent wrong type."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ftlab.config import ConfigError, all_keys, apply_overrides, parse_value
from ftlab.train.loop import default_config

SETTINGS = settings(max_examples=120, deadline=None)
KEYS = all_keys(default_config())
JUNK = ["", " ", "=", ".", "..", "nan", "inf", "-inf", "1e999", "[", "]", "{[]: 1}", "(" * 200, "1_0", "0x10", "1.5",
        "true", "None", "[1, 'a']", "\x00", "é", "--config.x=1", "delta.r", "1,2", "'quoted'", "1e-3"]  # fmt: skip
values = st.one_of(
    st.sampled_from(JUNK),
    st.text(max_size=30),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).map(lambda k: k + "x"),
    st.sampled_from(KEYS).map(lambda k: k.rsplit(".", 1)[0]),
    st.text(max_size=20),
    st.sampled_from(["delta.r", "delta.alpha", "delta.method", "delta.k", "optim.lr."]),
)


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, float) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, type(default))
    return True


@SETTINGS
@given(
    st.lists(st.tuples(keys, values), min_size=1, max_size=3),
    st.sampled_from(["full", "lora", "topk", "said"]),
)
def test_overrides_apply_with_the_default_type_or_raise_config_error(pairs, method):
    cfg = apply_overrides(default_config(), [f"delta.method={method}"])
    items = [f"{k}={v}" for k, v in pairs]
    try:
        out = apply_overrides(cfg, items)
    except ConfigError as e:
        assert str(e)  # a message, naming the override or key
        return
    for k, _ in pairs:
        if k.strip() and k.strip() in all_keys(out):
            new, old = (
                out.get_path(k.strip()),
                default_config().get_path(k.strip()) if k.strip() in KEYS else None,
            )
            if old is not None:
                assert _type_ok(new, old), (k, new, old)


@SETTINGS
@given(
    st.one_of(
        st.booleans(),
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.text(max_size=20),
    )
)
def test_well_formed_values_round_trip(value):
    text = (
        str(value).lower()
        if isinstance(value, bool)
        else (repr(value) if isinstance(value, float) else str(value))
    )
    assert parse_value(text, value, "k") == value


@SETTINGS
@given(values)
def test_numbers_are_finite_or_an_error(text):
    for default in (0.1, 3):
        try:
            v = parse_value(text, default, "optim.lr")
        except ConfigError as e:
            assert "optim.lr" in str(e)
            continue
        assert math.isfinite(v)
