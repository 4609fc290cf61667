"""STILTs (Phang et al. 2018): intermediate-task training, then the target task, on MiniLM — the target stage.

Variant = the target task (sst2 | mrpc | stsb | cola): full fine-tuning on 1,000 training examples of it
(task.train_subset, subset_seed 42; the low-resource regime where Phang et al. saw the largest gains), 2 epochs,
batch 16, lr 1e-4, evaluated once at the end on the full dev set. The intermediate model is a finished run of another task
(configs/glue4_single.py: 4,000 examples, 2 epochs), merged into a Hugging Face folder and given as model.name;
its classifier is dropped and a fresh one trained (model.head=new; keep it with model.head=keep when the
label spaces agree). scripts/transfer.py runs the whole grid (plus the direct baselines) and the table.
Command:  FTLAB_DATA=../shared/data python scripts/transfer.py --intermediate sst2=runs/multitask/sst2-single \
            mrpc=runs/multitask/mrpc-single stsb=runs/multitask/stsb-single cola=runs/multitask/cola-single \
            --workdir runs/transfer --out docs/adaptive/transfer.json
Expected: gains and losses of a few points; one seed per cell (see docs/adaptive.md for the noise level).
"""

from ftlab.train.loop import apply_variant, default_config

TASKS = ("sst2", "mrpc", "stsb", "cola")


def get_config(variant=None):
    c = default_config()
    c.task.train_subset = 1000
    c.task.max_length = 128
    c.model.head = "new"
    c.delta.method = "full"
    c.train.epochs = 2.0
    c.train.eval_every = 10_000  # only at the end
    c.train.batch_size = 16
    c.train.bucket = True
    c.train.pad_to_multiple_of = 64  # two batch widths (64, 128): few compilations, which dominate on CPU
    c.train.checkpoint_every = 0
    c.train.keep_checkpoints = 1
    c.train.export_delta = "none"
    c.optim.lr = 1e-4
    c.optim.warmup_ratio = 0.06
    return apply_variant(c, variant, {t: {"task.name": t} for t in TASKS})
