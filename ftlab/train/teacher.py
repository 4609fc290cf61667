"""Soft labels from a fine-tuned teacher: knowledge distillation into a pruned, smaller or otherwise constrained
student.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"); used with pruning by Sanh, Wolf & Rush 2020
("Movement Pruning", teacher = the fine-tuned dense model). The teacher is a finished classification run (its
exported δ on its own base); `soft_labels` runs it over a labelled split in file order and returns
softmax(z / T) per example. Written with `ftlab.data.pseudo_labels.write`, the file is the student's train split
(`task.soft_labels`, with the same `task.distill_temperature` T): the student's loss is then
KL(softmax(z_teacher / T) || softmax(z_student / T)) · T², `prompting.distillation_loss`. Because the file keeps the
split's order and length, the student's `task.train_subset` draws the same examples from it as from the task's
own file. Unlike Sanh et al. (0.9 · distillation + 0.1 · cross-entropy), the gold labels are not mixed in.

    python scripts/teacher_labels.py --teacher runs/sst2_full_quick --out runs/sst2_teacher_t2.jsonl
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from ftlab import config as config_lib


def soft_labels(workdir: str, split: str = "train", temperature: float = 2.0, delta_dir: str = "delta",
                batch_size: int = 0, progress: bool = True) -> tuple[list[dict], np.ndarray, dict[str, float]]:
    """(examples, soft [N, C] float64, agreement): the teacher run `workdir`'s softmax(logits / temperature) on
    every example of the task's `split` file, in file order; `agreement` holds the teacher's accuracy on those
    gold labels (a check that the right teacher labels the right data). `batch_size` 0: the run's
    eval_batch_size. ConfigError for a teacher that is not a single-task classifier on the plain head."""
    from ftlab.cli import _load_run
    from ftlab.data.batching import batches
    from ftlab.tasks import resolve_data_dir
    from ftlab.train import loop
    from ftlab.train.step import model_inputs

    if not (temperature > 0 and np.isfinite(temperature)):
        raise config_lib.ConfigError(f"temperature={temperature}: must be a positive number")
    cfg, prep, delta_mod, delta = _load_run(workdir, delta_dir)
    task, base = prep["task"], prep["base"]
    if task.kind != "classification":
        raise config_lib.ConfigError(f"{workdir}: task {task.name!r} is {task.kind}; soft labels are class "
                                     "distributions (classification teachers only)")
    if loop._prompt(cfg, task, base.config) is not None:
        raise config_lib.ConfigError(f"{workdir}: a prompt-based run; its label-word scores are PET's ensemble "
                                     "labels (scripts/pet.py), not a classifier head's logits")
    data_dir = resolve_data_dir(task.name, cfg.task.data_dir or None)
    examples = task.read(split, data_dir)
    _, enc = loop.encode_examples(cfg, task, base.tokenizer, examples, split, base.config)
    model, variables = prep["model"], delta_mod.apply(prep["params"], delta)

    @jax.jit
    def logits_of(variables, batch):
        z = model.apply(variables, batch["input_ids"], deterministic=True, **model_inputs(batch))
        if isinstance(z, dict):  # an early-exit model: the last exit is the full model
            z = z["logits"][:, -1]
        return z.astype(np.float32)

    pad = base.tokenizer.pad_token_id or 0
    bs = batch_size or cfg.train.eval_batch_size
    rows = []
    it = batches(enc, bs, shuffle=False, seed=0, epoch=0, pad_id=pad, pad_to_multiple_of=cfg.train.pad_to_multiple_of,
                 drop_remainder=False, pad_final=True)
    with loop._progress(-(-len(examples) // bs), 0, progress) as bar:
        for b in it:
            rows.append(np.asarray(logits_of(variables, b), np.float64)[b["example_mask"] > 0])
            bar.update(1)
    z = np.concatenate(rows) / temperature
    if len(z) != len(examples):
        raise AssertionError(f"{len(z)} teacher outputs for {len(examples)} examples")
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lab = [(i, e["label"]) for i, e in enumerate(examples) if e.get("label") is not None and e["label"] >= 0]
    hits = [int(np.argmax(p[i])) == y for i, y in lab]
    agreement = {"examples": len(examples), "teacher_accuracy": float(np.mean(hits)) if hits else float("nan")}
    return examples, p, agreement


def write(workdir: str, out: str, split: str = "train", temperature: float = 2.0, delta_dir: str = "delta",
          batch_size: int = 0, progress: bool = True) -> dict[str, Any]:
    """`soft_labels` written to `out` (JSONL of `ftlab.data.pseudo_labels`, atomic); returns a summary."""
    from ftlab.data import pseudo_labels
    from ftlab.tasks import get_task

    examples, p, agreement = soft_labels(workdir, split, temperature, delta_dir, batch_size, progress)
    with open(os.path.join(workdir, "config.json")) as f:
        task = get_task(json.load(f)["task"]["name"])
    pseudo_labels.write(out, examples, task.label_names, soft=p)
    return {"teacher": workdir, "split": split, "temperature": temperature, "out": out,
            "mean_max_prob": float(p.max(-1).mean()), **agreement}
