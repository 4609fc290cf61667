"""STS-B similarity regression, MiniLM BitFit — only the biases and the classifier head trained (≈0.1% of the parameters).

Bias terms of every backbone layer (query/key/value, attention output, FFN, LayerNorm) plus the head;
`--config.delta.variant=qm` trains only the query and first-FFN biases (the paper's b_q, b_m2 subset).
lr 1e-3 (Ben Zaken et al. search 1e-4..1e-3 and report the upper end for BERT-base).
Paper/reference: Ben Zaken, Ravfogel & Goldberg 2022, "BitFit: Simple Parameter-efficient Fine-tuning".
Command:  python scripts/train.py --config configs/stsb_bitfit.py --workdir runs/stsb_bitfit
Expected: dev Pearson ≈ 0.850 (docs/results/stsb_bitfit.json; 98.2% of stsb_full 0.865).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.delta.method = "bitfit"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.variant = "all"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-3
    return apply_variant(c, variant, {})
