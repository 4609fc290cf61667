"""SST-2 sentiment, MiniLM Houlsby adapters (bottleneck 24 = 384/16, swish) after attention and FFN.

Trainable: 2·L·(2·D·m + m + D) = 226,032 adapter parameters on MiniLM, plus the head.
lr 1e-3; epochs and batch size as sst2_full.
Paper/reference: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (lr 1e-4..1e-3; AdapterHub defaults).
Command:  python scripts/train.py --config configs/sst2_houlsby.py --workdir runs/sst2_houlsby
Expected: dev accuracy ≈ 0.880 (docs/results/sst2_houlsby.json; 97.8% of sst2_full 0.899); :quick 0.847
(docs/results/sst2_houlsby_quick.json; 98.0% of sst2_full:quick 0.865).
2 epochs (docs/results/sst2_houlsby_2ep.json): 0.885 at the last eval (98.5% of sst2_full):
  python scripts/train.py --config configs/sst2_houlsby.py --workdir runs/sst2_houlsby_2ep --config.train.epochs=2
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "houlsby"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.reduction_factor = 16
    c.delta.non_linearity = "swish"
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
