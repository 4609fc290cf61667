"""MRPC paraphrase, MiniLM Houlsby adapters (bottleneck 24 = 384/16, swish) after attention and FFN.

Trainable: 2·L·(2·D·m + m + D) = 226,032 adapter parameters on MiniLM, plus the head.
lr 1e-3; epochs and batch size as mrpc_full.
Paper/reference: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (lr 1e-4..1e-3; AdapterHub defaults).
Command:  python scripts/train.py --config configs/mrpc_houlsby.py --workdir runs/mrpc_houlsby
Expected: dev F1 within ~1-2 points of mrpc_full (HF+PyTorch full FT: 0.862); not yet measured with ftlab on MiniLM.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mrpc"
    c.delta.method = "houlsby"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.reduction_factor = 16
    c.delta.non_linearity = "swish"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 1e-3
    return apply_variant(
        c,
        variant,
        {},
    )
