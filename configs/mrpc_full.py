"""MRPC paraphrase, MiniLM full fine-tuning — all parameters trained.

Sentence-pair classification; GLUE reports F1 and accuracy (F1 is the dev score).
Paper/reference: Dolan & Brockett 2005; GLUE (Wang et al. 2019).
Command:  python scripts/train.py --config configs/mrpc_full.py --workdir runs/mrpc_full
Expected: dev F1 ≥ 0.85 (HF+PyTorch: 0.862).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mrpc"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {

    })
