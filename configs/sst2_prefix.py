"""SST-2 sentiment, MiniLM prefix tuning, 20 virtual key/value slots per layer.

Trainable: 2·L·P·D = 92,160 prefix parameters on MiniLM, plus the head; ':mlp' uses the MLP re-parameterisation.
lr 1e-2; epochs and batch size as sst2_full.
Paper/reference: Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation" (HF PEFT recipe: lr 1e-2, no projection).
Command:  python scripts/train.py --config configs/sst2_prefix.py --workdir runs/sst2_prefix
Expected: :quick dev accuracy ≈ 0.843 (docs/results/sst2_prefix_quick.json; sst2_full:quick 0.865, HF+PyTorch full FT :quick 0.858);
the full training set not yet measured.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "prefix"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.num_virtual_tokens = 20
    c.delta.init_std = 1.0
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.bucket = True  # as sst2_full
    c.train.pad_to_multiple_of = 16
    c.train.eval_every = 700
    c.optim.lr = 1e-2
    return apply_variant(
        c,
        variant,
        {
            "quick": {"task.train_subset": 20000, "train.eval_every": 0},
            "mlp": {"delta.projection": True, "optim.lr": 0.005},
        },
    )
