"""STS-B similarity regression, MiniLM full fine-tuning — all parameters trained, MSE on the 0–5 score.

Regression head (one output); Pearson is the dev score, Spearman reported.
Paper/reference: Cer et al. 2017; GLUE.
Command:  python scripts/train.py --config configs/stsb_full.py --workdir runs/stsb_full
Expected: dev Pearson ≥ 0.85 (HF+PyTorch: 0.865).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {

    })
