"""RTE entailment, MiniLM full fine-tuning — all parameters trained.

RTE data is not shipped: pass --config.task.data_dir=DIR with DIR/rte/{train,dev}.tsv in GLUE format.
Paper/reference: Dagan et al. 2006; GLUE.
Command:  python scripts/train.py --config configs/rte_full.py --workdir runs/rte_full
Expected: dev accuracy around 0.6 for a model of this size (not run here: no RTE data on this machine).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "rte"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 3e-5
    return apply_variant(c, variant, {

    })
