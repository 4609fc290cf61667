"""SST-2 sentiment, MiniLM last layer — only the top encoder layer and the classifier head trained.

The classic partial fine-tuning baseline between feature extraction (frozen) and full fine-tuning.
lr 1e-4: twice the full twin's, as only one layer adapts.
Paper/reference: Lee et al. 2019, "What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning".
Command:  python scripts/train.py --config configs/sst2_lastlayer.py --workdir runs/sst2_lastlayer
Expected: dev accuracy 0.838 (docs/results/sst2_lastlayer.json; 93% of sst2_full, 0.899), 1 epoch of the full train set.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "lastlayer"
    # The pooler is not in the top layer, so it stays frozen, and all-MiniLM-L6-v2 never trained it (it was
    # trained with mean pooling): pool by the mean, as the BitFit and SAID configs do. With the frozen tanh pooler
    # MRPC's last-layer run stayed at the frozen encoder's score (F1 0.818, accuracy 0.703).
    c.model.pooling = "mean"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.bucket = True  # as sst2_full
    c.train.pad_to_multiple_of = 16
    c.train.eval_every = 700
    c.optim.lr = 1e-4
    return apply_variant(
        c,
        variant,
        {
            "quick": {"task.train_subset": 20000, "train.eval_every": 0},
        },
    )
