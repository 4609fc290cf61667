"""Few-shot fine-tuning on LM-BFF's K-shot splits, one config for every task: run it over tasks, K and seeds with
scripts/kshot_grid.py (mean (std) over seeds 13, 21, 42, 87, 100 on each task's original evaluation set).

Variants (model and method):
  minilm-standard   MiniLM-L6-H384 + a fresh classification head, full fine-tuning, lr 5e-5
  minilm-prompt     MiniLM + the MLM head ftlab trained on IMDB reviews (model minilm-mlm): prompt-based fine-tuning,
                    cloze scorer over pattern 0 of each task, no new head, lr 5e-5
  smollm2-standard  SmolLM2-135M + a fresh classification head (last token), full fine-tuning, lr 1e-5
  smollm2-prompt    SmolLM2 prompt-based fine-tuning (causal scorer, pattern 0), lr 1e-5
  smollm2-demos     smollm2-prompt + one demonstration per class chosen by MiniLM similarity (LM-BFF)
Shared: batch 8, no warmup, max length 128 (256 with demonstrations), δ selected on the K-shot dev split.
LM-BFF (§6) trains 1000 steps and evaluates every 100; here 300 steps, evaluated every 50: on this 2-core CPU a
MiniLM full fine-tuning step at batch 8 costs ~0.5 s (the Adam update of all 22.7M parameters is a fixed part of
it), so 1000 steps × 25 cells of one table would take hours. 300 steps are still 75 epochs of a K=16 binary
task's 32 examples (`--config.train.max_steps=1000 --config.train.eval_every=100` restores LM-BFF's). LM-BFF used
lr 1e-5 for RoBERTa-large; MiniLM, 20× smaller, gets its own full fine-tuning lr (5e-5), not tuned further.
Paper/reference: Gao, Fisch & Chen 2021, "Making Pre-trained Language Models Better Few-shot Learners".
Command:  python scripts/kshot_grid.py run --config configs/kshot.py:minilm-standard --tasks sst2,sst5,mr,trec,mrpc
              --k 16 --workdir runs/kshot/minilm-standard
Expected: measured results in docs/prompts.md ("K-shot grids"); LM-BFF (RoBERTa-large, K=16): SST-2 standard 81.4
(3.8), prompt-based 92.7 (0.9).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.model.name = "minilm"
    c.task.name = "sst2"
    c.task.kshot = "16-42"
    c.task.max_length = 128
    c.task.eval_split = "dev"  # the K-shot dev split (δ selection); the grid scores the exported δ on 'test'
    c.delta.method = "full"
    c.train.max_steps = 300
    c.train.batch_size = 8
    c.train.eval_batch_size = 32
    c.train.eval_every = 50
    c.train.log_every = 50
    c.train.checkpoint_every = 0
    c.train.progress = False
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    c.optim.warmup_steps = 0
    prompt = {"prompt.pattern": "0"}  # pattern 0 of whichever task the grid sets
    return apply_variant(c, variant, {
        "minilm-standard": {},
        "minilm-prompt": {"model.name": "minilm-mlm", "prompt.scorer": "cloze", **prompt},
        "smollm2-standard": {"model.name": "smollm2", "optim.lr": 1e-5, "train.eval_batch_size": 16},
        "smollm2-prompt": {"model.name": "smollm2", "optim.lr": 1e-5, "train.eval_batch_size": 16,
                           "prompt.scorer": "causal", **prompt},
        "smollm2-demos": {"model.name": "smollm2", "optim.lr": 1e-5, "train.eval_batch_size": 16,
                          "prompt.scorer": "causal", "prompt.demos": "similar", "task.max_length": 256, **prompt},
        # a few steps on CPU
        "runlocal": {"train.max_steps": 2, "train.batch_size": 4, "train.eval_every": 2, "train.log_every": 1},
    })
