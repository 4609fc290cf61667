"""RTE entailment, MiniLM feature extraction — frozen encoder, trained head.

RTE data is not shipped: pass --config.task.data_dir=DIR with DIR/rte/{train,dev}.tsv in GLUE format.
Paper/reference: Devlin et al. 2019.
Command:  python scripts/train.py --config configs/rte_frozen.py --workdir runs/rte_frozen
Expected: dev accuracy near chance for a frozen small encoder (not run here: no RTE data on this machine).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "rte"
    c.delta.method = "frozen"
    # all-MiniLM-L6-v2 was trained with mean pooling (its 1_Pooling config); its BERT pooler never was.
    c.model.pooling = "mean"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 1e-3
    return apply_variant(c, variant, {

    })
