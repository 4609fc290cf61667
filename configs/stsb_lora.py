"""STS-B similarity regression, MiniLM LoRA r=8, α=16 on query/value (+ the classifier head).

Trainable: 2·L·r·(D+D) = 73,728 LoRA parameters on MiniLM-L6-H384, plus the head.
lr 5e-4; epochs and batch size as stsb_full.
Paper/reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (GLUE recipe: r=8, α=16, q/v, lr 4e-4..5e-4).
Command:  python scripts/train.py --config configs/stsb_lora.py --workdir runs/stsb_lora
Expected: dev Pearson ≈ 0.850 (docs/results/stsb_lora.json; stsb_full 0.865, HF+PyTorch full FT: 0.865).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.delta.method = "lora"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.r = 8
    c.delta.alpha = 16.0
    c.delta.dropout = 0.1
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 5e-4
    return apply_variant(
        c,
        variant,
        {},
    )
