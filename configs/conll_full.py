"""CoNLL-2003 NER, MiniLM full fine-tuning — all parameters trained; token-classification head, the first sub-token of each word labelled.

Entity-level span F1 (conlleval semantics) on the validation set.
Paper/reference: Tjong Kim Sang & De Meulder 2003; Devlin et al. 2019 Sec. 5.3.
Command:  python scripts/train.py --config configs/conll_full.py --workdir runs/conll_full
Expected: dev entity F1 ≥ 0.80 (HF+PyTorch: 0.896).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "conll2003"
    c.train.epochs = 2
    c.train.batch_size = 32
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {

    })
