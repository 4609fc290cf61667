"""Single-task baselines of the four-task GLUE multi-task comparison: MiniLM full fine-tuning on one of SST-2,
MRPC, STS-B, CoLA, at most 4,000 training examples per task (MRPC has 3,668).

Variant = the task (sst2 | mrpc | stsb | cola). Each run trains the same examples (task.train_subset=4000,
subset_seed 42) with the same optimizer, epochs and batch size as configs/glue4_multitask.py trains them in
one run; docs/multitask.md compares the two. The runs export their δ (the best dev eval), so they also serve
as the intermediate models of a STILTs transfer table.
Paper/reference: Liu et al. 2019 (MT-DNN) compare multi-task with single-task fine-tuning this way; Phang et
          al. 2018 (STILTs) for the intermediate-task use.
Command:  ftlab train --config configs/glue4_single.py:cola --workdir runs/multitask/cola-single
          (and :sst2, :mrpc, :stsb)
Expected: dev sst2 accuracy ≈ 0.86, mrpc F1 ≈ 0.85, stsb Pearson ≈ 0.85, cola MCC ≈ 0.2-0.3 (4,000 examples,
          2 epochs); measured values in docs/multitask.md.
"""

from ftlab.train.loop import apply_variant, default_config

TASKS = ("sst2", "mrpc", "stsb", "cola")
# Shared with configs/glue4_multitask.py (tests/test_multitask.py checks that the two agree).
SHARED = {
    "task.train_subset": 4000,
    "task.subset_seed": 42,
    "task.max_length": 128,
    "train.epochs": 2.0,
    "train.batch_size": 32,
    "train.bucket": True,
    "train.pad_to_multiple_of": 16,
    "train.eval_every": 0,          # at the end of every epoch
    "train.checkpoint_every": 0,    # only at the end
    "train.keep_checkpoints": 1,
    "train.export_delta": "best",
    "optim.lr": 1e-4,               # CoLA's MCC stays low at 5e-5 with 250 steps of MiniLM
    "optim.warmup_ratio": 0.06,
    "delta.method": "full",
}


def get_config(variant=None):
    c = default_config()
    for dotted, value in SHARED.items():
        group, _, key = dotted.rpartition(".")
        c.get_path(group)[key] = value
    variants = {t: {"task.name": t} for t in TASKS}
    return apply_variant(c, variant, variants)
