"""SST-2 sentiment, MiniLM full fine-tuning — all 22.7M parameters trained (δ = θ₀ copy).

The baseline the parameter-efficient methods are compared with. The ':quick' variant is the README's default run (a 20,000-example subset, one epoch, the setting of ../shared/reference/hf-baselines.md).
Paper/reference: Devlin et al. 2019 (BERT fine-tuning recipe); Wang et al. 2020 (MiniLM).
Command:  python scripts/train.py --config configs/sst2_full.py --workdir runs/sst2_full
Expected: dev accuracy ≥ 0.88 (full train set, 1 epoch); ':quick' ≈ 0.86 (HF+PyTorch: 0.858).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.eval_every = 700
    c.train.bucket = True  # short sentences: length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {
        "quick": {"task.train_subset": 20000, "train.eval_every": 0},
    })
