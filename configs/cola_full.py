"""CoLA acceptability, MiniLM full fine-tuning — all parameters trained.

Single-sentence classification scored by Matthews correlation.
Paper/reference: Warstadt et al. 2019; GLUE.
Command:  python scripts/train.py --config configs/cola_full.py --workdir runs/cola_full
Expected: dev MCC ≥ 0.25 (HF+PyTorch: 0.314).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.train.epochs = 3
    c.train.batch_size = 32
    c.train.bucket = True  # short sentences: length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {

    })
