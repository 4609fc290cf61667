"""docs/use_in_your_project.md's program runs as written, from a directory outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "use_in_your_project.md")


def test_own_project_program_runs(tmp_path):
    text = open(DOC).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    script = tmp_path / "my_project.py"
    script.write_text(blocks[0])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # ftlab as installed, not this checkout's path
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step \d loss ([0-9.]+)", p.stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0]  # the four sentences are being fitted
    assert "trainable 74,498 of 22,713,986 parameters" in p.stdout  # LoRA r=8 on q/v + the 2-class head
    assert re.search(r"δ on disk: [0-9,]+ bytes", p.stdout)
