"""tree.py path rules and config.py loading/overrides, including the error messages users see."""

import textwrap

import numpy as np
import pytest

from ftlab import config as config_lib
from ftlab import tree

T = {"backbone": {"layer": {"0": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}}}, "head": {"w": np.ones(4)}}


def test_flatten_unflatten_roundtrip():
    flat = tree.flatten(T)
    assert list(flat) == ["backbone/layer/0/bias", "backbone/layer/0/kernel", "head/w"]
    back = tree.unflatten(flat)
    assert tree.flatten(back).keys() == flat.keys()


def test_rules_first_match_wins_and_full_coverage():
    sel = tree.select(T, [(r".*/bias", "b"), (r"backbone/.*", "k"), (r"head/.*", "h")])
    assert tree.flatten(sel) == {"backbone/layer/0/bias": "b", "backbone/layer/0/kernel": "k", "head/w": "h"}
    with pytest.raises(ValueError, match="(?s)matched no rule.*head/w"):
        tree.select(T, [(r"backbone/.*", 1)])
    with pytest.raises(ValueError, match=r"matched no parameter path"):
        tree.select(T, [(r"typo/.*", 1), (r".*", 2)])
    with pytest.raises(ValueError, match="invalid regex"):
        tree.select(T, [(r"(", 1)])


def test_split_merge_count():
    m = tree.mask(T, r"head/.*")
    a, b = tree.split(T, m)
    assert list(tree.flatten(a)) == ["head/w"]
    assert tree.count(tree.merge(a, b)) == tree.count(T) == 2 * 3 + 3 + 4
    with pytest.raises(ValueError, match="more than one tree"):
        tree.merge(a, a)


def _write_cfg(tmp_path):
    p = tmp_path / "exp.py"
    p.write_text(textwrap.dedent('''
        from ftlab.config import Config
        def get_config(variant=None):
            c = Config(seed=1, optim=Config(lr=1e-3, bias_correction=True, groups=((".*", 1.0),)), name="x", opt=None)
            if variant == "small":
                c.optim.lr = 1e-4
            return c
    '''))
    return str(p)


def test_config_load_variant_and_overrides(tmp_path):
    path = _write_cfg(tmp_path)
    cfg = config_lib.load(path + ":small")
    assert cfg.optim.lr == 1e-4
    config_lib.apply_overrides(cfg, ["optim.lr=3e-5", "seed=7", "optim.bias_correction=false", "name=y", "opt=[1,2]"])
    assert (cfg.optim.lr, cfg.seed, cfg.optim.bias_correction, cfg.name, cfg.opt) == (3e-5, 7, False, "y", [1, 2])


def test_config_unknown_key_names_closest(tmp_path):
    cfg = config_lib.load(_write_cfg(tmp_path))
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"):
        config_lib.apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(config_lib.ConfigError, match="expected an integer"):
        config_lib.apply_overrides(cfg, ["seed=abc"])
    with pytest.raises(config_lib.ConfigError, match="expected a boolean"):
        config_lib.apply_overrides(cfg, ["optim.bias_correction=maybe"])
    with pytest.raises(config_lib.ConfigError, match="group of keys"):
        config_lib.apply_overrides(cfg, ["optim=1"])
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.load(str(tmp_path / "nope.py"))


def test_cli_override_parsing():
    ov, rest = config_lib.parse_cli_overrides(["--config", "a.py", "--config.seed=3", "--config.optim.lr", "0.1", "--workdir", "w"])
    assert ov == ["seed=3", "optim.lr=0.1"] and rest == ["--config", "a.py", "--workdir", "w"]


def test_every_shipped_config_loads_with_all_variants():
    import glob
    import os

    root = os.path.dirname(os.path.dirname(__file__))
    files = sorted(glob.glob(os.path.join(root, "configs", "*.py")))
    assert files
    for f in files:
        cfg = config_lib.load(f)
        assert cfg.task.name and cfg.delta.method
        config_lib.load(f + ":runlocal")
        with pytest.raises(config_lib.ConfigError, match="unknown variant"):
            config_lib.load(f + ":no_such_variant")
        doc = open(f).read()
        assert "Command:" in doc and "Expected:" in doc, f"{f}: docstring must give the command and expected result"


def test_delta_keys_follow_the_method(tmp_path):
    cfg = config_lib.Config(delta=config_lib.Config(method="full"))
    config_lib.apply_overrides(cfg, ["delta.method=topk", "delta.k=2"])
    assert cfg.delta == {"method": "topk", "k": 2}
    with pytest.raises(config_lib.ConfigError, match="did you mean 'delta.k'"):
        config_lib.apply_overrides(cfg, ["delta.kk=3"])
    with pytest.raises(config_lib.ConfigError, match="unknown delta method 'topkk'"):
        config_lib.apply_overrides(config_lib.Config(delta=config_lib.Config(method="topkk")), ["delta.k=1"])


def test_methods_doc_is_up_to_date():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
    import methods_doc

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "methods.md")
    assert open(path).read() == methods_doc.render(), "run: python scripts/methods_doc.py"
