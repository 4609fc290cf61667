"""Multi-task MiniLM on four GLUE tasks: SST-2, MRPC, STS-B and CoLA in one run, one head each on the shared
backbone, full fine-tuning, at most 4,000 training examples per task (MRPC has 3,668).

Each step holds 32 examples split in proportion to the tasks' sizes (8 rows each of sst2/mrpc/stsb/cola;
ftlab.train.multitask explains the fixed per-step composition), loss = the mean over the step's examples, two
epochs of the 15,668 examples (978 steps). The best eval by the mean of the four main metrics (SST-2 accuracy,
MRPC F1, STS-B Pearson, CoLA MCC) is compared with the single-task runs of configs/glue4_single.py, which
train the same examples with the same optimizer, epochs and batch size.
Variants: temperature (T=2 sampling, Raffel et al. 2020), equal (a quarter of each step per task), fixed
(every task's batches padded to one width: one compilation per task), runlocal (a few steps, no comparison).
Paper/reference: Liu et al. 2019, "Multi-Task Deep Neural Networks for Natural Language Understanding" (MT-DNN);
          Raffel et al. 2020 (T5), §3.5.2, examples-proportional and temperature-scaled mixing.
Command:  ftlab multitask --config configs/glue4_multitask.py --workdir runs/multitask/glue4-multi
          (after the four `ftlab train --config configs/glue4_single.py:<task>` runs it compares with)
Expected: each task within a few points of its single-task run; whether all four reach >= 97% of it is
          measured in docs/multitask.md.
"""

from ftlab.train.loop import apply_variant, default_config

TASKS = ("sst2", "mrpc", "stsb", "cola")
# As in configs/glue4_single.py (tests/test_multitask.py checks that the two agree).
SHARED = {
    "task.train_subset": 4000,
    "task.subset_seed": 42,
    "task.max_length": 128,
    "train.epochs": 2.0,
    "train.batch_size": 32,
    "train.bucket": True,
    "train.pad_to_multiple_of": 16,
    "train.eval_every": 0,          # at the end of every epoch (of Σ n_t / 32 steps)
    "train.checkpoint_every": 0,    # only at the end
    "train.keep_checkpoints": 1,
    "train.export_delta": "best",
    "optim.lr": 1e-4,
    "optim.warmup_ratio": 0.06,
    "delta.method": "full",
}


def get_config(variant=None):
    c = default_config()
    for dotted, value in SHARED.items():
        group, _, key = dotted.rpartition(".")
        c.get_path(group)[key] = value
    c.multitask.tasks = TASKS
    c.multitask.sampling = "proportional"
    c.multitask.width = "dynamic"  # each batch padded to its own longest row, as the single-task runs pad
    c.multitask.single_task = tuple(f"runs/multitask/{t}-single" for t in TASKS)
    return apply_variant(c, variant, {
        "temperature": {"multitask.sampling": "temperature", "multitask.temperature": 2.0},
        "equal": {"multitask.sampling": "equal"},
        "fixed": {"multitask.width": "fixed"},
        # the loop's runlocal, without the comparison (its single-task runs need not exist)
        "runlocal": {"task.train_subset": 256, "train.max_steps": 8, "train.eval_every": 8, "train.log_every": 4,
                     "train.checkpoint_every": 4, "train.batch_size": 16, "multitask.single_task": ()},
    })
