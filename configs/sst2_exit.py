"""SST-2 sentiment, MiniLM with an exit after every layer — full fine-tuning of the backbone and the 6 exits.

Early exit (ftlab/exits.py): exit i is DeeBERT's off-ramp (mean pool -> dense -> tanh -> classifier) after layer
i, plus BERxiT's learned exit predictor. Variants pick the training routine: default 'weighted' (PABEE's
Σ i·L_i / Σ i), ':two_stage' (DeeBERT), ':alternating' (BERxiT); ':quick' and ':two_stage_quick' /
':alternating_quick' train on the 20,000-example 1-epoch subset of sst2_full:quick. Inference policies
(entropy, patience, learned, static) and their measured speed-up: scripts/early_exit.py on the run's workdir.
Paper/reference: Zhou et al. 2020 (PABEE); Xin et al. 2020 (DeeBERT); Xin et al. 2021 (BERxiT).
Command:  python scripts/train.py --config configs/sst2_exit.py:quick --workdir runs/sst2_exit
          python scripts/early_exit.py --workdir runs/sst2_exit --out docs/early_exit
Expected: last-exit accuracy ≈ sst2_full:quick (0.86); docs/early_exit.md for the policies' curves.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.exit.routine = "weighted"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.eval_every = 700
    c.train.bucket = True
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    quick = {"task.train_subset": 20000, "train.eval_every": 0}
    return apply_variant(c, variant, {
        "quick": quick,
        "two_stage": {"exit.routine": "two_stage"},
        "two_stage_quick": {**quick, "exit.routine": "two_stage"},
        "alternating": {"exit.routine": "alternating"},
        "alternating_quick": {**quick, "exit.routine": "alternating"},
    })
