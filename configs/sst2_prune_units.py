"""SST-2 sentiment, MiniLM with whole attention heads and FFN units pruned during fine-tuning (structured).

Full fine-tuning with half of each layer's 12 heads and half of its 1,536 FFN units removed on the cubic
schedule of configs/sst2_prune.py (kept fraction from 1 to `keep_*` between 10% and 80% of the steps). The
result is a smaller dense model: the stored δ holds the kept units' weights, sliced (docs/pruning.md).
Movement scores (one per head / FFN unit) at lr ×200 without weight decay; magnitude = Σ|W| over the unit.
Trained on the 20,000-example subset for one epoch, as sst2_full's ':quick'.
Paper/reference: Michel, Levy & Neubig 2019 (head pruning); Sanh, Wolf & Rush 2020 (movement scores);
          schedule: Zhu & Gupta 2017.
Command:  python scripts/train.py --config configs/sst2_prune_units.py:movement50 --workdir runs/sst2_units_movement50
          (variants magnitude50, movement50)
Expected: dev accuracy below sst2_full:quick (0.86); not yet measured.
"""

from ftlab.train.loop import apply_variant, default_config

SCORES_LR = ((r"prune_units/scores/.*", 200.0), (r".*", 1.0))
NO_SCORES = ((r".*", 1.0),)


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.task.train_subset = 20000
    c.delta.method = "prune_units"
    c.delta.units = "heads,ffn"
    c.delta.criterion = "movement"
    c.delta.keep_heads = 0.5
    c.delta.keep_ffn = 0.5
    c.delta.budget = "per_layer"
    c.delta.num_heads = 0  # the model's
    c.delta.warmup_fraction = 0.1
    c.delta.cooldown_fraction = 0.2
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.eval_every = 0
    c.train.bucket = True
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    c.optim.groups = SCORES_LR
    c.optim.no_decay = c.optim.no_decay + r"|prune_units/scores/.*"
    return apply_variant(c, variant, {
        "movement50": {},
        "magnitude50": {"delta.criterion": "magnitude", "optim.groups": NO_SCORES},
    })
