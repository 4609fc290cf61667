"""Every command in the README's and docs/' shell blocks and inline code is run, in a shortened form.

Each command is taken from the page as written and then shortened, never replaced: a config gets its
`:runlocal` variant (a few steps on a small subset), the model becomes the tiny random BERT, and workdirs and
output files move to a temporary directory (and `--config.delta.k`, layers removed, becomes 1: the tiny model
has 2; a sweep's `--seeds N` becomes 2; a K-shot grid keeps its first task, K and seed and scores 16 test
examples). Commands of one block run in order (train, then info / eval /
export / plot on that workdir). Two are run differently: `bash scripts/test.sh` is this suite itself (not run
from inside itself), and `bash scripts/quickstart.sh` runs as is with extra overrides capping it at 4 steps
(it passes them on to `train.py`). A command this test does not know how to shorten fails the test, so a new
command in the docs cannot go unrun.

Inline code in the prose counts too: a span that starts like a command (`.venv/bin/...`, `python scripts/...`,
`bash scripts/...`, also in 4-space indented blocks) is run after the shell blocks with the same shortening,
except templates, which show a command's form with placeholders (`<task>`, `OUT`, `a|b` alternatives) and can
only be checked for naming a script that exists, and the GPU benchmark (`scripts/gpu_bench.sh`, which needs
nvidia-smi and a CUDA jax). Generators that write a committed page by default (`scripts/report.py`,
`scripts/methods_doc.py`) write to the temporary directory instead, and their output must equal the committed
page: a stale generated page fails this test. `ftlab bench` runs its first model's LoRA row for one step at
batch 2, both frameworks.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                               if f.endswith(".md"))
SKIP = {"bash scripts/test.sh": "the test suite itself", "bash scripts/test.sh -m slow": "the test suite itself"}
COMMAND_START = (".venv/bin/", "python scripts/", "bash scripts/")
# A template: placeholders in angle brackets, `a|b` alternatives, or an all-capitals argument (OUT, DIR, W).
TEMPLATE = re.compile(r"<[^>]*>|\S\|\S|(?:^|\s)[A-Z][A-Z0-9_]*(?=\s|$)")
GPU_ONLY = ("bash scripts/gpu_bench.sh",)
GENERATED = {"scripts/report.py": "docs/results.md", "scripts/methods_doc.py": "docs/methods.md"}


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


def is_template(cmd: str) -> bool:
    """A command's form with placeholders (quoted arguments, e.g. a verbalizer "0=bad|1=good", do not count)."""
    return bool(TEMPLATE.search(re.sub(r"\"[^\"]*\"|'[^']*'", "''", cmd)))


def inline_commands(page: str) -> list[str]:
    """Commands written in `page`'s prose: inline code spans (one may wrap onto the next line) and 4-space
    indented lines that start like a command; fenced blocks are left to `shell_blocks`."""
    full = open(os.path.join(REPO, page)).read()
    other_blocks = [b for lang, b in re.findall(r"```(\w*)\n(.*?)```", full, re.S)
                    if lang not in ("bash", "sh", "shell", "console")]
    text = re.sub(r"```.*?```", "", full, flags=re.S)
    spans = [" ".join(m.split()) for m in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", text)]
    lines = [ln for ln in text.splitlines() if ln.startswith("    ")]
    for b in other_blocks:  # a command shown in a text block is still a command
        lines += b.replace("\\\n", " ").splitlines()
    spans += [re.sub(r"\s+#.*$", "", ln).strip() for ln in lines]
    out = []
    for sp in spans:
        if sp.startswith(COMMAND_START) and sp not in out:
            out.append(sp)
    return out


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
        elif i and argv[i - 1] == "--seeds" and "kshot_grid.py" not in cmd:  # a seed sweep: two seeds show it works
            a = "2"
        elif i and argv[i - 1] == "--limit":  # few-shot evaluation of the real model: a handful of examples
            a = "8"
        elif i and argv[i - 1] in ("--tasks", "--k", "--seeds") and "kshot_grid.py" in cmd:  # one cell per grid
            a = a.split(",")[0]
        elif i and argv[i - 1] in ("--grid", "--extra") and re.match(r"^[^=]+=runs/", a):  # NAME=a previous run
            name, value = a.split("=", 1)
            a = f"{name}={os.path.join(tmp, value)}"
        elif re.match(r"^--config\.[\w.]+=runs/", a):  # an override naming a file a previous command wrote
            key, value = a.split("=", 1)
            a = f"{key}={os.path.join(tmp, value)}"
        elif re.match(r"^(runs/|/tmp/|hf_|curves\.png)", a) or (i and argv[i - 1] == "--out"):
            a = os.path.join(tmp, a.lstrip("/"))
        out.append(a)
    if out[0].startswith(".venv/bin/"):
        out[0] = os.path.join(REPO, out[0])
    if len(out) > 1 and out[1] == "bench":  # first model, its LoRA row, one step at batch 2
        i = out.index("--models") if "--models" in out else None
        model = out[i + 1].split(",")[0] if i is not None else "minilm"
        out = [x for j, x in enumerate(out) if i is None or j not in (i, i + 1)]
        out += ["--models", model, "--methods", "lora", "--steps", "1", "--warmup", "0", "--batch", f"{model}=2"]
    for script, page in GENERATED.items():
        if any(x.endswith(script) for x in out) and "--out" not in out:
            out += ["--out", os.path.join(tmp, os.path.basename(page))]
    if any(x.endswith("scripts/kshot_grid.py") for x in out) and "run" in out:  # the tiny BERT, 16 test examples
        out += [f"--config.model.name={tiny}", "--config.task.max_length=32", "--test-subset", "16"]
    elif "train" in out or "sweep" in out or "multitask" in out or any(x.endswith(("scripts/train.py", "scripts/bench_sweep.py")) for x in out):
        out += [f"--config.model.name={tiny}", "--config.task.max_length=32", "--config.train.progress=false"]
    elif any(x.endswith("scripts/pet.py") for x in out):  # PET's pattern models on the tiny BERT: cloze scoring
        out += [f"--config.model.name={tiny}", "--config.prompt.scorer=cloze", "--config.task.max_length=32",
                "--config.train.progress=false"]
    return out


def _run_one(cmd: str, tmp_path, tiny_bert_dir, env: dict) -> None:
    argv = shorten(cmd.replace("python scripts/", f"python {REPO}/scripts/"), str(tmp_path), tiny_bert_dir)
    if argv[0] == "python":
        argv[0] = sys.executable
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert p.returncode == 0, f"{cmd}\n-> {argv}\n{p.stderr[-3000:]}"
    for script, page in GENERATED.items():
        if any(x.endswith(script) for x in argv) and argv[argv.index("--out") + 1].startswith(str(tmp_path)):
            made = open(argv[argv.index("--out") + 1]).read()
            assert made == open(os.path.join(REPO, page)).read(), f"{page} is stale: rerun {cmd}"


def test_inline_command_detection():
    """The prose rules on made-up text: what counts as a command, what as a template."""
    assert is_template("bash scripts/gpu_bench.sh mfu|minilm|smollm2 OUT")
    assert is_template("bash scripts/run_experiments.sh <config names>")
    assert is_template(".venv/bin/ftlab eval --workdir W --split test")
    assert not is_template(".venv/bin/ftlab bench --models minilm,smollm2 --out docs/bench")
    assert not is_template("python scripts/stability.py runs/stability/cola-vanilla --out docs/stability")
    assert not is_template("python scripts/bench.py --config.train.lr=3e-5 --model HF_DIR/x")
    assert is_template(".venv/bin/python scripts/fewshot.py --mode zero_shot --task sst2 --model T5_FOLDER")
    assert not is_template('python scripts/fewshot.py --mode generate --verbalizer "0=bad|1=good" --limit 8')


@pytest.mark.slow
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
    templates, gpu = [], []
    for page in PAGES:  # prose commands, after every shell block (they may use the runs those made)
        for cmd in inline_commands(page):
            script = next((w for w in cmd.split() if w.startswith("scripts/")), None)
            if script:
                assert os.path.isfile(os.path.join(REPO, script)), f"{page}: {cmd!r} names a missing {script}"
            if cmd.startswith(GPU_ONLY):
                gpu.append(cmd)
            elif is_template(cmd):
                templates.append(cmd)
            elif cmd in ran or cmd in SKIP:
                continue
            else:
                _run_one(cmd, tmp_path, tiny_bert_dir, env)
                ran.append(cmd)
    assert any("quickstart" in c for c in ran) and any("ftlab plot" in c for c in ran)
    assert any("ftlab bench" in c for c in ran) and any("methods_doc" in c for c in ran)
    assert (tmp_path / "quickstart" / "results.json").is_file()
    assert (tmp_path / "hf_mrpc" / "config.json").is_file() and (tmp_path / "curves.png").is_file()
    print(f"ran {len(ran)} commands; not run: {skipped}; templates checked for their script: {templates}; "
          f"GPU only: {gpu}")
