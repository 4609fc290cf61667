"""CoLA acceptability, MiniLM feature extraction — frozen encoder, trained head.

The feature-extraction twin of cola_full.
Paper/reference: Devlin et al. 2019.
Command:  python scripts/train.py --config configs/cola_frozen.py --workdir runs/cola_frozen
Expected: dev MCC far below full fine-tuning (see docs/results.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.delta.method = "frozen"
    # all-MiniLM-L6-v2 was trained with mean pooling (its 1_Pooling config); its BERT pooler never was.
    c.model.pooling = "mean"
    c.train.epochs = 3
    c.train.batch_size = 32
    c.train.bucket = True  # short sentences: length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-3
    return apply_variant(c, variant, {

    })
