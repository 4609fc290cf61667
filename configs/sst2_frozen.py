"""SST-2 sentiment, MiniLM feature extraction — frozen encoder, trained classifier head (BERT pooler output).

The feature-extraction twin of sst2_full.
Paper/reference: Devlin et al. 2019 (feature-based approach, Sec. 5.3).
Command:  python scripts/train.py --config configs/sst2_frozen.py --workdir runs/sst2_frozen
Expected: dev accuracy well below full fine-tuning (see docs/results.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "frozen"
    # all-MiniLM-L6-v2 was trained with mean pooling (its 1_Pooling config); its BERT pooler never was.
    c.model.pooling = "mean"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.eval_every = 700
    c.train.bucket = True  # short sentences: length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-3
    return apply_variant(c, variant, {
        "quick": {"task.train_subset": 20000, "train.eval_every": 0},
    })
