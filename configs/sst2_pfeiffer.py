"""SST-2 sentiment, MiniLM Pfeiffer adapters (bottleneck 24 = 384/16, relu) after the FFN only.

Trainable: L·(2·D·m + m + D) = 113,016 adapter parameters on MiniLM, plus the head.
lr 1e-3; epochs and batch size as sst2_full.
Paper/reference: Pfeiffer et al. 2020, "AdapterFusion" / "MAD-X" (AdapterHub Pfeiffer config; lr 1e-4..1e-3).
Command:  python scripts/train.py --config configs/sst2_pfeiffer.py --workdir runs/sst2_pfeiffer
Expected: dev accuracy ≈ 0.880 (docs/results/sst2_pfeiffer.json; sst2_full 0.899). In the earlier, incorrect
Pfeiffer form (not the identity at init) 0.870, :quick 0.842.
2 epochs (docs/results/sst2_pfeiffer_2ep.json): best eval 0.883 at step 2800 of 4208 (98.2% of sst2_full), last
eval 0.880:
  python scripts/train.py --config configs/sst2_pfeiffer.py --workdir runs/sst2_pfeiffer_2ep --config.train.epochs=2
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "pfeiffer"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.reduction_factor = 16
    c.delta.non_linearity = "relu"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.bucket = True  # as sst2_full
    c.train.pad_to_multiple_of = 16
    c.train.eval_every = 700
    c.optim.lr = 1e-3
    return apply_variant(
        c,
        variant,
        {
            "quick": {"task.train_subset": 20000, "train.eval_every": 0},
        },
    )
