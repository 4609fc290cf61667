"""Every command in the README's and docs/' fenced shell blocks is run, in a shortened form.

Each command is taken from the page as written and then shortened, never replaced: a config gets its
`:runlocal` variant (a few steps on a small subset), the model becomes the tiny random BERT, and workdirs and
output files move to a temporary directory (and `--config.delta.k`, layers removed, becomes 1: the tiny model
has 2; a sweep's `--seeds N` becomes 2). Commands of one block run in order (train, then info / eval /
export / plot on that workdir). Two are run differently: `bash scripts/test.sh` is this suite itself (not run
from inside itself), and `bash scripts/quickstart.sh` runs as is with extra overrides capping it at 4 steps
(it passes them on to `train.py`). A command this test does not know how to shorten fails the test, so a new
command in the docs cannot go unrun.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.slow

PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                               if f.endswith(".md"))
SKIP = {"bash scripts/test.sh": "the test suite itself"}


def shell_blocks(page: str) -> list[list[str]]:
    """The command lines of each ```bash / ```sh / ```console block of `page` (comments and blank lines dropped,
    trailing comments removed)."""
    text = open(os.path.join(REPO, page)).read()
    blocks = []
    for body in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        lines = []
        for ln in body.splitlines():
            ln = re.sub(r"\s+#.*$", "", ln).strip()
            if ln and not ln.startswith("#"):
                lines.append(ln.removeprefix("$ "))
        if lines:
            blocks.append(lines)
    return blocks


def shorten(cmd: str, tmp: str, tiny: str) -> list[str]:
    """argv of the shortened command (see module doc)."""
    argv = shlex.split(cmd)
    out = []
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a == "--config" and i + 1 < len(argv) and argv[i + 1].startswith("configs/"):
            path = argv[i + 1].split(":")[0]
            out += ["--config", os.path.join(REPO, path) + ":runlocal"]
            next(it)
            continue
        if a.startswith("--config.delta.k="):  # layers removed: the tiny model has only 2
            a = "--config.delta.k=1"
        elif i and argv[i - 1] == "--seeds":  # a seed sweep: two seeds show the program works
            a = "2"
        elif re.match(r"^(runs/|/tmp/|hf_|curves\.png)", a) or (i and argv[i - 1] == "--out"):
            a = os.path.join(tmp, a.lstrip("/"))
        out.append(a)
    if out[0].startswith(".venv/bin/"):
        out[0] = os.path.join(REPO, out[0])
    if "train" in out or "sweep" in out or "multitask" in out or any(x.endswith(("scripts/train.py", "scripts/bench_sweep.py")) for x in out):
        out += [f"--config.model.name={tiny}", "--config.task.max_length=32", "--config.train.progress=false"]
    elif any(x.endswith("scripts/pet.py") for x in out):  # PET's pattern models on the tiny BERT: cloze scoring
        out += [f"--config.model.name={tiny}", "--config.prompt.scorer=cloze", "--config.task.max_length=32",
                "--config.train.progress=false"]
    return out


def test_every_documented_command_runs(tmp_path, tiny_bert_dir):
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("needs the GLUE copy in ../shared/data for the MRPC commands")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FTLAB_DATA": SHARED_DATA}
    ran, skipped = [], []
    for page in PAGES:
        for block in shell_blocks(page):
            for cmd in block:
                if cmd in SKIP:
                    skipped.append(cmd)
                    continue
                if cmd == "bash scripts/quickstart.sh":
                    argv = ["bash", os.path.join(REPO, "scripts", "quickstart.sh"), "--config.train.max_steps=4",
                            f"--config.model.name={tiny_bert_dir}", "--config.task.max_length=32",
                            "--config.train.progress=false", "--config.task.train_subset=128"]
                    run_env = {**env, "WORKDIR": str(tmp_path / "quickstart")}
                elif cmd.startswith((".venv/bin/python scripts/", ".venv/bin/ftlab ", "python scripts/")):
                    argv = shorten(cmd.replace("python scripts/", f"python {REPO}/scripts/"), str(tmp_path),
                                   tiny_bert_dir)
                    if argv[0] == "python":
                        argv[0] = sys.executable
                    run_env = env
                else:
                    raise AssertionError(f"{page}: no rule to shorten {cmd!r}; add one to this test")
                p = subprocess.run(argv, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=900)
                assert p.returncode == 0, f"{page}: {cmd}\n-> {argv}\n{p.stderr[-3000:]}"
                ran.append(cmd)
    assert any("quickstart" in c for c in ran) and any("ftlab plot" in c for c in ran)
    assert (tmp_path / "quickstart" / "results.json").is_file()
    assert (tmp_path / "hf_mrpc" / "config.json").is_file() and (tmp_path / "curves.png").is_file()
    print(f"ran {len(ran)} commands; not run: {skipped}")
