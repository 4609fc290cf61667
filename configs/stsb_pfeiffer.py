"""STS-B similarity regression, MiniLM Pfeiffer adapters (bottleneck 24 = 384/16, relu) after the FFN only.

Trainable: L·(2·D·m + m + D) = 113,016 adapter parameters on MiniLM, plus the head.
lr 1e-3; epochs and batch size as stsb_full.
Paper/reference: Pfeiffer et al. 2020, "AdapterFusion" / "MAD-X" (AdapterHub Pfeiffer config; lr 1e-4..1e-3).
Command:  python scripts/train.py --config configs/stsb_pfeiffer.py --workdir runs/stsb_pfeiffer
Expected: dev Pearson ≈ 0.856 (docs/results/stsb_pfeiffer.json; stsb_full 0.865, HF+PyTorch full FT 0.865).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.delta.method = "pfeiffer"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.reduction_factor = 16
    c.delta.non_linearity = "relu"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 1e-3
    return apply_variant(
        c,
        variant,
        {},
    )
