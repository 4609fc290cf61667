"""CoNLL-2003 NER, MiniLM feature extraction — frozen encoder, trained token-classification head.

The feature-extraction twin of conll_full.
Paper/reference: Devlin et al. 2019 Sec. 5.3 (feature-based NER).
Command:  python scripts/train.py --config configs/conll_frozen.py --workdir runs/conll_frozen
Expected: dev entity F1 below full fine-tuning (see docs/results.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "conll2003"
    c.delta.method = "frozen"
    c.train.epochs = 2  # as conll_full
    c.train.batch_size = 32
    c.optim.lr = 3e-3
    return apply_variant(c, variant, {

    })
