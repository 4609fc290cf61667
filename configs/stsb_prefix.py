"""STS-B similarity regression, MiniLM prefix tuning, 20 virtual key/value slots per layer.

Trainable: 2·L·P·D = 92,160 prefix parameters on MiniLM, plus the head; ':mlp' uses the MLP re-parameterisation.
lr 1e-2; epochs and batch size as stsb_full.
Paper/reference: Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation" (HF PEFT recipe: lr 1e-2, no projection).
Command:  python scripts/train.py --config configs/stsb_prefix.py --workdir runs/stsb_prefix
Expected: dev Pearson ≈ 0.848 (docs/results/stsb_prefix.json; 98.0% of stsb_full 0.865).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.delta.method = "prefix"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.num_virtual_tokens = 20
    c.delta.init_std = 1.0
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-2
    return apply_variant(
        c,
        variant,
        {
            "mlp": {"delta.projection": True, "optim.lr": 0.005},
        },
    )
