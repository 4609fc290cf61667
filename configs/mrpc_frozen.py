"""MRPC paraphrase, MiniLM feature extraction — frozen encoder, trained head.

The feature-extraction twin of mrpc_full.
Paper/reference: Devlin et al. 2019.
Command:  python scripts/train.py --config configs/mrpc_frozen.py --workdir runs/mrpc_frozen
Expected: dev F1 below full fine-tuning (see docs/results.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mrpc"
    c.delta.method = "frozen"
    # all-MiniLM-L6-v2 was trained with mean pooling (its 1_Pooling config); its BERT pooler never was.
    c.model.pooling = "mean"
    c.train.epochs = 5  # as the full twin
    c.train.batch_size = 16
    c.optim.lr = 3e-3  # a linear head on frozen features tolerates (and needs) a large lr
    return apply_variant(c, variant, {

    })
