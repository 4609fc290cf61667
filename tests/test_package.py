"""The installed package behaves the same from any working directory: `import ftlab` runs ftlab/__init__.py
(offline hub settings, XLA defaults) — an editable install once resolved it as a namespace package outside
the repository, silently skipping both."""

from __future__ import annotations

import os
import subprocess
import sys


def test_import_from_another_directory_runs_the_package_init(tmp_path):
    code = ("import os, ftlab; print(ftlab.__file__); print(os.environ.get('HF_HUB_OFFLINE')); "
            "print(os.environ.get('XLA_FLAGS'))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "XLA_FLAGS", "PYTHONPATH")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0].endswith(os.path.join("ftlab", "__init__.py")), out
    assert out[1] == "1"
    assert "--xla_cpu_experimental_ynn_fusion_type=" in out[2]


def test_a_users_xla_setting_wins(tmp_path):
    code = "import os, ftlab; print(os.environ['XLA_FLAGS'])"
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "--xla_cpu_experimental_ynn_fusion_type=dot"
